//go:build e2e

// The harness's own end-to-end test: a real kwok cluster, Istio's charts, the real istiod and
// sidecar injection. Build it outside the network namespace and run it inside one:
//
//	go test -c -tags e2e -o bin/harness.test ./test/harness
//	hack/in-netns.sh bin/harness.test -test.v
package harness

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/ca"
	"github.com/capstan-mesh/capstan/internal/plan"
)

const fieldManager = "capstan-harness-test"

func TestHarnessEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	if err := RequireLoopbackNetns(); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	c, err := StartCluster(ctx, ClusterOptions{Nodes: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, comp := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok-controller"} {
				t.Logf("--- %s log (tail):\n%s", comp, c.LogTail(comp, 3000))
			}
		}
		if err := c.Stop(); err != nil {
			t.Errorf("stopping the cluster: %v", err)
		}
	})
	t.Logf("cluster %s up in %v (kubeconfig %s)", c.Name, time.Since(start).Round(time.Millisecond), c.Kubeconfig)
	cs := c.Clientset

	// 1. Services get ClusterIPs in the loopback range.
	_, cidr, _ := net.ParseCIDR(ServiceCIDR)
	svc, err := cs.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "probe"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ip := net.ParseIP(svc.Spec.ClusterIP); ip == nil || !cidr.Contains(ip) {
		t.Fatalf("Service ClusterIP %q is not inside %s", svc.Spec.ClusterIP, ServiceCIDR)
	}
	t.Logf("Service default/probe has ClusterIP %s", svc.Spec.ClusterIP)

	// The apiserver writes the audit log, and it records that request.
	Eventually(t, ctx, 30*time.Second, "audit log records the Service creation", func(context.Context) (bool, string, error) {
		b, err := os.ReadFile(c.AuditLogPath)
		if err != nil {
			return false, err.Error(), nil
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, `"verb":"create"`) && strings.Contains(l, `"resource":"services"`) && strings.Contains(l, `"name":"probe"`) {
				return true, "", nil
			}
		}
		return false, fmt.Sprintf("%d bytes, no create of services/probe", len(b)), nil
	})

	// The kubectl helper talks to the same cluster.
	out, err := c.Kubectl(ctx, "get", "service", "probe", "-o", "jsonpath={.spec.clusterIP}")
	if err != nil || out != svc.Spec.ClusterIP {
		t.Fatalf("kubectl get service probe: %q, %v; want %s", out, err, svc.Spec.ClusterIP)
	}

	// 2. Istio's charts, rendered by internal/render, applied server-side.
	ver, err := cs.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.For(&meshv1.MeshControlPlaneSpec{Namespace: "istio-system", Upgrade: &meshv1.UpgradeSpec{Strategy: meshv1.UpgradeInPlace}}, plan.Installed{})
	if err != nil {
		t.Fatal(err)
	}
	objs, err := p.Render(ver.GitVersion)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) < 20 {
		t.Fatalf("render returned only %d objects", len(objs))
	}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	unstructuredObjs := make([]*unstructured.Unstructured, len(objs))
	for i, o := range objs {
		if unstructuredObjs[i], err = o.Full(); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Apply(ctx, fieldManager, unstructuredObjs...); err != nil {
		t.Fatal(err)
	}
	t.Logf("applied %d rendered objects", len(objs))

	// 3. The real istiod, as a local process.
	d, err := StartIstiod(ctx, c, IstiodOptions{Namespace: "istio-system", Revision: "default"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- istiod log (tail):\n%s", d.LogTail(6000))
		}
		if err := d.Stop(); err != nil {
			t.Errorf("stopping istiod: %v", err)
		}
	})
	t.Logf("istiod ready: webhook %s, secure gRPC %s, log %s", d.HTTPSAddr, d.SecureGRPCAddr, d.LogPath)
	if !strings.HasPrefix(d.HTTPSAddr, d.ServiceIP+":") || !cidr.Contains(net.ParseIP(d.ServiceIP)) {
		t.Fatalf("istiod webhook address %s is not on its Service IP %s", d.HTTPSAddr, d.ServiceIP)
	}

	// The mirrored files match the ConfigMaps, and follow a change.
	mesh, err := cs.CoreV1().ConfigMaps("istio-system").Get(ctx, "istio", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(d.WorkDir, "etc/istio/config/mesh")); err != nil || string(b) != mesh.Data["mesh"] || len(b) == 0 {
		t.Fatalf("etc/istio/config/mesh does not hold ConfigMap istio's mesh key (err %v)", err)
	}
	if _, err := cs.CoreV1().Secrets("istio-system").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "harness-mirror-probe"},
		Data:       map[string][]byte{"k": []byte("v1")},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	probeDir := t.TempDir()
	mirror, err := StartMirror(ctx, cs, nil, MirrorSource{Secret: true, Namespace: "istio-system", Name: "harness-mirror-probe", Dir: probeDir})
	if err != nil {
		t.Fatal(err)
	}
	defer mirror.Stop()
	if b, err := os.ReadFile(filepath.Join(probeDir, "k")); err != nil || string(b) != "v1" {
		t.Fatalf("mirror of Secret harness-mirror-probe: %q, %v; want v1", b, err)
	}
	patch := []byte(`{"data":{"k":null,"k2":"djI="}}`)
	if _, err := cs.CoreV1().Secrets("istio-system").Patch(ctx, "harness-mirror-probe", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	Eventually(t, ctx, 30*time.Second, "mirror follows a Secret change", func(context.Context) (bool, string, error) {
		_, errOld := os.Stat(filepath.Join(probeDir, "k"))
		b, _ := os.ReadFile(filepath.Join(probeDir, "k2"))
		return os.IsNotExist(errOld) && string(b) == "v2", fmt.Sprintf("k removed: %v, k2=%q", os.IsNotExist(errOld), b), nil
	})

	// 4. istiod patches the caBundle of its injection webhook.
	Eventually(t, ctx, time.Minute, "istiod patches the injector webhook caBundle", func(ctx context.Context) (bool, string, error) {
		wh, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "istio-sidecar-injector", metav1.GetOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		if len(wh.Webhooks) == 0 {
			return false, "", fmt.Errorf("webhook configuration has no webhooks")
		}
		for _, w := range wh.Webhooks {
			if !strings.Contains(string(w.ClientConfig.CABundle), "BEGIN CERTIFICATE") {
				return false, "webhook " + w.Name + " has no caBundle yet", nil
			}
		}
		return true, "", nil
	})

	// 5. Sidecar injection in a labelled namespace, pods Running on the simulated nodes.
	const ns, replicas = "injected", 2
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: ns, Labels: map[string]string{"istio-injection": "enabled"},
	}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app": "web"}
	_, err = cs.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: "web", Image: "example.invalid/web:1",
					Ports: []corev1.ContainerPort{{ContainerPort: 8080}},
				}}},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kwokNodes := map[string]bool{}
	for _, n := range nodes.Items {
		if n.Annotations["kwok.x-k8s.io/node"] == "fake" {
			kwokNodes[n.Name] = true
		}
	}
	if len(kwokNodes) < 2 {
		t.Fatalf("want at least 2 simulated nodes, have %v", kwokNodes)
	}
	Eventually(t, ctx, 2*time.Minute, "injected pods Running on simulated nodes", func(ctx context.Context) (bool, string, error) {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			return false, err.Error(), nil
		}
		if len(pods.Items) != replicas {
			return false, fmt.Sprintf("%d pods", len(pods.Items)), nil
		}
		for _, p := range pods.Items {
			inits, ctrs := containerNames(p.Spec.InitContainers), containerNames(p.Spec.Containers)
			if !slices.Contains(inits, "istio-init") {
				return false, "", fmt.Errorf("pod %s was not injected: init containers %v, containers %v", p.Name, inits, ctrs)
			}
			if !slices.Contains(ctrs, "istio-proxy") && !slices.Contains(inits, "istio-proxy") {
				return false, "", fmt.Errorf("pod %s has no istio-proxy: init containers %v, containers %v", p.Name, inits, ctrs)
			}
			if p.Status.Phase != corev1.PodRunning || !kwokNodes[p.Spec.NodeName] {
				return false, fmt.Sprintf("pod %s: phase %s on node %q", p.Name, p.Status.Phase, p.Spec.NodeName), nil
			}
		}
		return true, "", nil
	})
	pods, _ := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	for _, p := range pods.Items {
		t.Logf("pod %s on %s: %s; init %v, containers %v", p.Name, p.Spec.NodeName, p.Status.Phase,
			containerNames(p.Spec.InitContainers), containerNames(p.Spec.Containers))
	}

	// 6. istiod publishes the mesh root certificate into the namespace.
	Eventually(t, ctx, time.Minute, "ConfigMap istio-ca-root-cert in "+ns, func(ctx context.Context) (bool, string, error) {
		cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, "not found", nil
		} else if err != nil {
			return false, err.Error(), nil
		}
		return strings.Contains(cm.Data["root-cert.pem"], "BEGIN CERTIFICATE"), "no root-cert.pem", nil
	})
	t.Logf("whole test in %v", time.Since(start).Round(time.Millisecond))
}

func containerNames(cs []corev1.Container) []string {
	var names []string
	for _, c := range cs {
		names = append(names, c.Name)
	}
	return names
}

// startClusterWithIstioCharts starts a cluster (stopped when the test ends) with Istio's
// base and istio-discovery charts applied in istio-system, as an installer would leave it
// before istiod runs.
func startClusterWithIstioCharts(t *testing.T, ctx context.Context) *Cluster {
	t.Helper()
	if err := RequireLoopbackNetns(); err != nil {
		t.Fatal(err)
	}
	c, err := StartCluster(ctx, ClusterOptions{Nodes: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- kube-apiserver log (tail):\n%s", c.LogTail("kube-apiserver", 3000))
		}
		if err := c.Stop(); err != nil {
			t.Errorf("stopping the cluster: %v", err)
		}
	})
	ver, err := c.Clientset.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.For(&meshv1.MeshControlPlaneSpec{Namespace: "istio-system", Upgrade: &meshv1.UpgradeSpec{Strategy: meshv1.UpgradeInPlace}}, plan.Installed{})
	if err != nil {
		t.Fatal(err)
	}
	objs, err := p.Render(ver.GitVersion)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Clientset.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	us := make([]*unstructured.Unstructured, len(objs))
	for i, o := range objs {
		if us[i], err = o.Full(); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Apply(ctx, fieldManager, us...); err != nil {
		t.Fatal(err)
	}
	return c
}

// waitMeshRoots waits until istiod has published exactly want as the trust bundle
// (istio-ca-root-cert) in namespace.
func waitMeshRoots(t *testing.T, ctx context.Context, c *Cluster, namespace string, want ...*x509.Certificate) {
	t.Helper()
	Eventually(t, ctx, time.Minute, fmt.Sprintf("istio-ca-root-cert in %s holds exactly %d expected root(s)", namespace, len(want)), func(ctx context.Context) (bool, string, error) {
		got, err := c.MeshRoots(ctx, namespace)
		if err != nil {
			return false, err.Error(), nil
		}
		var subjects []string
		for _, r := range got {
			subjects = append(subjects, fmt.Sprintf("%s (%s)", r.Subject, ca.Fingerprint(r)[:12]))
		}
		return SameCerts(got, want), fmt.Sprintf("published %v", subjects), nil
	})
}

// TestIstiodIssuesWorkloadCertsFromPluggedInCA protects the pieces the CA rotation e2e test
// stands on: istiod, given a plugged-in CA in the cacerts Secret, publishes that root and
// issues real workload certificates (leaf for the caller's SPIFFE identity, signed by the
// plugged-in intermediate, with the requested TTL) through WorkloadCertificate; two such
// certificates complete a real mTLS handshake, and fail it against an unrelated root; when
// the Secret's root-cert.pem grows to two roots, istiod reloads it and publishes both; and
// when the Secret switches to an intermediate under the new root, istiod signs with it.
//
// Real: the apiserver (TokenRequest, TokenReview), istiod (its CA, its serving certificate,
// its root publishing, its reload of ./etc/cacerts), TLS 1.3 between the two workloads.
// Simulated: the kubelet's Secret volume sync (Mirror writes ./etc/cacerts), and Envoy
// sidecars (Go TLS peers that verify SPIFFE identities as Envoy does).
func TestIstiodIssuesWorkloadCertsFromPluggedInCA(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	start := time.Now()
	c := startClusterWithIstioCharts(t, ctx)
	cs := c.Clientset

	// The plugged-in CA, in place before istiod starts (as a user or Capstan would put it).
	now := time.Now()
	root1, err := ca.NewRoot(ca.RootOptions{Now: now, CommonName: "Harness Root 1"})
	if err != nil {
		t.Fatal(err)
	}
	inter1, err := ca.NewIntermediate(root1, ca.IntermediateOptions{Now: now, CommonName: "Harness Intermediate 1"})
	if err != nil {
		t.Fatal(err)
	}
	material := &ca.Material{Intermediate: inter1, Chain: []*x509.Certificate{inter1.Cert, root1.Cert}, Roots: []*x509.Certificate{root1.Cert}}
	data, err := material.SecretData()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Secrets("istio-system").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "cacerts"}, Data: data,
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	const ns = "ca-probe"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	d, err := StartIstiod(ctx, c, IstiodOptions{Env: []string{"ISTIO_MULTIROOT_MESH=true"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- istiod log (tail):\n%s", d.LogTail(8000))
		}
		if err := d.Stop(); err != nil {
			t.Errorf("stopping istiod: %v", err)
		}
	})
	t.Logf("cluster and istiod ready in %v", time.Since(start).Round(time.Millisecond))
	t.Logf("istiod logged the plugged-in root: %v", strings.Contains(d.LogTail(1<<20), "Use root cert from etc/cacerts/root-cert.pem"))

	// 1. istiod publishes exactly the plugged-in root.
	waitMeshRoots(t, ctx, c, ns, root1.Cert)

	// 2. Real workload certificates for two identities, each checked on its own.
	trust1 := CertPool(root1.Cert)
	issue := func(sa string, trust *x509.CertPool) *WorkloadCert {
		t.Helper()
		wc, err := d.WorkloadCertificate(ctx, WorkloadCertRequest{Namespace: ns, ServiceAccount: sa, TTL: time.Hour, Trust: trust})
		if err != nil {
			t.Fatal(err)
		}
		wantID := "spiffe://cluster.local/ns/" + ns + "/sa/" + sa
		if len(wc.Leaf.URIs) != 1 || wc.Leaf.URIs[0].String() != wantID || wc.SPIFFEID != wantID {
			t.Fatalf("leaf for %s has URIs %v (SPIFFEID %s), want exactly %s", sa, wc.Leaf.URIs, wc.SPIFFEID, wantID)
		}
		if err := wc.Leaf.CheckSignatureFrom(inter1.Cert); err != nil || !bytes.Equal(wc.Leaf.RawIssuer, inter1.Cert.RawSubject) {
			t.Fatalf("leaf for %s (issuer %q) is not signed by the plugged-in intermediate: %v", sa, wc.Leaf.Issuer, err)
		}
		if id, err := VerifySPIFFEPeer(append([]*x509.Certificate{wc.Leaf}, wc.Intermediates...), trust1); err != nil || id != wantID {
			t.Fatalf("leaf for %s does not verify to the plugged-in root: %q, %v", sa, id, err)
		}
		// The requested TTL reached istiod (its default is 24h): ValidityDuration was sent.
		if life := wc.Leaf.NotAfter.Sub(time.Now()); life < 55*time.Minute || life > 65*time.Minute {
			t.Fatalf("leaf for %s expires in %v, want about the requested 1h", sa, life)
		}
		if len(wc.IstiodChain) == 0 || wc.IstiodChain[0].CheckSignatureFrom(inter1.Cert) != nil {
			t.Fatalf("istiod's serving certificate is not signed by the plugged-in intermediate: chain of %d", len(wc.IstiodChain))
		}
		return wc
	}
	alpha, beta := issue("alpha", trust1), issue("beta", trust1)
	t.Logf("istiod issued %s and %s (issuer %q, %d intermediates, %d roots in the response)",
		alpha.SPIFFEID, beta.SPIFFEID, alpha.Leaf.Issuer, len(alpha.Intermediates), len(alpha.Roots))

	// 3. They complete a real mTLS handshake, in both roles.
	if err := Handshake(ctx, alpha.TLS, beta.TLS, trust1, trust1); err != nil {
		t.Fatalf("alpha serving beta: %v", err)
	}
	if err := Handshake(ctx, beta.TLS, alpha.TLS, trust1, trust1); err != nil {
		t.Fatalf("beta serving alpha: %v", err)
	}
	// ... and fail it when a side trusts only an unrelated root, naming that side.
	other, err := ca.NewRoot(ca.RootOptions{Now: now, CommonName: "Unrelated Root"})
	if err != nil {
		t.Fatal(err)
	}
	otherTrust := CertPool(other.Cert)
	if err := Handshake(ctx, alpha.TLS, beta.TLS, trust1, otherTrust); err == nil || !strings.Contains(err.Error(), "the client rejected the server's certificate") {
		t.Fatalf("client trusting an unrelated root: Handshake = %v, want the client to reject", err)
	}
	if err := Handshake(ctx, alpha.TLS, beta.TLS, otherTrust, trust1); err == nil || !strings.Contains(err.Error(), "the server rejected the client's certificate") {
		t.Fatalf("server trusting an unrelated root: Handshake = %v, want the server to reject", err)
	}
	// istiod's serving certificate is checked too: with the wrong root there is no certificate.
	if _, err := d.WorkloadCertificate(ctx, WorkloadCertRequest{Namespace: ns, ServiceAccount: "alpha", Trust: otherTrust}); err == nil {
		t.Fatal("WorkloadCertificate trusting an unrelated root succeeded; it must verify istiod's serving certificate")
	}
	// istiod really authenticates the caller, and takes the identity from the token: a bad
	// token gets nothing, and alpha's token gets no certificate for beta.
	if _, err := d.WorkloadCertificate(ctx, WorkloadCertRequest{Namespace: ns, ServiceAccount: "beta", Trust: trust1, Token: "not-a-token"}); err == nil || !strings.Contains(err.Error(), "Unauthenticated") {
		t.Fatalf("WorkloadCertificate with a bad token = %v, want Unauthenticated", err)
	}
	alphaToken, err := ServiceAccountToken(ctx, c, ns, "alpha", IstioCAAudience)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.WorkloadCertificate(ctx, WorkloadCertRequest{Namespace: ns, ServiceAccount: "beta", Trust: trust1, Token: alphaToken}); err == nil || !strings.Contains(err.Error(), alpha.SPIFFEID) {
		t.Fatalf("WorkloadCertificate for beta with alpha's token = %v, want an error naming the identity istiod issued, %s", err, alpha.SPIFFEID)
	}

	// 4. istiod reloads ./etc/cacerts: root-cert.pem grows to the old and a new root (the
	// first step of a root rotation; the intermediate stays), istiod publishes both.
	root2, err := ca.NewRoot(ca.RootOptions{Now: now, CommonName: "Harness Root 2"})
	if err != nil {
		t.Fatal(err)
	}
	material.Roots = []*x509.Certificate{root1.Cert, root2.Cert}
	if data, err = material.SecretData(); err != nil {
		t.Fatal(err)
	}
	secret, err := cs.CoreV1().Secrets("istio-system").Get(ctx, "cacerts", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	secret.Data = data
	if _, err := cs.CoreV1().Secrets("istio-system").Update(ctx, secret, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	reload := time.Now()
	waitMeshRoots(t, ctx, c, ns, root1.Cert, root2.Cert)
	t.Logf("istiod published both roots %v after the Secret update", time.Since(reload).Round(time.Millisecond))
	both := CertPool(root1.Cert, root2.Cert)
	gamma := issue("gamma", both)
	t.Logf("after the reload istiod returned %d root(s) with %s", len(gamma.Roots), gamma.SPIFFEID)
	if err := Handshake(ctx, gamma.TLS, alpha.TLS, both, trust1); err != nil {
		t.Fatalf("a certificate issued after the reload with one issued before: %v", err)
	}

	// 5. istiod switches to a new intermediate under the new root, all keys of the Secret
	// changing at once (the rotation's hardest step for a file mirror): it signs with it,
	// and its leaves interoperate with the old ones only for peers that trust both roots.
	inter2, err := ca.NewIntermediate(root2, ca.IntermediateOptions{Now: now, CommonName: "Harness Intermediate 2"})
	if err != nil {
		t.Fatal(err)
	}
	material.Intermediate, material.Chain = inter2, []*x509.Certificate{inter2.Cert, root2.Cert}
	if data, err = material.SecretData(); err != nil {
		t.Fatal(err)
	}
	if secret, err = cs.CoreV1().Secrets("istio-system").Get(ctx, "cacerts", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	secret.Data = data
	if _, err := cs.CoreV1().Secrets("istio-system").Update(ctx, secret, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	var delta *WorkloadCert
	Eventually(t, ctx, time.Minute, "istiod signs with the new intermediate", func(ctx context.Context) (bool, string, error) {
		wc, err := d.WorkloadCertificate(ctx, WorkloadCertRequest{Namespace: ns, ServiceAccount: "delta", TTL: time.Hour, Trust: both})
		if err != nil {
			return false, err.Error(), nil
		}
		delta = wc
		return wc.Leaf.CheckSignatureFrom(inter2.Cert) == nil, fmt.Sprintf("leaf issued by %q", wc.Leaf.Issuer), nil
	})
	if len(delta.IstiodChain) == 0 || delta.IstiodChain[0].CheckSignatureFrom(inter2.Cert) != nil {
		t.Fatal("istiod's serving certificate is not signed by the new intermediate after the switch")
	}
	if err := Handshake(ctx, delta.TLS, alpha.TLS, both, both); err != nil {
		t.Fatalf("a leaf of the new intermediate with one of the old, both trusting both roots: %v", err)
	}
	if err := Handshake(ctx, delta.TLS, alpha.TLS, both, trust1); err == nil || !strings.Contains(err.Error(), "the client rejected the server's certificate") {
		t.Fatalf("a peer trusting only the old root must reject a leaf of the new intermediate; Handshake = %v", err)
	}
	waitMeshRoots(t, ctx, c, ns, root1.Cert, root2.Cert)
	t.Logf("whole test in %v", time.Since(start).Round(time.Millisecond))
}

// TestHandshakeNamesTheRejectingSide protects Handshake's verdicts without istiod: it
// accepts peers whose SPIFFE certificates chain to the trusted root through an
// intermediate, and rejects, naming the side, a peer from another root, a peer without a
// SPIFFE URI, and an expired peer. Real: TLS 1.3 over loopback; the certificates are made
// here with internal/ca and crypto/x509, shaped like istiod's.
func TestHandshakeNamesTheRejectingSide(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	now := time.Now()
	mesh := testCA(t, now, "Mesh")
	foreign := testCA(t, now, "Foreign")
	good := mesh.leaf(t, now, "spiffe://cluster.local/ns/a/sa/good", time.Hour)
	other := foreign.leaf(t, now, "spiffe://cluster.local/ns/a/sa/other", time.Hour)
	noID := mesh.leaf(t, now, "", time.Hour)
	expired := mesh.leaf(t, now.Add(-2*time.Hour), "spiffe://cluster.local/ns/a/sa/old", time.Hour)
	trust := CertPool(mesh.root.Cert)

	for name, tc := range map[string]struct {
		server, client tls.Certificate
		want           string // "" means success
	}{
		"both from the trusted root":            {server: good, client: good},
		"server from another root":              {server: other, client: good, want: "the client rejected the server's certificate"},
		"client from another root":              {server: good, client: other, want: "the server rejected the client's certificate"},
		"client certificate without SPIFFE URI": {server: good, client: noID, want: "the server rejected the client's certificate"},
		"server certificate expired":            {server: expired, client: good, want: "the client rejected the server's certificate"},
	} {
		t.Run(name, func(t *testing.T) {
			err := Handshake(ctx, tc.server, tc.client, trust, trust)
			t.Logf("Handshake: %v", err)
			if tc.want == "" && err != nil {
				t.Fatalf("Handshake = %v, want success", err)
			}
			if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Handshake = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// testMeshCA is a root and an intermediate made with internal/ca, issuing leaves the way
// istiod does (ECDSA P-256, one spiffe:// URI SAN, client and server auth).
type testMeshCA struct{ root, inter *ca.KeyPair }

func testCA(t *testing.T, now time.Time, name string) testMeshCA {
	t.Helper()
	root, err := ca.NewRoot(ca.RootOptions{Now: now, CommonName: name + " Root"})
	if err != nil {
		t.Fatal(err)
	}
	inter, err := ca.NewIntermediate(root, ca.IntermediateOptions{Now: now, CommonName: name + " Intermediate"})
	if err != nil {
		t.Fatal(err)
	}
	return testMeshCA{root: root, inter: inter}
}

func (m testMeshCA) leaf(t *testing.T, notBefore time.Time, spiffeID string, ttl time.Duration) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		NotBefore:    notBefore, NotAfter: notBefore.Add(ttl),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if spiffeID != "" {
		u, err := url.Parse(spiffeID)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = []*url.URL{u}
	} else {
		tmpl.DNSNames = []string{"no-spiffe.example"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, m.inter.Cert, key.Public(), m.inter.Key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der, m.inter.Cert.Raw}, PrivateKey: key}
}
