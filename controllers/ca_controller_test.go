package controllers_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/controllers"
	"github.com/capstan-mesh/capstan/internal/ca"
)

// The CA controller's integration tests. Real: the apiserver, etcd, the Secrets and the
// cert-manager Certificate CRD (from cert-manager's own module). Simulated, because envtest
// runs neither: istiod publishing its trust bundle (publishBundle copies cacerts'
// root-cert.pem into istio-ca-root-cert ConfigMaps, as istiod does once it loaded it), the
// Deployment controller (markAvailable), and cert-manager issuing a Certificate. The CA
// controller's clock is a fake one, moved to pass TTLs and soaks.

func caSpec(m *meshv1.MeshControlPlane) *meshv1.CASpec {
	if m.Spec.Security == nil {
		m.Spec.Security = &meshv1.SecuritySpec{}
	}
	if m.Spec.Security.CA == nil {
		m.Spec.Security.CA = &meshv1.CASpec{}
	}
	return m.Spec.Security.CA
}

func secret(ns, name string) func(Gomega) *corev1.Secret {
	return func(g Gomega) *corev1.Secret {
		s := &corev1.Secret{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, s)).To(Succeed())
		return s
	}
}

func caStatus(g Gomega) *meshv1.CAStatus {
	m := &meshv1.MeshControlPlane{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, m)).To(Succeed())
	g.Expect(m.Status.CA).NotTo(BeNil(), "status.ca is not set")
	return m.Status.CA
}

func cacertsRoots(g Gomega, ns string) []string {
	s := secret(ns, controllers.CACertsSecret)(g)
	roots, err := ca.ParseBundle(s.Data["root-cert.pem"])
	g.Expect(err).NotTo(HaveOccurred())
	return ca.Fingerprints(roots)
}

// publishBundle does what istiod does once it has loaded cacerts: it writes the trust
// bundle to istio-ca-root-cert in every namespace (here: the given ones).
func publishBundle(from string, namespaces ...string) {
	GinkgoHelper()
	s := secret(from, controllers.CACertsSecret)(Default)
	for _, ns := range namespaces {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: controllers.RootCertConfigMap}}
		err := k8sClient.Get(ctx, client.ObjectKeyFromObject(cm), cm)
		cm.Data = map[string]string{"root-cert.pem": string(s.Data["root-cert.pem"])}
		if apierrors.IsNotFound(err) {
			Expect(k8sClient.Create(ctx, cm)).To(Succeed())
		} else {
			Expect(err).NotTo(HaveOccurred())
			Expect(k8sClient.Update(ctx, cm)).To(Succeed())
		}
	}
}

// authority makes a root and an intermediate at the CA controller's clock.
func authority(rootTTL, interTTL time.Duration) (*ca.KeyPair, *ca.KeyPair) {
	GinkgoHelper()
	root, err := ca.NewRoot(ca.RootOptions{Now: caClock.Now(), TTL: rootTTL})
	Expect(err).NotTo(HaveOccurred())
	inter, err := ca.NewIntermediate(root, ca.IntermediateOptions{Now: caClock.Now(), TTL: interTTL})
	Expect(err).NotTo(HaveOccurred())
	return root, inter
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func pemKey(k crypto.Signer) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	Expect(err).NotTo(HaveOccurred())
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// istioData is CA material in cacerts' layout.
func istioData(root, inter *ca.KeyPair) map[string][]byte {
	return map[string][]byte{
		"ca-cert.pem":    pemCert(inter.Cert),
		"ca-key.pem":     pemKey(inter.Key),
		"cert-chain.pem": append(pemCert(inter.Cert), pemCert(root.Cert)...),
		"root-cert.pem":  pemCert(root.Cert),
	}
}

// leafOf makes a certificate that is not a CA, signed by parent.
func leafOf(parent *ca.KeyPair) (*x509.Certificate, crypto.Signer) {
	GinkgoHelper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	Expect(err).NotTo(HaveOccurred())
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "not a CA"},
		NotBefore: caClock.Now().Add(-time.Hour), NotAfter: caClock.Now().Add(1000 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent.Cert, key.Public(), parent.Key)
	Expect(err).NotTo(HaveOccurred())
	c, err := x509.ParseCertificate(der)
	Expect(err).NotTo(HaveOccurred())
	return c, key
}

// expectNoKeysIn fails when status or the MeshControlPlane's events carry key material.
func expectNoKeysIn() {
	GinkgoHelper()
	m := getMCP()
	b, err := json.Marshal(m.Status)
	Expect(err).NotTo(HaveOccurred())
	Expect(string(b)).NotTo(ContainSubstring("PRIVATE KEY"))
	for _, reason := range []string{ca.EventIssued, ca.EventRotationStarted, ca.EventRotationPhase, ca.EventRotationDone, ca.EventRolledBack, ca.EventStateLost} {
		for _, e := range events(reason) {
			Expect(e.Note).NotTo(ContainSubstring("PRIVATE KEY"))
		}
	}
}

var _ = Describe("the mesh CA, SelfSigned", Ordered, func() {
	const ns, app = "ca-self", "ca-self-app"
	AfterAll(func() {
		deleteMCPAndWait()
		for _, n := range []string{ns, app} {
			cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: n, Name: controllers.RootCertConfigMap}}
			Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, cm))).To(Succeed(), "later rotation specs wait on every served namespace's trust bundle")
		}
	})

	It("issues a root and an intermediate into cacerts before istiod is applied", func() {
		Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: app}})).To(Succeed())
		m := mcp(ns)
		caSpec(m).WorkloadCertTTL = &metav1.Duration{Duration: time.Hour}
		Expect(k8sClient.Create(ctx, m)).To(Succeed())

		Eventually(condition(meshv1.ConditionCAReady)).Should(HaveField("Status", metav1.ConditionTrue))
		cacerts := secret(ns, controllers.CACertsSecret)(Default)
		mat, err := ca.ParseSecretData(cacerts.Data)
		Expect(err).NotTo(HaveOccurred())
		Expect(ca.Validate(mat, ca.ValidateOptions{Now: caClock.Now(), WorkloadCertTTL: time.Hour})).To(Succeed())
		Expect(mat.Intermediate.Cert.IsCA).To(BeTrue())
		Expect(mat.Intermediate.Cert.MaxPathLenZero).To(BeTrue())
		Expect(mat.Roots[0].MaxPathLen).To(Equal(1))
		Expect(mat.Intermediate.Cert.Subject.Organization).To(Equal([]string{"cluster.local"}))
		Expect(cacerts.OwnerReferences).To(ContainElement(HaveField("Name", meshv1.SingletonName)))

		// istiod's Deployment follows, with the environment a rotation relies on.
		Eventually(ownedRefs).Should(ContainElement("Deployment " + ns + "/istiod"))
		d := &unstructured.Unstructured{}
		d.SetAPIVersion("apps/v1")
		d.SetKind("Deployment")
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "istiod"}, d)).To(Succeed())
		env, _ := json.Marshal(d.Object["spec"])
		for _, want := range []string{`"ISTIO_MULTIROOT_MESH","value":"true"`, `"PROXY_CONFIG_XDS_AGENT","value":"true"`, `"MAX_WORKLOAD_CERT_TTL","value":"1h0m0s"`} {
			Expect(string(env)).To(ContainSubstring(want))
		}
		markAvailable(ns)

		Eventually(func(g Gomega) {
			st := caStatus(g)
			g.Expect(st.Phase).To(Equal(string(ca.PhaseIdle)))
			g.Expect(st.RootFingerprints).To(Equal([]string{ca.Fingerprint(mat.Roots[0])}))
			g.Expect(st.IntermediateExpiry.Time).To(BeTemporally("~", mat.Intermediate.Cert.NotAfter, time.Second))
			g.Expect(st.NextAction).NotTo(BeNil())
		}).Should(Succeed())
		Expect(events(ca.EventIssued)).NotTo(BeEmpty())
		expectNoKeysIn()
	})

	It("restores cacerts when someone changes it", func() {
		before := secret(ns, controllers.CACertsSecret)(Default)
		changed := before.DeepCopy()
		changed.Data["root-cert.pem"] = []byte("tampered")
		Expect(k8sClient.Update(ctx, changed)).To(Succeed())
		Eventually(func(g Gomega) []byte {
			return secret(ns, controllers.CACertsSecret)(g).Data["root-cert.pem"]
		}).Should(Equal(before.Data["root-cert.pem"]))
	})

	It("rotates the root on request through every phase, each advancing on its signal", func() {
		oldRoots := cacertsRoots(Default, ns)
		oldInter := secret(ns, controllers.CACertsSecret)(Default).Data["ca-cert.pem"]
		publishBundle(ns, ns, app)
		m := getMCP()
		caSpec(m).Rotation.RequestedAt = &metav1.Time{Time: caClock.Now()}
		Expect(k8sClient.Update(ctx, m)).To(Succeed())

		By("Trusting: both roots in cacerts, still signing with the old intermediate")
		Eventually(func(g Gomega) { g.Expect(caStatus(g).Phase).To(Equal(string(ca.PhaseTrusting))) }).Should(Succeed())
		Eventually(func(g Gomega) []string { return cacertsRoots(g, ns) }).Should(HaveLen(2))
		Expect(cacertsRoots(Default, ns)).To(ContainElements(oldRoots))
		Expect(secret(ns, controllers.CACertsSecret)(Default).Data["ca-cert.pem"]).To(Equal(oldInter))
		Eventually(condition(meshv1.ConditionCARotating)).Should(HaveField("Status", metav1.ConditionTrue))
		// Without the bundle published, time alone does not move it on.
		caClock.Step(10 * time.Minute)
		Consistently(func(g Gomega) string { return caStatus(g).Phase }, "1500ms").Should(Equal(string(ca.PhaseTrusting)))

		By("istiod publishes both roots; after the propagation allowance, Switching and Soaking")
		publishBundle(ns, ns, app)
		Eventually(func(g Gomega) { g.Expect(caStatus(g).NextAction).NotTo(BeNil()) }).Should(Succeed())
		caClock.Step(2 * time.Minute)
		Eventually(func(g Gomega) string { return caStatus(g).Phase }).Should(Equal(string(ca.PhaseSoaking)))
		Expect(secret(ns, controllers.CACertsSecret)(Default).Data["ca-cert.pem"]).NotTo(Equal(oldInter))
		Expect(cacertsRoots(Default, ns)).To(HaveLen(2))
		soakEnd := caStatus(Default).NextAction.Time
		Expect(soakEnd.Sub(caClock.Now())).To(BeNumerically(">=", time.Hour), "the soak must outlast the workload certificate TTL")

		By("Soaking holds until every certificate under the old root has expired")
		caClock.Step(30 * time.Minute)
		Consistently(func(g Gomega) string { return caStatus(g).Phase }, "1500ms").Should(Equal(string(ca.PhaseSoaking)))
		caClock.Step(32 * time.Minute)
		Eventually(func(g Gomega) string { return caStatus(g).Phase }).Should(Equal(string(ca.PhaseFinalizing)))
		Eventually(func(g Gomega) []string { return cacertsRoots(g, ns) }).Should(HaveLen(1))
		Expect(cacertsRoots(Default, ns)).NotTo(Equal(oldRoots))

		By("istiod publishes the new root alone: Done")
		publishBundle(ns, ns, app)
		Eventually(func(g Gomega) string { return caStatus(g).Phase }).Should(Equal(string(ca.PhaseDone)))
		Eventually(condition(meshv1.ConditionCARotating)).Should(And(HaveField("Status", metav1.ConditionFalse), HaveField("Reason", meshv1.ReasonCARotated)))
		Expect(caStatus(Default).RootFingerprints).To(Equal(cacertsRoots(Default, ns)))
		Expect(events(ca.EventRotationDone)).NotTo(BeEmpty())
		state := secret(ns, controllers.CAStateSecret)(Default)
		Expect(state.Data).NotTo(HaveKey(ca.NextPrefix+"ca-cert.pem"), "the next CA was not promoted")
		expectNoKeysIn()
	})
})

var _ = Describe("the mesh CA, Provided, with bad input", Ordered, func() {
	const ns, name = "ca-provided", "user-ca"
	var good map[string][]byte
	AfterAll(deleteMCPAndWait)

	It("copies a valid provided Secret into cacerts", func() {
		Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
		root, inter := authority(1000*time.Hour, 500*time.Hour)
		good = istioData(root, inter)
		Expect(k8sClient.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: good})).To(Succeed())
		m := mcp(ns)
		caSpec(m).Type = meshv1.CAProvided
		caSpec(m).Provided = &meshv1.ProvidedCASpec{SecretName: name}
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		Eventually(condition(meshv1.ConditionCAReady)).Should(HaveField("Status", metav1.ConditionTrue))
		Expect(secret(ns, controllers.CACertsSecret)(Default).Data).To(Equal(good))
	})

	DescribeTable("reports the Secret and key at fault, and leaves istiod on the last good CA",
		func(mutate func(map[string][]byte), wantInMessage string) {
			bad := map[string][]byte{}
			for k, v := range good {
				bad[k] = v
			}
			mutate(bad)
			s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
			if len(bad) == 0 {
				Expect(k8sClient.Delete(ctx, s)).To(Succeed())
			} else {
				Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(s), s)).To(Succeed())
				s.Data = bad
				Expect(k8sClient.Update(ctx, s)).To(Succeed())
			}
			Eventually(condition(meshv1.ConditionCAReady)).Should(And(
				HaveField("Status", metav1.ConditionFalse),
				HaveField("Reason", meshv1.ReasonCAInvalid),
				HaveField("Message", ContainSubstring("spec.security.ca.provided.secretName: secret "+ns+"/"+name)),
				HaveField("Message", ContainSubstring(wantInMessage))))
			Consistently(func(g Gomega) map[string][]byte { return secret(ns, controllers.CACertsSecret)(g).Data }, "1s").Should(Equal(good))
			expectNoKeysIn()

			// Putting the good material back recovers.
			s = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
			if err := k8sClient.Get(ctx, client.ObjectKeyFromObject(s), s); apierrors.IsNotFound(err) {
				s.Data = good
				Expect(k8sClient.Create(ctx, s)).To(Succeed())
			} else {
				s.Data = good
				Expect(k8sClient.Update(ctx, s)).To(Succeed())
			}
			Eventually(condition(meshv1.ConditionCAReady)).Should(HaveField("Status", metav1.ConditionTrue))
		},
		Entry("the Secret is missing", func(d map[string][]byte) { clear(d) }, "not found"),
		Entry("a key is missing", func(d map[string][]byte) { delete(d, "ca-key.pem") }, "ca-key.pem: missing or empty"),
		Entry("the key does not match the certificate", func(d map[string][]byte) {
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			d["ca-key.pem"] = pemKey(k)
		}, "ca-key.pem"),
		Entry("the certificate is not a CA", func(d map[string][]byte) {
			root, _ := authority(1000*time.Hour, 500*time.Hour)
			leaf, key := leafOf(root)
			d["ca-cert.pem"], d["ca-key.pem"] = pemCert(leaf), pemKey(key)
			d["cert-chain.pem"], d["root-cert.pem"] = append(pemCert(leaf), pemCert(root.Cert)...), pemCert(root.Cert)
		}, "ca-cert.pem"),
		Entry("the chain does not verify to the root", func(d map[string][]byte) {
			other, _ := authority(1000*time.Hour, 500*time.Hour)
			d["root-cert.pem"] = pemCert(other.Cert)
		}, "root-cert.pem"),
		Entry("the intermediate has expired", func(d map[string][]byte) {
			root, err := ca.NewRoot(ca.RootOptions{Now: caClock.Now().Add(-2000 * time.Hour), TTL: 5000 * time.Hour})
			Expect(err).NotTo(HaveOccurred())
			inter, err := ca.NewIntermediate(root, ca.IntermediateOptions{Now: caClock.Now().Add(-2000 * time.Hour), TTL: 100 * time.Hour})
			Expect(err).NotTo(HaveOccurred())
			for k, v := range istioData(root, inter) {
				d[k] = v
			}
		}, "expired"),
		Entry("the intermediate expires within the workload certificate TTL", func(d map[string][]byte) {
			root, inter := authority(1000*time.Hour, time.Hour)
			for k, v := range istioData(root, inter) {
				d[k] = v
			}
		}, "ca-cert.pem"),
		Entry("the key type is not supported", func(d map[string][]byte) {
			weak, err := rsa.GenerateKey(rand.Reader, 1024)
			Expect(err).NotTo(HaveOccurred())
			root, err := ca.NewRoot(ca.RootOptions{Now: caClock.Now(), TTL: 1000 * time.Hour})
			Expect(err).NotTo(HaveOccurred())
			// ca.NewIntermediate refuses such a key, so the certificate is made by hand.
			tmpl := &x509.Certificate{SerialNumber: big.NewInt(9), Subject: pkix.Name{CommonName: "weak intermediate"},
				NotBefore: caClock.Now().Add(-time.Hour), NotAfter: caClock.Now().Add(500 * time.Hour),
				KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true, MaxPathLenZero: true}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, root.Cert, weak.Public(), root.Key)
			Expect(err).NotTo(HaveOccurred())
			c, err := x509.ParseCertificate(der)
			Expect(err).NotTo(HaveOccurred())
			for k, v := range istioData(root, &ca.KeyPair{Cert: c, Key: weak}) {
				d[k] = v
			}
		}, "ca-cert.pem: the certificate \"CN=weak intermediate\""),
	)
})

var _ = Describe("the mesh CA with a cacerts Secret Capstan did not create", Ordered, func() {
	const ns = "ca-foreign"
	AfterAll(deleteMCPAndWait)

	It("leaves it alone, holds istiod back, and says how to adopt it", func() {
		Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
		root, inter := authority(1000*time.Hour, 500*time.Hour)
		theirs := istioData(root, inter)
		Expect(k8sClient.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: controllers.CACertsSecret}, Data: theirs})).To(Succeed())
		Expect(k8sClient.Create(ctx, mcp(ns))).To(Succeed())
		Eventually(condition(meshv1.ConditionCAReady)).Should(And(
			HaveField("Status", metav1.ConditionFalse),
			HaveField("Message", ContainSubstring("Capstan did not create it")),
			HaveField("Message", ContainSubstring("spec.security.ca.type to Provided"))))
		Consistently(ownedRefs, "1s").ShouldNot(ContainElement("Deployment " + ns + "/istiod"))
		Expect(secret(ns, controllers.CACertsSecret)(Default).Data).To(Equal(theirs))
		Eventually(condition(meshv1.ConditionReady)).Should(HaveField("Message", ContainSubstring("the mesh CA")))
	})
})

var _ = Describe("the mesh CA from cert-manager", Ordered, func() {
	const ns = "ca-cm"
	AfterAll(deleteMCPAndWait)

	It("reports cert-manager missing and holds istiod back", func() {
		Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
		m := mcp(ns)
		caSpec(m).Type = meshv1.CACertManager
		caSpec(m).CertManager = &meshv1.CertManagerCASpec{IssuerRef: meshv1.IssuerReference{Name: "mesh-issuer", Kind: "ClusterIssuer"}}
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		Eventually(condition(meshv1.ConditionCAReady)).Should(And(
			HaveField("Status", metav1.ConditionFalse),
			HaveField("Reason", meshv1.ReasonCertManagerMissing),
			HaveField("Message", ContainSubstring("certificates.cert-manager.io"))))
		Expect(ownedRefs()).NotTo(ContainElement("Deployment " + ns + "/istiod"))
	})

	It("asks cert-manager for a CA whose key rotates, and waits for it to be Ready", func() {
		installCertManagerCRD()
		cert := &unstructured.Unstructured{}
		cert.SetAPIVersion("cert-manager.io/v1")
		cert.SetKind("Certificate")
		Eventually(func() error {
			return k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: controllers.CertManagerCertificate}, cert)
		}, time.Minute).Should(Succeed())
		spec := cert.Object["spec"].(map[string]any)
		Expect(spec["isCA"]).To(BeTrue())
		Expect(spec["secretName"]).To(Equal(controllers.CertManagerSecret))
		Expect(spec["privateKey"]).To(HaveKeyWithValue("rotationPolicy", "Always"))
		Expect(spec["issuerRef"]).To(And(HaveKeyWithValue("name", "mesh-issuer"), HaveKeyWithValue("kind", "ClusterIssuer")))
		Expect(spec["usages"]).To(ContainElements("cert sign", "crl sign"))
		Eventually(condition(meshv1.ConditionCAReady)).Should(HaveField("Reason", meshv1.ReasonCertManagerNotReady))

		By("cert-manager (simulated) issues the intermediate and marks the Certificate Ready")
		root, inter := authority(1000*time.Hour, 500*time.Hour)
		labels := spec["secretTemplate"].(map[string]any)["labels"].(map[string]any)
		sl := map[string]string{}
		for k, v := range labels {
			sl[k] = v.(string)
		}
		Expect(k8sClient.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: controllers.CertManagerSecret, Labels: sl},
			Type:       corev1.SecretTypeTLS,
			Data: map[string][]byte{
				"tls.crt": append(pemCert(inter.Cert), pemCert(root.Cert)...),
				"tls.key": pemKey(inter.Key),
				"ca.crt":  pemCert(root.Cert),
			},
		})).To(Succeed())
		Expect(unstructured.SetNestedSlice(cert.Object, []any{map[string]any{
			"type": "Ready", "status": "True", "reason": "Ready", "message": "issued", "lastTransitionTime": time.Now().UTC().Format(time.RFC3339),
		}}, "status", "conditions")).To(Succeed())
		Expect(k8sClient.Status().Update(ctx, cert)).To(Succeed())

		Eventually(condition(meshv1.ConditionCAReady)).Should(HaveField("Status", metav1.ConditionTrue))
		mat, err := ca.ParseSecretData(secret(ns, controllers.CACertsSecret)(Default).Data)
		Expect(err).NotTo(HaveOccurred())
		Expect(mat.Intermediate.Cert.Equal(inter.Cert)).To(BeTrue())
		Expect(mat.Roots[0].Equal(root.Cert)).To(BeTrue())
		Eventually(ownedRefs).Should(ContainElement("Deployment " + ns + "/istiod"))
	})
})

// installCertManagerCRD installs cert-manager's own Certificate CRD, from its Go module.
func installCertManagerCRD() {
	GinkgoHelper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/cert-manager/cert-manager").Output()
	Expect(err).NotTo(HaveOccurred())
	b, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), "deploy", "crds", "cert-manager.io_certificates.yaml"))
	Expect(err).NotTo(HaveOccurred())
	crd := &apiextensionsv1.CustomResourceDefinition{}
	Expect(yaml.Unmarshal(b, crd)).To(Succeed())
	Expect(k8sClient.Create(ctx, crd)).To(Succeed())
	Eventually(func(g Gomega) {
		g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(crd), crd)).To(Succeed())
		established := false
		for _, c := range crd.Status.Conditions {
			established = established || (c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue)
		}
		g.Expect(established).To(BeTrue())
	}).Should(Succeed())
}

var _ = Describe("the mesh CA of a MeshControlPlane deleted and made again", Ordered, func() {
	const ns = "ca-again"
	AfterAll(deleteMCPAndWait)

	It("waits for the deleted one's CA Secrets to be collected, then issues a new CA, and istiod waits with it", func() {
		// The user's namespace, which Capstan never deletes: a namespace Capstan created
		// would stay Terminating in envtest, which runs no namespace controller.
		Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
		Expect(k8sClient.Create(ctx, mcp(ns))).To(Succeed())
		Eventually(condition(meshv1.ConditionCAReady)).Should(HaveField("Status", metav1.ConditionTrue))
		Eventually(ownedRefs).Should(ContainElement("Deployment " + ns + "/istiod"))
		old := secret(ns, controllers.CACertsSecret)(Default)
		oldState := secret(ns, controllers.CAStateSecret)(Default)
		deleteMCPAndWait()

		// envtest runs no garbage collector: the Secrets the deleted MeshControlPlane owned
		// stay until the test removes them, as kube-controller-manager would.
		Expect(k8sClient.Create(ctx, mcp(ns))).To(Succeed())
		Eventually(condition(meshv1.ConditionCAReady)).Should(And(
			HaveField("Status", metav1.ConditionFalse),
			HaveField("Reason", meshv1.ReasonCAWaiting),
			HaveField("Message", ContainSubstring("garbage-collected"))))
		Consistently(func(g Gomega) {
			g.Expect(secret(ns, controllers.CACertsSecret)(g).ResourceVersion).To(Equal(old.ResourceVersion))
			g.Expect(ownedRefs()).NotTo(ContainElement("Deployment " + ns + "/istiod"))
		}).WithTimeout(2 * time.Second).Should(Succeed())
		Expect(condition(meshv1.ConditionReady)(Default)).To(And(
			HaveField("Status", metav1.ConditionFalse),
			HaveField("Reason", meshv1.ReasonCAWaiting)))

		Expect(k8sClient.Delete(ctx, old)).To(Succeed())
		Expect(k8sClient.Delete(ctx, oldState)).To(Succeed())
		Eventually(condition(meshv1.ConditionCAReady)).Should(HaveField("Status", metav1.ConditionTrue))
		fresh := secret(ns, controllers.CACertsSecret)(Default)
		Expect(fresh.UID).NotTo(Equal(old.UID))
		Expect(fresh.Data["root-cert.pem"]).NotTo(Equal(old.Data["root-cert.pem"]))
		Expect(metav1.GetControllerOf(fresh).UID).To(Equal(getMCP().UID))
		Eventually(ownedRefs).Should(ContainElement("Deployment " + ns + "/istiod"))
		// istiod's first start, once the CA is there, is no repair of a deleted object.
		uid := getMCP().UID
		Eventually(func() []string {
			var notes []string
			for _, e := range events(meshv1.ReasonUpdated) {
				if e.Regarding.UID == uid {
					notes = append(notes, e.Note)
				}
			}
			return notes
		}).Should(ContainElement(ContainSubstring("1 objects changed")))
		for _, e := range events(meshv1.ReasonDriftReverted) {
			Expect(e.Regarding.UID).NotTo(Equal(uid), "istiod's first start reported as a repair: %s", e.Note)
		}
	})
})

var _ = Describe("the mesh CA when its state Secret is lost", Ordered, func() {
	// app is served by istiod (it matches the discoverySelectors); other is not, and gone is
	// terminating (envtest runs no namespace controller, so it stays so): istiod writes
	// neither's istio-ca-root-cert, and each keeps a bundle of an unrelated root for ever.
	const ns, app, other, gone = "ca-lost", "ca-lost-app", "ca-lost-other", "ca-lost-gone"
	const meshLabel = "capstan.dev/test-mesh"
	var before *corev1.Secret // cacerts when the state Secret was lost
	AfterAll(func() {
		deleteMCPAndWait()
		for _, n := range []string{ns, app, other, gone} {
			cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: n, Name: controllers.RootCertConfigMap}}
			Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, cm))).To(Succeed(), "later specs count ConfigMaps in namespaces that are not terminating")
		}
	})

	It("issues a CA with automatic rotation off, istiod serving the namespaces its discoverySelectors select", func() {
		for n, labels := range map[string]map[string]string{ns: nil, app: {meshLabel: "on"}, other: nil, gone: {meshLabel: "on"}} {
			Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n, Labels: labels}})).To(Succeed())
		}
		m := mcp(ns)
		caSpec(m).WorkloadCertTTL = &metav1.Duration{Duration: time.Hour}
		caSpec(m).Rotation = &meshv1.CARotationSpec{Automatic: ptr.To(false)}
		m.Spec.Values = &apiextensionsv1.JSON{Raw: []byte(`{"meshConfig":{"discoverySelectors":[{"matchLabels":{"` + meshLabel + `":"on"}}]}}`)}
		Expect(k8sClient.Create(ctx, m)).To(Succeed())
		Eventually(condition(meshv1.ConditionCAReady)).Should(HaveField("Status", metav1.ConditionTrue))
		Eventually(ownedRefs).Should(ContainElement("Deployment " + ns + "/istiod"))
		markAvailable(ns)
		publishBundle(ns, ns, app)

		unrelated, _ := authority(1000*time.Hour, 500*time.Hour)
		for _, n := range []string{other, gone} {
			Expect(k8sClient.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: n, Name: controllers.RootCertConfigMap},
				Data: map[string]string{"root-cert.pem": string(pemCert(unrelated.Cert))}})).To(Succeed())
		}
		Expect(k8sClient.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: gone}})).To(Succeed())
		Eventually(func(g Gomega) {
			n := &corev1.Namespace{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKey{Name: gone}, n)).To(Succeed())
			g.Expect(n.DeletionTimestamp).NotTo(BeNil())
		}).Should(Succeed())
	})

	It("keeps cacerts byte for byte, says the state was lost, and waits for a request while automatic rotation is off", func() {
		before = secret(ns, controllers.CACertsSecret)(Default)
		lost := secret(ns, controllers.CAStateSecret)(Default)
		Expect(k8sClient.Delete(ctx, lost)).To(Succeed())

		Eventually(condition(meshv1.ConditionCAReady)).Should(And(
			HaveField("Status", metav1.ConditionFalse),
			HaveField("Reason", meshv1.ReasonCAStateLost),
			HaveField("Message", ContainSubstring("secret "+ns+"/"+controllers.CAStateSecret+", which held the CA's state and root key, was lost")),
			HaveField("Message", ContainSubstring("set spec.security.ca.rotation.requestedAt")),
			HaveField("Message", ContainSubstring("restore secret "+ns+"/"+controllers.CAStateSecret+" from a backup"))))
		uid := getMCP().UID
		Eventually(func() []eventsv1.Event {
			var out []eventsv1.Event
			for _, e := range events(ca.EventStateLost) {
				if e.Regarding.UID == uid {
					out = append(out, e)
				}
			}
			return out
		}).Should(ContainElement(And(HaveField("Type", corev1.EventTypeWarning), HaveField("Note", ContainSubstring(ns+"/"+controllers.CAStateSecret)))))

		state := secret(ns, controllers.CAStateSecret)(Default)
		Expect(state.UID).NotTo(Equal(lost.UID), "the state is written again")
		Expect(state.Annotations[ca.StateAnnotation]).To(ContainSubstring(`"activeSource":"Recovered:` + ns + `/` + controllers.CACertsSecret + `"`))
		Expect(state.Data).NotTo(HaveKey(ca.RootKeyName), "the root key is not invented")
		Expect(state.Data["ca-cert.pem"]).To(Equal(before.Data["ca-cert.pem"]))

		// The recovered state was written: time passing changes nothing until a request.
		caClock.Step(2 * time.Hour)
		Consistently(func(g Gomega) {
			now := secret(ns, controllers.CACertsSecret)(g)
			g.Expect(now.ResourceVersion).To(Equal(before.ResourceVersion))
			g.Expect(now.Data).To(Equal(before.Data))
			g.Expect(caStatus(g).Phase).To(Equal(string(ca.PhaseIdle)))
		}, "1500ms").Should(Succeed())
		Expect(condition(meshv1.ConditionCARotating)(Default)).To(HaveField("Status", metav1.ConditionFalse))
		expectNoKeysIn()
	})

	It("rotates to a new root, trusted beside the old first, once automatic rotation is on, counting only the namespaces istiod serves", func() {
		oldRoots := cacertsRoots(Default, ns)
		m := getMCP()
		caSpec(m).Rotation.Automatic = ptr.To(true)
		Expect(k8sClient.Update(ctx, m)).To(Succeed())

		By("Trusting: both roots in cacerts, the recovered intermediate still signing")
		Eventually(func(g Gomega) { g.Expect(caStatus(g).Phase).To(Equal(string(ca.PhaseTrusting))) }).Should(Succeed())
		Eventually(func(g Gomega) []string { return cacertsRoots(g, ns) }).Should(HaveLen(2))
		Expect(cacertsRoots(Default, ns)).To(ContainElements(oldRoots))
		now := secret(ns, controllers.CACertsSecret)(Default)
		for _, k := range []string{"ca-cert.pem", "ca-key.pem", "cert-chain.pem"} {
			Expect(now.Data[k]).To(Equal(before.Data[k]), "%s changed before the new root is trusted", k)
		}
		Eventually(condition(meshv1.ConditionCAReady)).Should(And(
			HaveField("Status", metav1.ConditionFalse),
			HaveField("Reason", meshv1.ReasonCAStateLost),
			HaveField("Message", ContainSubstring("A root rotation ("+ca.RotationStateLost+") to a new root is under way, in phase Trusting"))))
		Expect(condition(meshv1.ConditionCARotating)(Default)).To(HaveField("Status", metav1.ConditionTrue))
		Expect(caStatus(Default).RotationReason).To(Equal(ca.RotationStateLost))

		By("istiod publishes both roots where it serves; the stale ConfigMaps elsewhere do not hold Trusting")
		publishBundle(ns, ns, app)
		Eventually(func(g Gomega) { g.Expect(caStatus(g).NextAction).NotTo(BeNil()) }).Should(Succeed())
		caClock.Step(2 * time.Minute)
		Eventually(func(g Gomega) string { return caStatus(g).Phase }).Should(Equal(string(ca.PhaseSoaking)))
		Expect(secret(ns, controllers.CACertsSecret)(Default).Data["ca-cert.pem"]).NotTo(Equal(before.Data["ca-cert.pem"]))
		Expect(cacertsRoots(Default, ns)).To(HaveLen(2))

		By("after the soak, the new root alone; Done once istiod publishes it, and the CA is ready")
		caClock.Step(62 * time.Minute)
		Eventually(func(g Gomega) string { return caStatus(g).Phase }).Should(Equal(string(ca.PhaseFinalizing)))
		Eventually(func(g Gomega) []string { return cacertsRoots(g, ns) }).Should(HaveLen(1))
		Expect(cacertsRoots(Default, ns)).NotTo(ContainElements(oldRoots))
		publishBundle(ns, ns, app)
		Eventually(func(g Gomega) string { return caStatus(g).Phase }).Should(Equal(string(ca.PhaseDone)))
		Eventually(condition(meshv1.ConditionCAReady)).Should(And(HaveField("Status", metav1.ConditionTrue), HaveField("Reason", meshv1.ReasonCAIssued)))
		Expect(secret(ns, controllers.CAStateSecret)(Default).Data).To(HaveKey(ca.RootKeyName), "Capstan holds the new root's key")
		expectNoKeysIn()
	})
})
