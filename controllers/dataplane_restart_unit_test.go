package controllers

import (
	"context"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/dataplane"
)

// readerCache is a restart cache that reads from a fake client: the restarts read only
// Get and List of it (anything else would panic on the nil interface).
type readerCache struct {
	cache.Cache
	client.Reader
}

func (c readerCache) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	return c.Reader.Get(ctx, key, obj, opts...)
}

func (c readerCache) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	return c.Reader.List(ctx, list, opts...)
}

// TestRestartRetriesAConflictWithoutCountingItRefused protects the restart of a workload
// whose cached copy is older than the apiserver's: the conditional patch is refused with
// a Conflict, which is not a refusal to report but a reason to decide again within a
// second; the next attempt restarts it.
func TestRestartRetriesAConflictWithoutCountingItRefused(t *testing.T) {
	scheme, err := NewScheme()
	if err != nil {
		t.Fatal(err)
	}
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", ResourceVersion: "5", Generation: 1},
		Spec:   appsv1.DeploymentSpec{Replicas: ptr.To[int32](1)},
		Status: appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 1, UpdatedReplicas: 1, AvailableReplicas: 1}}
	conflicts := 1
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(dep).WithInterceptorFuncs(interceptor.Funcs{
		Patch: func(ctx context.Context, cl client.WithWatch, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
			if conflicts > 0 {
				conflicts--
				return apierrors.NewConflict(schema.GroupResource{Group: "apps", Resource: "deployments"}, obj.GetName(), nil)
			}
			return cl.Patch(ctx, obj, patch, opts...)
		}}).Build()
	r := &DataPlaneReconciler{Client: c, workloads: readerCache{Reader: c}, Recorder: events.NewFakeRecorder(10)}
	r.init()
	now := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	mcp := &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName, Generation: 1},
		Spec: meshv1.MeshControlPlaneSpec{Injection: &meshv1.InjectionSpec{Rollout: &meshv1.RolloutSpec{RestartStaleWorkloads: meshv1.RestartAlways}}},
		Status: meshv1.MeshControlPlaneStatus{ObservedGeneration: 1,
			Conditions: []metav1.Condition{{Type: meshv1.ConditionReady, Status: metav1.ConditionTrue}}}}
	s := &dataPlaneScope{mcp: mcp, now: now, stale: []dataplane.StaleWorkload{{
		WorkloadRef: dataplane.WorkloadRef{Kind: "Deployment", Namespace: "shop", Name: "web"}, Pods: 1, Reason: dataplane.VersionChanged, Target: "default/1.31.1/c"}}}

	d, err := r.runRestarts(t.Context(), s)
	if err != nil {
		t.Fatal(err)
	}
	if !d.Wake.Equal(now.Add(time.Second)) {
		t.Errorf("after a conflict: wake %s (%s), want in a second", d.Wake, d.WakeReason)
	}
	if len(r.restarts.refused) != 0 || len(r.restarts.written) != 0 {
		t.Errorf("a conflict was taken for a refusal (%v) or a restart (%v)", r.restarts.refused, r.restarts.written)
	}
	if _, err := r.runRestarts(t.Context(), s); err != nil {
		t.Fatal(err)
	}
	got := &appsv1.Deployment{}
	if err := c.Get(t.Context(), client.ObjectKeyFromObject(dep), got); err != nil {
		t.Fatal(err)
	}
	if got.Annotations[dataplane.RestartedForAnnotation] != "default/1.31.1/c" || got.Spec.Template.Annotations[dataplane.RestartedAtAnnotation] == "" {
		t.Errorf("the second attempt did not restart it: %v, template %v", got.Annotations, got.Spec.Template.Annotations)
	}
}
