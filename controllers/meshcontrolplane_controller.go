// Package controllers holds Capstan's reconcilers. They are thin: fetch, call internal/,
// apply, report.
package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/apply"
	"github.com/capstan-mesh/capstan/internal/render"
)

// Finalizer holds a MeshControlPlane until Capstan has removed what it installed.
const Finalizer = "mesh.capstan.dev/cleanup"

// RBAC for the objects Istio's charts render (render.Kinds) and for the API itself. Each
// resource is named; there is no wildcard.
//
// +kubebuilder:rbac:groups=mesh.capstan.dev,resources=meshcontrolplanes,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=mesh.capstan.dev,resources=meshcontrolplanes/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=mesh.capstan.dev,resources=meshcontrolplanes/finalizers,verbs=update
// +kubebuilder:rbac:groups=apiextensions.k8s.io,resources=customresourcedefinitions,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=namespaces;serviceaccounts;configmaps;services,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=autoscaling,resources=horizontalpodautoscalers,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=networking.k8s.io,resources=networkpolicies,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=clusterroles;clusterrolebindings;roles;rolebindings,verbs=get;list;watch;create;update;patch;delete;bind;escalate
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingwebhookconfigurations;validatingwebhookconfigurations;validatingadmissionpolicies;validatingadmissionpolicybindings,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

// MeshControlPlaneReconciler installs the control plane a MeshControlPlane declares and
// keeps it as declared.
type MeshControlPlaneReconciler struct {
	client.Client
	// APIReader reads past the cache, for objects Capstan does not own (and so does not
	// cache), such as a control-plane namespace the user created.
	APIReader client.Reader
	Recorder  events.EventRecorder
	// KubeVersion is the server's version, given to the charts as helm install would.
	KubeVersion string

	// OperatorNamespace is where the operator runs: never a control-plane namespace.
	// Empty when unknown.
	OperatorNamespace string
	// Clock tells when a revision's grace period ends; the real clock when nil.
	Clock clock.PassiveClock

	// crdGenerations remembers the generation of each CRD as Capstan last applied it.
	// CRDs are cached as metadata only, so an edit to one shows as a new generation.
	crdGenerations sync.Map
}

// SetupWithManager registers the reconciler. Every kind Capstan renders is watched, as
// Capstan's objects only (see CacheByObject), so a change to any of them reconciles the
// one MeshControlPlane; there is no periodic re-apply.
func (r *MeshControlPlaneReconciler) SetupWithManager(mgr ctrl.Manager) error {
	b := ctrl.NewControllerManagedBy(mgr).
		Named("meshcontrolplane").
		For(&meshv1.MeshControlPlane{}, builder.WithPredicates(specOrLifecycleChanged))
	owned := predicate.NewPredicateFuncs(func(o client.Object) bool {
		return apply.Owned(o.GetLabels())
	})
	// The CA controller's cacerts Secret gates istiod's first start (see awaitCA).
	b = b.Watches(&corev1.Secret{}, toSingleton, builder.WithPredicates(owned))
	for _, k := range render.Kinds {
		switch {
		case isCRD(k):
			b = b.WatchesMetadata(crdMetadata(), toSingleton, builder.WithPredicates(owned, crdDriftVisible))
		case metadataOnly(k):
			b = b.WatchesMetadata(metadataOf(k.GroupVersionKind), toSingleton, builder.WithPredicates(owned))
		default:
			b = b.Watches(watchedObject(k), toSingleton, builder.WithPredicates(owned))
		}
	}
	return b.Complete(r)
}

// specOrLifecycleChanged passes the MeshControlPlane updates the install acts on: a new
// generation (the spec), labels or annotations, finalizers, or the start of its deletion.
// Status writes pass no more: each of Capstan's controllers writes its own status block
// (the data plane's as often as once a second under pod churn), and none of them changes
// what the install applies.
var specOrLifecycleChanged = predicate.Or(
	predicate.GenerationChangedPredicate{}, predicate.LabelChangedPredicate{}, predicate.AnnotationChangedPredicate{},
	predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		return !slices.Equal(e.ObjectOld.GetFinalizers(), e.ObjectNew.GetFinalizers()) ||
			e.ObjectOld.GetDeletionTimestamp().IsZero() != e.ObjectNew.GetDeletionTimestamp().IsZero() ||
			revisionsChanged(e.ObjectOld, e.ObjectNew)
	}},
)

// revisionsChanged says whether the status the install plans revisions from changed: the
// active revision and the upgrade's phase (where the tags point), or a revision's use
// (which decides when it is removed). The data-plane controller writes them.
func revisionsChanged(old, updated client.Object) bool {
	o, ok1 := old.(*meshv1.MeshControlPlane)
	n, ok2 := updated.(*meshv1.MeshControlPlane)
	if !ok1 || !ok2 {
		return false
	}
	phase := func(m *meshv1.MeshControlPlane) string {
		if m.Status.Upgrade == nil {
			return ""
		}
		return m.Status.Upgrade.Phase + "/" + m.Status.Upgrade.To
	}
	use := func(m *meshv1.MeshControlPlane) string {
		var b strings.Builder
		for _, r := range m.Status.Revisions {
			fmt.Fprintf(&b, "%s=%s@%v;", r.Name, r.InUse, r.UnusedSince)
		}
		return b.String()
	}
	return o.Status.ActiveRevision != n.Status.ActiveRevision || phase(o) != phase(n) || use(o) != use(n)
}

// crdDriftVisible passes the CRD updates in which Capstan can see drift: a new generation
// (the spec was edited), or changed labels or annotations (see drifted). Everything else
// is status, and the apiserver itself writes the status of every new CRD two or three
// times (names accepted, established): Istio's fifteen CRDs would each time reconcile
// the whole control plane for nothing. Creations and deletions always pass.
var crdDriftVisible = predicate.Or(predicate.GenerationChangedPredicate{}, predicate.LabelChangedPredicate{}, predicate.AnnotationChangedPredicate{})

// watchedObject is the empty object of a kind that Capstan's cache holds it as.
func watchedObject(k render.Kind) client.Object {
	if metadataOnly(k) {
		return metadataOf(k.GroupVersionKind)
	}
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(k.GroupVersionKind)
	return u
}

// Reconcile runs the phases of the MeshControlPlane's life and writes its status once, at
// the end.
func (r *MeshControlPlaneReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	mcp := &meshv1.MeshControlPlane{}
	if err := r.Get(ctx, req.NamespacedName, mcp); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	s := &scope{mcp: mcp, before: mcp.DeepCopy()}
	phases := r.reconcileNormal()
	if !mcp.DeletionTimestamp.IsZero() {
		phases = r.reconcileDelete()
	}
	res, err := r.runPhases(ctx, s, phases)
	if s.released {
		return res, err
	}
	if err == nil && res.IsZero() && !s.wake.IsZero() {
		res.RequeueAfter = max(s.wake.Sub(r.clock().Now()), time.Second) // a revision's grace period ends
	}
	r.summarize(ctx, s)
	if serr := r.patchStatus(ctx, s); serr != nil && err == nil {
		err = serr
	}
	return res, err
}

// runPhases runs phases in order until one fails, stops the reconcile or asks for a
// requeue. An error a phase returns without reporting it becomes the failure, with the
// phase's reason: every error reaches the Degraded condition.
func (r *MeshControlPlaneReconciler) runPhases(ctx context.Context, s *scope, phases []phase) (ctrl.Result, error) {
	for _, p := range phases {
		res, err := p.run(ctx, s)
		if err != nil && s.failure == nil {
			s.fail(p.reason, err, false)
		}
		if s.failure != nil {
			s.failure.phase = p.name
		}
		if err != nil || s.stop {
			if s.failure != nil {
				log.FromContext(ctx).V(1).Info("phase failed", "phase", p.name, "reason", s.failure.reason)
			}
			return res, err
		}
		if !res.IsZero() {
			return res, nil
		}
	}
	s.completed = true
	return ctrl.Result{}, nil
}

// reconcileNormal is the life of a MeshControlPlane: read what is installed, plan and
// render every unit, then apply, prune and observe.
func (r *MeshControlPlaneReconciler) reconcileNormal() []phase {
	return []phase{
		{"ensureFinalizer", meshv1.ReasonFinalizerFailed, r.ensureFinalizer},
		{"inventory", meshv1.ReasonInventoryFailed, r.inventory},
		{"plan", meshv1.ReasonRenderFailed, r.plan},
		{"ensureNamespace", meshv1.ReasonNamespaceFailed, r.ensureNamespace},
		{"awaitCA", meshv1.ReasonCACheckFailed, r.awaitCA},
		{"applyObjects", meshv1.ReasonApplyFailed, r.applyObjects},
		{"prune", meshv1.ReasonPruneFailed, r.prune},
		{"observe", meshv1.ReasonObserveFailed, r.observe},
	}
}

func (r *MeshControlPlaneReconciler) reconcileDelete() []phase {
	return []phase{
		{"removeInstalled", meshv1.ReasonUninstallFailed, r.removeInstalled},
		{"releaseFinalizer", meshv1.ReasonFinalizerFailed, r.releaseFinalizer},
	}
}

// patchStatus writes the status when, and only when, it changed. It applies only the fields
// this controller owns (server-side apply), so the CA controller's status.ca and conditions
// are never overwritten.
func (r *MeshControlPlaneReconciler) patchStatus(ctx context.Context, s *scope) error {
	if equality.Semantic.DeepEqual(s.before.Status, s.mcp.Status) {
		return nil
	}
	log.FromContext(ctx).V(1).Info("writing status")
	st := s.mcp.Status
	fields := map[string]any{"observedGeneration": st.ObservedGeneration}
	var conds []metav1.Condition
	for _, c := range st.Conditions {
		if c.Type == meshv1.ConditionReady || c.Type == meshv1.ConditionProgressing || c.Type == meshv1.ConditionDegraded {
			conds = append(conds, c)
		}
	}
	if len(conds) > 0 {
		fields["conditions"] = conds
	}
	if st.Version != "" {
		fields["version"] = st.Version
	}
	if len(st.Components) > 0 {
		fields["components"] = st.Components
	}
	// The install's fields of status.revisions: as observed, or else as they were, so that
	// a reconcile that stopped before observe keeps them.
	var revs []map[string]any
	for _, r := range st.Revisions {
		if r.Version != "" || r.Ready != nil {
			rev := map[string]any{"name": r.Name, "version": r.Version, "ready": r.Ready}
			if len(r.Tags) > 0 {
				rev["tags"] = r.Tags
			}
			revs = append(revs, rev)
		}
	}
	if len(revs) > 0 {
		fields["revisions"] = revs
	}
	return client.IgnoreNotFound(applyStatusFields(ctx, r.Client, s.mcp, apply.FieldManager, fields))
}

func (r *MeshControlPlaneReconciler) clock() clock.PassiveClock {
	if r.Clock == nil {
		return clock.RealClock{}
	}
	return r.Clock
}

func isCRD(k render.Kind) bool {
	return k.Group == apiextensionsv1.GroupName && k.Kind == "CustomResourceDefinition"
}

// metadataOnly says whether Capstan caches a kind as metadata only: CRDs, whose schemas are
// large and whose drift shows in their generation, and Namespaces, which are cached all of
// them (not only Capstan's) and of which Capstan reads only names and labels.
func metadataOnly(k render.Kind) bool {
	return isCRD(k) || k.GroupVersionKind == namespaceGVK
}

var namespaceGVK = corev1.SchemeGroupVersion.WithKind("Namespace")

func crdMetadata() *metav1.PartialObjectMetadata {
	return metadataOf(apiextensionsv1.SchemeGroupVersion.WithKind("CustomResourceDefinition"))
}

// metadataOf is an empty metadata-only object of a kind, for the metadata cache.
func metadataOf(gvk schema.GroupVersionKind) *metav1.PartialObjectMetadata {
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(gvk)
	return m
}
