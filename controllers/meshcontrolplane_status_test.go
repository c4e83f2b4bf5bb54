package controllers

import (
	"context"
	"errors"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/apply"
	"github.com/capstan-mesh/capstan/internal/plan"
	"github.com/capstan-mesh/capstan/internal/render"
)

// The phases of a reconcile meet the status only through runPhases and summarize. These
// tests replace each real phase, in turn, with one that fails, and check what the status
// then says. The failures are injected, and the cluster is controller-runtime's fake
// client: a real apiserver cannot be made to fail one chosen step on demand (the envtest
// suite covers the phases' real failures that can be provoked: a bad spec, a rejected
// object).

// servingIstiod is an istiod Deployment of the install with every replica available.
func servingIstiod() *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "istiod", Generation: 1,
			Labels: apply.Inventory{Component: "istiod", Revision: apply.DefaultRevision, Writer: apply.WriterInstall}.Labels()},
		Spec:   appsv1.DeploymentSpec{Replicas: ptr.To[int32](1)},
		Status: appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1},
	}
}

// testReconciler is a reconciler over a fake cluster holding objs; listErr, when set,
// fails every List (and so observe).
func testReconciler(t *testing.T, listErr error, objs ...client.Object) (*MeshControlPlaneReconciler, *events.FakeRecorder) {
	t.Helper()
	scheme, err := NewScheme()
	if err != nil {
		t.Fatal(err)
	}
	b := fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...)
	if listErr != nil {
		b = b.WithInterceptorFuncs(interceptor.Funcs{List: func(context.Context, client.WithWatch, client.ObjectList, ...client.ListOption) error {
			return listErr
		}})
	}
	rec := events.NewFakeRecorder(10)
	return &MeshControlPlaneReconciler{Client: b.Build(), Recorder: rec}, rec
}

// installedMCP is a MeshControlPlane at generation 3 whose status says generation 2 was
// installed and ready.
func installedMCP() *meshv1.MeshControlPlane {
	m := &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName, Generation: 3}}
	m.Status = meshv1.MeshControlPlaneStatus{ObservedGeneration: 2, Version: "1.31.1"}
	return m
}

// failingAt is the real phase list with the phase named failing replaced by one that
// returns err, and every phase before it by one that does nothing.
func failingAt(r *MeshControlPlaneReconciler, failing string, err error) []phase {
	var out []phase
	for _, p := range r.reconcileNormal() {
		p := p
		if p.name == failing {
			p.run = func(context.Context, *scope) (ctrl.Result, error) { return ctrl.Result{}, err }
			out = append(out, p)
			return out
		}
		p.run = func(context.Context, *scope) (ctrl.Result, error) { return ctrl.Result{}, nil }
		out = append(out, p)
	}
	return out
}

// TestEveryPhaseErrorReachesStatus protects the rule that no error is reported as success:
// an error from any phase of the install becomes Degraded=True with that phase's reason
// and the error's text (which names the object), a Warning event, and Ready=False, unless
// the control plane applied before is observed serving, when Ready stays True beside
// Degraded. observedGeneration does not move: the generation was not reconciled.
func TestEveryPhaseErrorReachesStatus(t *testing.T) {
	probe := &MeshControlPlaneReconciler{}
	for _, p := range probe.reconcileNormal() {
		for _, serving := range []bool{false, true} {
			name := p.name + "/nothing serving"
			if serving {
				name = p.name + "/the last state serving"
			}
			t.Run(name, func(t *testing.T) {
				var objs []client.Object
				if serving {
					objs = append(objs, servingIstiod())
				}
				r, rec := testReconciler(t, nil, objs...)
				mcp := installedMCP()
				s := &scope{mcp: mcp, before: mcp.DeepCopy()}
				boom := errors.New("boom: Deployment istio-system/istiod")
				if _, err := r.runPhases(t.Context(), s, failingAt(r, p.name, boom)); !errors.Is(err, boom) {
					t.Fatalf("runPhases returned %v, want the phase's error", err)
				}
				r.summarize(t.Context(), s)

				st := mcp.Status
				deg := meta.FindStatusCondition(st.Conditions, meshv1.ConditionDegraded)
				if deg == nil || deg.Status != metav1.ConditionTrue || deg.Reason != p.reason || !strings.Contains(deg.Message, "Deployment istio-system/istiod") {
					t.Errorf("Degraded = %+v, want True, reason %s, naming the object", deg, p.reason)
				}
				ready := meta.FindStatusCondition(st.Conditions, meshv1.ConditionReady)
				wantReady, wantReason := metav1.ConditionFalse, p.reason
				if serving && p.name != "observe" {
					wantReady, wantReason = metav1.ConditionTrue, meshv1.ReasonServingPrevious
				}
				if ready == nil || ready.Status != wantReady || ready.Reason != wantReason {
					t.Errorf("Ready = %+v, want %s (%s)", ready, wantReady, wantReason)
				}
				if st.ObservedGeneration != 2 {
					t.Errorf("observedGeneration = %d after a failed reconcile of generation 3, want 2", st.ObservedGeneration)
				}
				if st.Version != "1.31.1" {
					t.Errorf("status.version = %q, want the last installed 1.31.1", st.Version)
				}
				select {
				case e := <-rec.Events:
					if !strings.HasPrefix(e, "Warning "+p.reason) {
						t.Errorf("event %q, want a Warning with reason %s", e, p.reason)
					}
				default:
					t.Error("no event")
				}
			})
		}
	}
}

// TestObserveFailureIsNotServing: when the control plane cannot be observed at all (the
// cache cannot list Deployments), Ready does not claim it serves.
func TestObserveFailureIsNotServing(t *testing.T) {
	r, _ := testReconciler(t, errors.New("cache unavailable"), servingIstiod())
	mcp := installedMCP()
	s := &scope{mcp: mcp, before: mcp.DeepCopy()}
	_, _ = r.runPhases(t.Context(), s, failingAt(r, "applyObjects", errors.New("applying Deployment istio-system/istiod: timeout")))
	r.summarize(t.Context(), s)
	if c := meta.FindStatusCondition(mcp.Status.Conditions, meshv1.ConditionReady); c == nil || c.Status != metav1.ConditionFalse {
		t.Errorf("Ready = %+v, want False when nothing could be observed", c)
	}
}

// TestStatusOfTerminalAndCompleteReconciles covers the generation bookkeeping and the
// first install: a spec error is a decision about this generation (observedGeneration
// moves), and a reconcile that completes with nothing installed yet is not Ready.
func TestStatusOfTerminalAndCompleteReconciles(t *testing.T) {
	t.Run("a spec error moves observedGeneration", func(t *testing.T) {
		r, _ := testReconciler(t, nil)
		mcp := installedMCP()
		s := &scope{mcp: mcp, before: mcp.DeepCopy()}
		phases := []phase{{"plan", meshv1.ReasonRenderFailed, func(_ context.Context, s *scope) (ctrl.Result, error) {
			s.fail(meshv1.ReasonInvalidSpec, errors.New("spec.version: 1.99.0 is not supported"), true)
			return ctrl.Result{}, nil
		}}}
		if _, err := r.runPhases(t.Context(), s, phases); err != nil {
			t.Fatal(err)
		}
		r.summarize(t.Context(), s)
		if mcp.Status.ObservedGeneration != 3 {
			t.Errorf("observedGeneration = %d, want 3", mcp.Status.ObservedGeneration)
		}
		if c := meta.FindStatusCondition(mcp.Status.Conditions, meshv1.ConditionDegraded); c == nil || c.Reason != meshv1.ReasonInvalidSpec {
			t.Errorf("Degraded = %+v", c)
		}
	})
	t.Run("a first reconcile with nothing installed is not Ready", func(t *testing.T) {
		r, _ := testReconciler(t, nil)
		mcp := &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName, Generation: 1}}
		s := &scope{mcp: mcp, before: mcp.DeepCopy(), plan: plan.Plan{Version: "1.31.1"}}
		noop := func(context.Context, *scope) (ctrl.Result, error) { return ctrl.Result{}, nil }
		phases := []phase{{"plan", meshv1.ReasonRenderFailed, noop}, {"observe", meshv1.ReasonObserveFailed, r.observe}}
		if _, err := r.runPhases(t.Context(), s, phases); err != nil {
			t.Fatal(err)
		}
		r.summarize(t.Context(), s)
		if c := meta.FindStatusCondition(mcp.Status.Conditions, meshv1.ConditionReady); c == nil || c.Status != metav1.ConditionFalse {
			t.Errorf("Ready = %+v with no component installed, want False", c)
		}
		if mcp.Status.ObservedGeneration != 1 || mcp.Status.Version != "1.31.1" {
			t.Errorf("status %+v, want generation 1 reconciled at 1.31.1", mcp.Status)
		}
	})
}

// TestMovedFrom protects the control plane from a spec.namespace edit stored before
// admission refused it: the install's objects, or the namespace Capstan created, in
// another namespace stop the reconcile before anything is applied or pruned.
func TestMovedFrom(t *testing.T) {
	install := apply.Inventory{Component: "istiod", Revision: apply.DefaultRevision, Writer: apply.WriterInstall}
	nsInv := apply.Inventory{Component: apply.NamespaceComponent, Writer: apply.WriterInstall}
	ref := func(kind, ns, name string) apply.Ref {
		r := apply.Ref{GVK: appsv1.SchemeGroupVersion.WithKind(kind)}
		if kind == "Namespace" || kind == "ClusterRole" {
			r.GVK = metav1.SchemeGroupVersion.WithKind(kind)
		}
		r.Namespace, r.Name = ns, name
		return r
	}
	tests := map[string]struct {
		live []apply.Live
		want string
	}{
		"nothing installed":                      {nil, ""},
		"everything in the declared namespace":   {[]apply.Live{{Ref: ref("Deployment", "mesh-two", "istiod"), Inventory: install}, {Ref: ref("Namespace", "", "mesh-two"), Inventory: nsInv}}, ""},
		"istiod runs elsewhere":                  {[]apply.Live{{Ref: ref("Deployment", "istio-system", "istiod"), Inventory: install}}, "istio-system"},
		"the namespace Capstan created is other": {[]apply.Live{{Ref: ref("Namespace", "", "istio-system"), Inventory: nsInv}}, "istio-system"},
		"cluster-scoped objects say nothing":     {[]apply.Live{{Ref: ref("ClusterRole", "", "istiod-clusterrole-istio-system"), Inventory: install}}, ""},
		"another writer's object elsewhere": {[]apply.Live{{Ref: ref("Deployment", "team-a", "x"),
			Inventory: apply.Inventory{Component: "istiod", Writer: "mtls"}}}, ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, moved := movedFrom(tc.live, "mesh-two")
			if got != tc.want || moved != (tc.want != "") {
				t.Errorf("movedFrom = %q, %t; want %q", got, moved, tc.want)
			}
		})
	}
}

// TestCacheDeclaresEveryKind protects the cache's shape: every kind the operator reads
// through its cache is declared on purpose, Capstan's own kinds filtered by its label and
// the user objects the data plane must see whole: namespaces as metadata, pods as metadata
// cut down by a transform, and only those that have not terminated.
func TestCacheDeclaresEveryKind(t *testing.T) {
	scheme, err := NewScheme()
	if err != nil {
		t.Fatal(err)
	}
	by := map[string]string{}
	for obj, cfg := range CacheByObject("istio-system") {
		gvk, err := apiutil.GVKForObject(obj, scheme)
		if err != nil {
			t.Fatal(err)
		}
		by[gvk.Kind] = cfg.Label.String()
		_, metadataOnly := obj.(*metav1.PartialObjectMetadata)
		switch gvk.Kind {
		case "Pod":
			if !metadataOnly || cfg.Transform == nil || cfg.Field == nil ||
				cfg.Field.String() != "status.phase!=Succeeded,status.phase!=Failed" {
				t.Errorf("Pod is cached as %T with transform %v and field selector %v, want metadata only, cut down by a transform, of the pods that have not terminated", obj, cfg.Transform != nil, cfg.Field)
			}
		case "Namespace":
			if !metadataOnly {
				t.Errorf("Namespace is cached as %T, want metadata only", obj)
			}
		}
	}
	owned := ownedSelector.String()
	want := map[string]string{"Namespace": "", "Pod": "", "MeshControlPlane": "", "Secret": owned}
	for _, k := range render.Kinds {
		if _, ok := want[k.Kind]; !ok {
			want[k.Kind] = owned
		}
	}
	for kind, sel := range want {
		got, ok := by[kind]
		if !ok {
			t.Errorf("%s is not declared in the cache", kind)
			continue
		}
		if got != sel {
			t.Errorf("%s is cached by %q, want %q", kind, got, sel)
		}
	}
}

// TestPodCacheKeepsWhatTheDataPlaneReads protects the memory of the pod cache and what the
// data plane reads from it: the identity, the injection labels and annotations and the
// controller reference stay; every other label and annotation, the other owners and the
// managed fields go.
func TestPodCacheKeepsWhatTheDataPlaneReads(t *testing.T) {
	controller := metav1.OwnerReference{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-5d8f", Controller: ptr.To(true)}
	in := &metav1.PartialObjectMetadata{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-1", UID: "u1", ResourceVersion: "7",
			Labels: map[string]string{"app": "web", "istio.io/rev": "canary", "sidecar.istio.io/inject": "true", "pod-template-hash": "5d8f"},
			Annotations: map[string]string{"sidecar.istio.io/status": `{"revision":"default"}`, "capstan.dev/proxy-version": "1.31.1",
				"capstan.dev/proxy-config": "abc", "prometheus.io/scrape": "true", "kubectl.kubernetes.io/default-container": "web"},
			OwnerReferences: []metav1.OwnerReference{{Kind: "Other", Name: "x"}, controller},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}},
	}
	out, err := dataPlanePod(in.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	want := &metav1.PartialObjectMetadata{TypeMeta: in.TypeMeta, ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-1", UID: "u1", ResourceVersion: "7",
		Labels: map[string]string{"istio.io/rev": "canary", "sidecar.istio.io/inject": "true", "pod-template-hash": "5d8f"},
		Annotations: map[string]string{"sidecar.istio.io/status": `{"revision":"default"}`, "capstan.dev/proxy-version": "1.31.1",
			"capstan.dev/proxy-config": "abc"},
		OwnerReferences: []metav1.OwnerReference{controller}}}
	if !equality.Semantic.DeepEqual(out, want) {
		t.Errorf("transformed pod = %+v, want %+v", out, want)
	}
	if kind, name := workloadOwner(out.(*metav1.PartialObjectMetadata)); kind != "Deployment" || name != "web" {
		t.Errorf("owner of the cached pod: %s %s, want Deployment web", kind, name)
	}
	bare, _ := dataPlanePod(&metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Name: "p", Labels: map[string]string{"app": "x"}}})
	if m := bare.(*metav1.PartialObjectMetadata); m.Labels != nil || m.Annotations != nil || m.OwnerReferences != nil {
		t.Errorf("a pod with nothing to keep keeps %+v", m.ObjectMeta)
	}
	tombstone := "not a pod"
	if got, _ := dataPlanePod(tombstone); got != tombstone {
		t.Errorf("a non-pod became %v", got)
	}
}
