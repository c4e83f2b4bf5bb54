package controllers

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/event"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
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

// TestMeshControlPlaneUpdatesThatReconcile protects specOrLifecycleChanged: status writes
// (the data plane's come as often as once a second) never start a render-and-apply of the
// control plane, while every change the install acts on does.
func TestMeshControlPlaneUpdatesThatReconcile(t *testing.T) {
	base := func() *meshv1.MeshControlPlane {
		m := &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName, Generation: 3, ResourceVersion: "10",
			Finalizers: []string{Finalizer}}}
		return m
	}
	now := metav1.Now()
	tests := map[string]struct {
		change func(*meshv1.MeshControlPlane)
		want   bool
	}{
		"a status write":          {func(m *meshv1.MeshControlPlane) { m.ResourceVersion = "11"; m.Status.Version = "1.31.1" }, false},
		"a spec change":           {func(m *meshv1.MeshControlPlane) { m.Generation = 4 }, true},
		"the finalizer removed":   {func(m *meshv1.MeshControlPlane) { m.Finalizers = nil }, true},
		"deletion started":        {func(m *meshv1.MeshControlPlane) { m.DeletionTimestamp = &now }, true},
		"an annotation (a nudge)": {func(m *meshv1.MeshControlPlane) { m.Annotations = map[string]string{"x": "y"} }, true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			old, upd := base(), base()
			tc.change(upd)
			if got := specOrLifecycleChanged.Update(event.UpdateEvent{ObjectOld: old, ObjectNew: upd}); got != tc.want {
				t.Errorf("reconciles = %t, want %t", got, tc.want)
			}
		})
	}
	if !specOrLifecycleChanged.Create(event.CreateEvent{Object: base()}) {
		t.Error("a new MeshControlPlane does not reconcile")
	}
}
