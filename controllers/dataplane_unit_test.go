package controllers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/dataplane"
)

// TestWorkloadOwner protects the ReplicaSet ──► Deployment rule without a ReplicaSet cache:
// only a ReplicaSet named "<deployment>-<the pod's pod-template-hash>" stands for a
// Deployment.
func TestWorkloadOwner(t *testing.T) {
	owner := func(apiVersion, kind, name string) []metav1.OwnerReference {
		return []metav1.OwnerReference{{APIVersion: apiVersion, Kind: kind, Name: name, Controller: ptr.To(true)}}
	}
	for name, tc := range map[string]struct {
		owners           []metav1.OwnerReference
		hash             string
		wantKind, wantNm string
	}{
		"deployment's replicaset":       {owner("apps/v1", "ReplicaSet", "web-7f9c6b5d8"), "7f9c6b5d8", "Deployment", "web"},
		"dashes in the deployment name": {owner("apps/v1", "ReplicaSet", "my-web-app-7f9c6b5d8"), "7f9c6b5d8", "Deployment", "my-web-app"},
		"hash does not match the name":  {owner("apps/v1", "ReplicaSet", "web-7f9c6b5d8"), "abc", "ReplicaSet", "web-7f9c6b5d8"},
		"no hash label":                 {owner("apps/v1", "ReplicaSet", "web-7f9c6b5d8"), "", "ReplicaSet", "web-7f9c6b5d8"},
		"name is only the hash":         {owner("apps/v1", "ReplicaSet", "-7f9c6b5d8"), "7f9c6b5d8", "ReplicaSet", "-7f9c6b5d8"},
		"another group's ReplicaSet":    {owner("example.com/v1", "ReplicaSet", "web-7f9c6b5d8"), "7f9c6b5d8", "ReplicaSet", "web-7f9c6b5d8"},
		"statefulset":                   {owner("apps/v1", "StatefulSet", "db"), "", "StatefulSet", "db"},
		"no controller":                 {[]metav1.OwnerReference{{APIVersion: "v1", Kind: "ConfigMap", Name: "x"}}, "", "", ""},
		"bare pod":                      {nil, "", "", ""},
	} {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "p", OwnerReferences: tc.owners}}
		if tc.hash != "" {
			p.Labels = map[string]string{podTemplateHashLabel: tc.hash}
		}
		if k, n := workloadOwner(p); k != tc.wantKind || n != tc.wantNm {
			t.Errorf("%s: owner %s %q, want %s %q", name, k, n, tc.wantKind, tc.wantNm)
		}
	}
}

// TestDataPlaneStatusWritesAtMostOncePerSecond protects the API server under pod churn:
// however many pod events arrive, status.injection is written at most once per second,
// and the last change is still written (the reconcile asks to be called back when the
// second is over, so no further event is needed).
func TestDataPlaneStatusWritesAtMostOncePerSecond(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC))
	var writes []time.Time
	c := statusRecordingClient(t, func() { writes = append(writes, clk.Now()) })
	r := &DataPlaneReconciler{Client: c, Clock: clk}
	r.init()
	ctx := t.Context()
	reconcileAt := func() ctrl.Result {
		t.Helper()
		res, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Name: meshv1.SingletonName}})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	r.counts.SetNamespace("shop", map[string]string{"istio-injection": "enabled"})

	reconcileAt()
	if len(writes) != 1 {
		t.Fatalf("%d writes for the first status, want 1", len(writes))
	}
	// 50 pods arrive, one every 100ms for 5s, each followed by a reconcile as its event enqueues one.
	const pods = 50
	addPod := func(i int) time.Duration {
		clk.Step(100 * time.Millisecond)
		r.podChanged(nil, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: fmt.Sprintf("p%d", i)}})
		return reconcileAt().RequeueAfter
	}
	for i := range pods {
		addPod(i)
	}
	for i := 1; i < len(writes); i++ {
		if gap := writes[i].Sub(writes[i-1]); gap < time.Second {
			t.Errorf("writes %d and %d are %s apart, want at least 1s", i-1, i, gap)
		}
	}
	// 5s of churn: a write at most every second, and at least every 1.1s (the interval, and
	// the 100ms until the next event).
	if n := len(writes); n < 5 || n > 6 {
		t.Errorf("%d writes in 5s of churn, want 5 or 6", n)
	}
	// The last pod, 100ms after a write, is written once the second is over, without
	// another event.
	n := len(writes)
	lastRequeue := addPod(pods)
	if len(writes) != n {
		t.Fatalf("a write %s after the last one", writes[n].Sub(writes[n-1]))
	}
	if lastRequeue <= 0 || lastRequeue > time.Second {
		t.Fatalf("after the last event the reconcile asks to come back in %s, want within 1s", lastRequeue)
	}
	clk.Step(lastRequeue)
	reconcileAt()
	got := &meshv1.MeshControlPlane{}
	if err := c.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, got); err != nil {
		t.Fatal(err)
	}
	if inj := got.Status.Injection; inj == nil || inj.UninjectedPods != pods+1 {
		t.Fatalf("status.injection %+v after the churn, want %d uninjected pods", inj, pods+1)
	}
	// Nothing changed: no write, however long after.
	n = len(writes)
	clk.Step(time.Minute)
	if res := reconcileAt(); len(writes) != n || !res.IsZero() {
		t.Errorf("an unchanged status was written again (%d writes, result %+v)", len(writes)-n, res)
	}
}

// statusRecordingClient is a fake cluster holding the MeshControlPlane, whose status
// applies call onWrite and then store the applied status fields (the fake client's own
// server-side apply does not know the CRD's schema).
func statusRecordingClient(t *testing.T, onWrite func()) client.Client {
	t.Helper()
	scheme, err := NewScheme()
	if err != nil {
		t.Fatal(err)
	}
	mcp := &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName, Generation: 1, UID: "u1"}}
	return fake.NewClientBuilder().WithScheme(scheme).WithObjects(mcp).WithStatusSubresource(mcp).
		WithInterceptorFuncs(interceptor.Funcs{SubResourceApply: func(ctx context.Context, c client.Client, sub string, obj runtime.ApplyConfiguration, _ ...client.SubResourceApplyOption) error {
			raw, err := json.Marshal(obj)
			if err != nil {
				return err
			}
			var applied meshv1.MeshControlPlane
			if err := json.Unmarshal(raw, &applied); err != nil {
				return err
			}
			if meta.FindStatusCondition(applied.Status.Conditions, meshv1.ConditionSidecarsCurrent) != nil {
				onWrite() // the data plane's status; the upgrade's (activeRevision) is not counted
			}
			cur := &meshv1.MeshControlPlane{}
			if err := c.Get(ctx, client.ObjectKey{Name: meshv1.SingletonName}, cur); err != nil {
				return err
			}
			if applied.Status.ActiveRevision != "" {
				cur.Status.ActiveRevision, cur.Status.Upgrade = applied.Status.ActiveRevision, applied.Status.Upgrade
			} else {
				cur.Status.Injection, cur.Status.Revisions = applied.Status.Injection, applied.Status.Revisions
			}
			for _, cond := range applied.Status.Conditions {
				meta.SetStatusCondition(&cur.Status.Conditions, cond)
			}
			return c.Status().Update(ctx, cur)
		}}).Build()
}

// TestSidecarsCurrent protects what the condition says in each case: True with no stale
// pod; False naming the most important stale reason, with counts and the first workload;
// Unknown, with the spec's error, when the spec cannot be planned.
func TestSidecarsCurrent(t *testing.T) {
	web := dataplane.StaleWorkload{WorkloadRef: dataplane.WorkloadRef{Kind: "Deployment", Namespace: "shop", Name: "web"}, Pods: 2, Reason: dataplane.VersionChanged}
	cart := dataplane.StaleWorkload{WorkloadRef: dataplane.WorkloadRef{Kind: "Deployment", Namespace: "shop", Name: "cart"}, Pods: 1, Reason: dataplane.ProxyConfigChanged}
	for name, tc := range map[string]struct {
		scope       dataPlaneScope
		status      metav1.ConditionStatus
		reason      string
		msg         []string
		wantCounted bool
	}{
		"current": {dataPlaneScope{hasDesired: true, sum: dataplane.Summary{InjectedPods: 4}},
			metav1.ConditionTrue, meshv1.ReasonSidecarsCurrent, []string{"all 4 running sidecars"}, true},
		"stale": {dataPlaneScope{hasDesired: true, sum: dataplane.Summary{InjectedPods: 4, StalePods: 3}, stale: []dataplane.StaleWorkload{cart, web}},
			metav1.ConditionFalse, string(dataplane.VersionChanged), []string{"3 of 4 running sidecars are stale, in 2 workloads", "Deployment shop/web has 2 stale pods"}, true},
		"spec cannot be planned": {dataPlaneScope{planErr: errors.New("spec.version: 0.1.0 is not supported")},
			metav1.ConditionUnknown, meshv1.ReasonInvalidSpec, []string{"spec.version: 0.1.0 is not supported"}, false},
	} {
		s := tc.scope
		s.mcp = &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName, Generation: 2}}
		s.summarize()
		c := sidecarsCurrent(s.mcp)
		if c == nil || c.Status != tc.status || c.Reason != tc.reason || c.ObservedGeneration != 2 {
			t.Errorf("%s: condition %+v, want %s/%s at generation 2", name, c, tc.status, tc.reason)
			continue
		}
		for _, m := range tc.msg {
			if !strings.Contains(c.Message, m) {
				t.Errorf("%s: message %q does not say %q", name, c.Message, m)
			}
		}
		if got := s.mcp.Status.Injection != nil; got != tc.wantCounted {
			t.Errorf("%s: status.injection set: %v, want %v", name, got, tc.wantCounted)
		}
	}
}
