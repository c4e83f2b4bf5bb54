package controllers

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
)

// TestCAExpiryMetric protects capstan_ca_expiry_seconds: seconds until the CA istiod signs
// with expires, computed at scrape time so it keeps falling between reconciles.
func TestCAExpiryMetric(t *testing.T) {
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	m := NewCAMetrics(func() time.Time { return now })
	if n := testutil.CollectAndCount(m); n != 0 {
		t.Fatalf("%d series before the CA is known, want none", n)
	}
	m.observe(&meshv1.CAStatus{
		RootExpiry:         &metav1.Time{Time: now.Add(1000 * time.Hour)},
		IntermediateExpiry: &metav1.Time{Time: now.Add(10 * time.Hour)},
	})
	now = now.Add(time.Hour)
	want := `
# HELP capstan_ca_expiry_seconds Seconds until the mesh CA certificate expires (negative once expired), by certificate: root or intermediate.
# TYPE capstan_ca_expiry_seconds gauge
capstan_ca_expiry_seconds{certificate="intermediate"} 32400
capstan_ca_expiry_seconds{certificate="root"} 3.5964e+06
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

// TestCARefusesANamespaceWithoutSecretAccess protects least privilege: an operator granted
// Secrets only in some namespaces says which, and how to grant another, instead of failing
// on every request.
func TestCARefusesANamespaceWithoutSecretAccess(t *testing.T) {
	r := &CAReconciler{SecretNamespaces: []string{"istio-system"}}
	m := &meshv1.MeshControlPlane{Spec: meshv1.MeshControlPlaneSpec{Namespace: "mesh-prod"}}
	s := newCAScope(m, time.Now())
	if _, err := r.checkNamespace(t.Context(), s); err != nil {
		t.Fatal(err)
	}
	if !s.stop || s.problem == nil || s.problem.reason != meshv1.ReasonCAForbidden {
		t.Fatalf("problem %+v, want %s", s.problem, meshv1.ReasonCAForbidden)
	}
	for _, want := range []string{"spec.namespace", "mesh-prod", "--secret-namespaces=mesh-prod"} {
		if !strings.Contains(s.problem.message, want) {
			t.Errorf("message %q does not mention %q", s.problem.message, want)
		}
	}
}
