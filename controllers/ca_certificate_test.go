package controllers

import (
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/apply"
	"github.com/capstan-mesh/capstan/internal/ca"
)

// TestCertificateMatchesCertManagerTypes protects certificateFor, which writes the
// Certificate as an unstructured object so that the operator links none of cert-manager's
// types: for each key algorithm, issuer kind and lifetime it must be exactly what
// cert-manager's own Go types give for the same request.
func TestCertificateMatchesCertManagerTypes(t *testing.T) {
	mcp := &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName, UID: "uid-1"}}
	cases := map[string]meshv1.CASpec{
		"defaults, a namespaced Issuer": {CertManager: &meshv1.CertManagerCASpec{IssuerRef: meshv1.IssuerReference{Name: "mesh-root"}}},
		"P-384, a ClusterIssuer": {KeyAlgorithm: string(ca.ECDSAP384),
			CertManager: &meshv1.CertManagerCASpec{IssuerRef: meshv1.IssuerReference{Name: "root", Kind: "ClusterIssuer", Group: "cert-manager.io"}}},
		"RSA 3072, own lifetimes": {KeyAlgorithm: string(ca.RSA3072), CertManager: &meshv1.CertManagerCASpec{
			IssuerRef: meshv1.IssuerReference{Name: "root"},
			Duration:  &metav1.Duration{Duration: 48 * time.Hour}, RenewBefore: &metav1.Duration{Duration: 12 * time.Hour}}},
		"RSA 4096, renewal past the lifetime": {KeyAlgorithm: string(ca.RSA4096), CertManager: &meshv1.CertManagerCASpec{
			IssuerRef: meshv1.IssuerReference{Name: "root"},
			Duration:  &metav1.Duration{Duration: 30 * time.Hour}, RenewBefore: &metav1.Duration{Duration: 40 * time.Hour}}},
	}
	for name, spec := range cases {
		t.Run(name, func(t *testing.T) {
			m := mcp.DeepCopy()
			m.Spec.Security = &meshv1.SecuritySpec{CA: spec.DeepCopy()}
			s := newCAScope(m, time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC))
			s.policy = (&CAReconciler{}).caPolicy(s)
			got := certificateFor(s)
			want := typedCertificate(t, s)
			if !equality.Semantic.DeepEqual(got.Object, want.Object) {
				t.Fatalf("certificateFor differs from cert-manager's types:\n got %v\nwant %v", got.Object, want.Object)
			}
		})
	}
}

// typedCertificate builds the same Certificate with cert-manager's Go types.
func typedCertificate(t *testing.T, s *caScope) *unstructured.Unstructured {
	t.Helper()
	cm := s.spec.CertManager
	alg, size := cmapi.ECDSAKeyAlgorithm, 256
	switch ca.KeyAlgorithm(s.spec.KeyAlgorithm) {
	case ca.ECDSAP384:
		size = 384
	case ca.RSA3072:
		alg, size = cmapi.RSAKeyAlgorithm, 3072
	case ca.RSA4096:
		alg, size = cmapi.RSAKeyAlgorithm, 4096
	}
	duration := &metav1.Duration{Duration: s.policy.IntermediateTTL}
	if cm.Duration != nil {
		duration = cm.Duration
	}
	renew := &metav1.Duration{Duration: s.policy.IntermediateRenewBefore}
	if cm.RenewBefore != nil {
		renew = cm.RenewBefore
	}
	if renew.Duration >= duration.Duration {
		renew = &metav1.Duration{Duration: duration.Duration / 3}
	}
	labels := map[string]string{apply.ManagedByLabel: apply.ManagedByValue, apply.ComponentLabel: CAComponent, apply.WriterLabel: apply.WriterCA}
	c := &cmapi.Certificate{
		TypeMeta:   metav1.TypeMeta{APIVersion: cmapi.SchemeGroupVersion.String(), Kind: "Certificate"},
		ObjectMeta: metav1.ObjectMeta{Name: CertManagerCertificate, Namespace: s.ns, Labels: labels},
		Spec: cmapi.CertificateSpec{
			IsCA:           true,
			CommonName:     ca.DefaultIntermediateCommonName,
			Subject:        &cmapi.X509Subject{Organizations: []string{ca.DefaultTrustDomain}},
			Duration:       duration,
			RenewBefore:    renew,
			SecretName:     CertManagerSecret,
			SecretTemplate: &cmapi.CertificateSecretTemplate{Labels: labels},
			IssuerRef:      cmmeta.IssuerReference{Name: cm.IssuerRef.Name, Kind: cm.IssuerRef.Kind, Group: cm.IssuerRef.Group},
			PrivateKey: &cmapi.CertificatePrivateKey{
				RotationPolicy: cmapi.RotationPolicyAlways,
				Algorithm:      alg,
				Size:           size,
				Encoding:       cmapi.PKCS8,
			},
			Usages: []cmapi.KeyUsage{cmapi.UsageCertSign, cmapi.UsageCRLSign, cmapi.UsageDigitalSignature},
		},
	}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(c)
	if err != nil {
		t.Fatal(err)
	}
	delete(obj, "status")
	unstructured.RemoveNestedField(obj, "metadata", "creationTimestamp")
	u := &unstructured.Unstructured{Object: obj}
	u.SetOwnerReferences([]metav1.OwnerReference{ownerRef(s.mcp)})
	return u
}
