package controllers

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/event"
)

// TestCRDUpdatesThatReconcile protects crdDriftVisible: the apiserver's own status writes
// to a new CRD do not reconcile the control plane, and every change drift shows in does.
func TestCRDUpdatesThatReconcile(t *testing.T) {
	base := func() *metav1.PartialObjectMetadata {
		m := crdMetadata()
		m.SetName("destinationrules.networking.istio.io")
		m.SetGeneration(1)
		m.SetResourceVersion("10")
		m.SetLabels(map[string]string{"app.kubernetes.io/managed-by": "capstan"})
		m.SetAnnotations(map[string]string{"capstan.dev/config-hash": "a"})
		return m
	}
	tests := map[string]struct {
		change func(*metav1.PartialObjectMetadata)
		want   bool
	}{
		"status only (names accepted, established)": {func(m *metav1.PartialObjectMetadata) { m.SetResourceVersion("11") }, false},
		"spec edited (a new generation)":            {func(m *metav1.PartialObjectMetadata) { m.SetGeneration(2) }, true},
		"a label removed":                           {func(m *metav1.PartialObjectMetadata) { m.SetLabels(nil) }, true},
		"the configuration hash changed": {func(m *metav1.PartialObjectMetadata) {
			m.SetAnnotations(map[string]string{"capstan.dev/config-hash": "b"})
		}, true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			old, upd := base(), base()
			tc.change(upd)
			if got := crdDriftVisible.Update(event.UpdateEvent{ObjectOld: old, ObjectNew: upd}); got != tc.want {
				t.Errorf("reconciles = %t, want %t", got, tc.want)
			}
		})
	}
	if !crdDriftVisible.Delete(event.DeleteEvent{Object: base()}) {
		t.Error("a deleted CRD does not reconcile")
	}
}
