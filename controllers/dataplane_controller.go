package controllers

import (
	"context"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/dataplane"
	"github.com/capstan-mesh/capstan/internal/plan"
	"github.com/capstan-mesh/capstan/internal/revision"
)

// DataPlaneFieldManager is the field manager of the data-plane controller's status: it owns
// status.injection and the SidecarsCurrent condition, and nothing else.
const DataPlaneFieldManager = "capstan-dataplane"

// DefaultDataPlaneStatusInterval is the least time between two status writes of the data
// plane: under pod churn the counts change many times a second, and the status follows
// them at most this often.
const DefaultDataPlaneStatusInterval = time.Second

// podTemplateHashLabel is the label the Deployment controller puts on the pods of each
// ReplicaSet it creates, and the suffix of that ReplicaSet's name.
const podTemplateHashLabel = "pod-template-hash"

// RBAC of the data-plane controller: it reads pods, and labels the namespaces
// spec.injection.namespaceSelector selects.
//
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch;patch

// DataPlaneReconciler reports the data plane in status.injection, status.revisions and the
// SidecarsCurrent condition: how many pods carry a sidecar, how many should and do not,
// how many run a stale one, and what needs attention. It writes to the data plane the
// injection label of the namespaces spec.injection.namespaceSelector selects (see
// reconcileInjectionLabels) and, as spec.injection.rollout allows, one restart patch per
// workload with stale sidecars (see runRestarts); it never deletes a pod.
//
// Its counts are fed one event at a time by the pod and namespace informers (a pod event
// costs O(1); nothing ever lists all pods), and its reconcile only turns them into status
// and restarts.
type DataPlaneReconciler struct {
	client.Client
	// Clock is the time source; a fake one in tests.
	Clock clock.PassiveClock
	// StatusInterval is the least time between two status writes;
	// DefaultDataPlaneStatusInterval when zero.
	StatusInterval time.Duration
	// OperatorNamespace is where the operator runs: never labelled for injection.
	OperatorNamespace string
	// Recorder records an Event per batch of restarts, refusal and timeout.
	Recorder events.EventRecorder

	// workloads is the restart cache: every workload and PodDisruptionBudget, cut down
	// (see restartCacheObjects).
	workloads cache.Cache

	// mu guards counts, which the informers' goroutines feed and the reconcile reads.
	mu     sync.Mutex
	counts *dataplane.Counts
	// desired is the state counts were last given, and desiredFor the MeshControlPlane
	// (UID and generation) it was planned from; plan.For runs once per generation.
	desired    dataplane.Desired
	desiredFor string
	hasDesired bool
	// plan is the plan desiredFor names, and revision and cpNamespace its active revision
	// and control-plane namespace.
	plan                  plan.Plan
	revision, cpNamespace string
	// restarts is what the restart plan remembers; mu guards it.
	restarts restartMemory
	// namespacesChanged is set by every namespace event that can change what the labelling
	// pass does, and labelledFor is what the last complete pass was planned from: the pass
	// lists the namespaces only when one of them changed, not on every pod event. mu
	// guards both.
	namespacesChanged bool
	labelledFor       string
	// restartsInProgress is the restart plan's last count, for the gauge; mu guards it.
	restartsInProgress int
	// upgradeWritten is the upgrade's last status write until the cache shows it; mu
	// guards it.
	upgradeWritten *writtenUpgrade
	// lastWrite is when the status was last written. Only the reconcile touches it, and a
	// controller runs one reconcile at a time.
	lastWrite time.Time
}

// SetupWithManager registers the data-plane controller: the MeshControlPlane's spec (which
// says which revision and stamps are current) and its readiness (restarts wait for it),
// every pod and namespace through event handlers that update the counts before they
// enqueue the one MeshControlPlane, and, from a cache of their own, every workload (whose
// restarts are tracked) and PodDisruptionBudget.
func (r *DataPlaneReconciler) SetupWithManager(mgr ctrl.Manager) error {
	r.init()
	c, err := cache.New(mgr.GetConfig(), cache.Options{Scheme: mgr.GetScheme(), Mapper: mgr.GetRESTMapper(), ByObject: restartCacheObjects()})
	if err != nil {
		return fmt.Errorf("the restart cache: %w", err)
	}
	if err := mgr.Add(c); err != nil {
		return err
	}
	r.workloads = c
	return ctrl.NewControllerManagedBy(mgr).
		Named("dataplane").
		For(&meshv1.MeshControlPlane{}, builder.WithPredicates(predicate.Or[client.Object](predicate.GenerationChangedPredicate{}, readinessChanged, upgradeInputsChanged))).
		WatchesMetadata(metadataOf(podGVK), r.podEvents()).
		WatchesMetadata(metadataOf(namespaceGVK), r.namespaceEvents()).
		WatchesRawSource(source.Kind(c, &appsv1.Deployment{}, workloadEvents[*appsv1.Deployment](r))).
		WatchesRawSource(source.Kind(c, &appsv1.StatefulSet{}, workloadEvents[*appsv1.StatefulSet](r))).
		WatchesRawSource(source.Kind(c, &appsv1.DaemonSet{}, workloadEvents[*appsv1.DaemonSet](r))).
		WatchesRawSource(source.Kind(c, &policyv1.PodDisruptionBudget{}, pdbEvents)).
		Complete(r)
}

// readinessChanged passes a MeshControlPlane whose Ready condition or observed generation
// changed: restarts wait until the control plane serves the current generation.
var readinessChanged = predicate.Funcs{
	CreateFunc: func(event.CreateEvent) bool { return false },
	DeleteFunc: func(event.DeleteEvent) bool { return false },
	UpdateFunc: func(e event.UpdateEvent) bool {
		o, ok1 := e.ObjectOld.(*meshv1.MeshControlPlane)
		n, ok2 := e.ObjectNew.(*meshv1.MeshControlPlane)
		return ok1 && ok2 && (restartHold(o) != restartHold(n))
	},
	GenericFunc: func(event.GenericEvent) bool { return false },
}

// upgradeInputsChanged passes a MeshControlPlane whose status changed in what the canary
// upgrade reads and the install writes: which revisions are installed, Ready and tagged
// (the tags reach a revision only once the install has applied them), and the CA's
// conditions (a pre-upgrade check).
var upgradeInputsChanged = predicate.Funcs{
	CreateFunc: func(event.CreateEvent) bool { return false },
	DeleteFunc: func(event.DeleteEvent) bool { return false },
	UpdateFunc: func(e event.UpdateEvent) bool {
		o, ok1 := e.ObjectOld.(*meshv1.MeshControlPlane)
		n, ok2 := e.ObjectNew.(*meshv1.MeshControlPlane)
		return ok1 && ok2 && upgradeInputs(o) != upgradeInputs(n)
	},
	GenericFunc: func(event.GenericEvent) bool { return false },
}

func upgradeInputs(m *meshv1.MeshControlPlane) string {
	var b strings.Builder
	for _, r := range m.Status.Revisions {
		fmt.Fprintf(&b, "%s=%s:%t:%v;", r.Name, r.Version, r.Ready != nil && *r.Ready, r.Tags)
	}
	for _, t := range []string{meshv1.ConditionCAReady, meshv1.ConditionCARotating} {
		if c := meta.FindStatusCondition(m.Status.Conditions, t); c != nil {
			fmt.Fprintf(&b, "%s=%s;", t, c.Status)
		}
	}
	return b.String()
}

// workloadEvents feeds the restart memory from the restart cache, and enqueues the one
// MeshControlPlane when a restart began or its rollout completed.
func workloadEvents[T client.Object](r *DataPlaneReconciler) handler.TypedEventHandler[T, reconcile.Request] {
	track := func(obj client.Object, gone bool, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		st, ok := stateOf(obj)
		if !ok {
			return
		}
		if gone {
			obj = nil
		}
		r.mu.Lock()
		changed := r.restarts.track(st.ref, obj, r.Clock.Now())
		r.mu.Unlock()
		if changed {
			enqueueSingleton(q)
		}
	}
	return handler.TypedFuncs[T, reconcile.Request]{
		CreateFunc: func(_ context.Context, e event.TypedCreateEvent[T], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			track(e.Object, false, q)
		},
		UpdateFunc: func(_ context.Context, e event.TypedUpdateEvent[T], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			track(e.ObjectNew, false, q)
		},
		DeleteFunc: func(_ context.Context, e event.TypedDeleteEvent[T], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			track(e.Object, true, q)
		},
	}
}

// pdbEvents enqueues the one MeshControlPlane when a PodDisruptionBudget starts or stops
// allowing disruptions: a restart may be waiting for it.
var pdbEvents = handler.TypedFuncs[*policyv1.PodDisruptionBudget, reconcile.Request]{
	UpdateFunc: func(_ context.Context, e event.TypedUpdateEvent[*policyv1.PodDisruptionBudget], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		if (e.ObjectOld.Status.DisruptionsAllowed == 0) != (e.ObjectNew.Status.DisruptionsAllowed == 0) {
			enqueueSingleton(q)
		}
	},
	DeleteFunc: func(_ context.Context, _ event.TypedDeleteEvent[*policyv1.PodDisruptionBudget], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		enqueueSingleton(q)
	},
}

func (r *DataPlaneReconciler) init() {
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	if r.StatusInterval == 0 {
		r.StatusInterval = DefaultDataPlaneStatusInterval
	}
	if r.counts == nil {
		r.counts = dataplane.NewCounts(dataplane.Desired{})
	}
	if r.restarts.tracked == nil {
		r.restarts = newRestartMemory()
	}
}

// Reconcile brings the counts' desired state up to the spec and writes status.injection
// and SidecarsCurrent when they changed, at most once per StatusInterval.
func (r *DataPlaneReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	// Coalesce first, before any work: under churn every pod event enqueues, and the one
	// reconcile after the interval writes what they all add up to.
	if wait := r.lastWrite.Add(r.StatusInterval).Sub(r.Clock.Now()); !r.lastWrite.IsZero() && wait > 0 {
		return ctrl.Result{RequeueAfter: wait}, nil
	}
	mcp := &meshv1.MeshControlPlane{}
	if err := r.Get(ctx, req.NamespacedName, mcp); apierrors.IsNotFound(err) {
		// Deleted: nothing selects any namespace now, so the labels Capstan set go, as
		// planned from the last spec seen (none when none was, since the operator started).
		gone := &dataPlaneScope{mcp: &meshv1.MeshControlPlane{}}
		r.mu.Lock()
		gone.revision, gone.cpNamespace = r.revision, r.cpNamespace
		r.mu.Unlock()
		return ctrl.Result{}, r.reconcileInjectionLabels(ctx, gone)
	} else if err != nil {
		return ctrl.Result{}, err
	}
	s := &dataPlaneScope{mcp: mcp, before: mcp.DeepCopy(), now: r.Clock.Now()}
	r.catchUpUpgrade(s)
	r.observe(s)
	if s.hasDesired && s.planErr == nil && mcp.DeletionTimestamp.IsZero() {
		s.upgrade = upgradeOf(s)
	}
	// Before the status, so that InjectionConfigured is written with it. A MeshControlPlane
	// being deleted selects no namespace: the labels Capstan set are removed.
	if err := r.reconcileInjectionLabels(ctx, s); err != nil {
		return ctrl.Result{}, err
	}
	if !mcp.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	var result ctrl.Result
	if s.upgrade != nil {
		d, err := r.runRestarts(ctx, s)
		if err != nil {
			return ctrl.Result{}, err
		}
		s.decision = &d
		r.mu.Lock()
		r.restartsInProgress = d.InProgress
		r.mu.Unlock()
		wake(&result, d.Wake, r.Clock.Now())
		changed, err := r.stepUpgrade(ctx, s, s.upgrade, s.migration)
		if err != nil {
			return ctrl.Result{}, err
		}
		if changed {
			// The State moved namespaces: label them now that it is stored.
			if err := r.reconcileInjectionLabels(ctx, s); err != nil {
				return ctrl.Result{}, err
			}
		}
		wake(&result, s.upgrade.wake, r.Clock.Now())
	}
	s.summarize()
	if !s.changed() {
		return result, nil
	}
	if err := client.IgnoreNotFound(applyStatusFields(ctx, r.Client, s.mcp, DataPlaneFieldManager, s.fields())); err != nil {
		return ctrl.Result{}, err
	}
	r.lastWrite = r.Clock.Now()
	return result, nil
}

// observe gives the counts the desired state of the spec and of the revisions installed,
// when it changed, and takes what the status needs from them.
func (r *DataPlaneReconciler) observe(s *dataPlaneScope) {
	in := plan.InstalledFrom(&s.mcp.Status)
	key := string(s.mcp.UID) + "@" + strconv.FormatInt(s.mcp.Generation, 10) + "@" + installedKey(in)
	var d dataplane.Desired
	var cpNamespace string
	var p plan.Plan
	r.mu.Lock()
	same := key == r.desiredFor
	p = r.plan
	r.mu.Unlock()
	if !same {
		var err error
		if p, err = plan.For(&s.mcp.Spec, in); err != nil {
			s.planErr = err
		} else {
			d = dataplane.Desired{Resolver: resolverOf(p.Layout), Stamps: p.Stamps}
			cpNamespace = p.Namespace
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !same && s.planErr == nil {
		r.desiredFor, r.plan = key, p
		r.revision, r.cpNamespace = p.Revision, cpNamespace
		if !r.hasDesired || !reflect.DeepEqual(d, r.desired) {
			// The one O(all pods) step: only when the revisions or stamps changed.
			r.counts.SetDesired(d)
			r.desired, r.hasDesired = d, true
		}
	}
	s.hasDesired = r.hasDesired
	s.plan, s.resolver = r.plan, r.desired.Resolver
	s.revision, s.cpNamespace = r.revision, r.cpNamespace
	s.sum = r.counts.Summary()
	s.uses = r.counts.Uses()
	s.revisions = r.desired.Resolver.Revisions
	s.stale = r.counts.StaleWorkloads()
	s.missing = r.counts.MissingRevisions()
}

// installedKey is what of the installed revisions a plan depends on, for telling when to
// plan again: the active revision, the upgrade's phase and target, and the revisions.
func installedKey(in plan.Installed) string {
	var b strings.Builder
	b.WriteString(in.Active)
	if in.Upgrade != nil {
		fmt.Fprintf(&b, "/%s>%s:%s", in.Upgrade.From, in.Upgrade.To, in.Upgrade.Phase)
	}
	for _, rev := range slices.Sorted(maps.Keys(in.Revisions)) {
		fmt.Fprintf(&b, "/%s=%s", rev, in.Revisions[rev])
	}
	return b.String()
}

// resolverOf resolves labels the way the injection webhooks of layout select: each
// revision installed, and each tag to the revision carrying it. The in-place revision
// default serves istio-injection=enabled itself, without a tag.
func resolverOf(l plan.Revisions) revision.Resolver {
	res := revision.Resolver{Revisions: slices.Sorted(maps.Keys(l.Versions)), Tags: map[string]string{}}
	for rev, tags := range l.Tags {
		for _, t := range tags {
			res.Tags[t] = rev
		}
	}
	return res
}

// podEvents feeds the counts from the pod informer, one pod at a time.
func (r *DataPlaneReconciler) podEvents() handler.Funcs {
	return handler.Funcs{
		CreateFunc: func(_ context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			r.podChanged(nil, e.Object)
			enqueueSingleton(q)
		},
		UpdateFunc: func(_ context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			if r.podChanged(e.ObjectOld, e.ObjectNew) {
				enqueueSingleton(q)
			}
		},
		DeleteFunc: func(_ context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			r.podDeleted(e.Object)
			enqueueSingleton(q)
		},
	}
}

// podChanged records a new pod (old nil) or a pod's change, and says whether anything the
// counts read changed.
func (r *DataPlaneReconciler) podChanged(old, updated metav1.Object) bool {
	p := podOf(updated)
	r.mu.Lock()
	defer r.mu.Unlock()
	if old == nil {
		r.counts.Add(p)
		return true
	}
	o := podOf(old)
	if reflect.DeepEqual(o, p) {
		return false
	}
	r.counts.Update(o, p)
	return true
}

func (r *DataPlaneReconciler) podDeleted(obj client.Object) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.counts.Remove(dataplane.Pod{Namespace: obj.GetNamespace(), Name: obj.GetName()})
}

// namespaceEvents feeds the counts from the namespace informer: a namespace's injection
// labels re-evaluate its own pods only.
func (r *DataPlaneReconciler) namespaceEvents() handler.Funcs {
	set := func(o client.Object) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.counts.SetNamespace(o.GetName(), o.GetLabels())
		r.namespacesChanged = true
	}
	return handler.Funcs{
		CreateFunc: func(_ context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			set(e.Object)
			enqueueSingleton(q)
		},
		UpdateFunc: func(_ context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			marker := func(o client.Object) string { return o.GetAnnotations()[InjectionLabelledAnnotation] }
			if maps.Equal(e.ObjectOld.GetLabels(), e.ObjectNew.GetLabels()) && marker(e.ObjectOld) == marker(e.ObjectNew) &&
				e.ObjectOld.GetDeletionTimestamp().IsZero() == e.ObjectNew.GetDeletionTimestamp().IsZero() {
				return
			}
			set(e.ObjectNew)
			enqueueSingleton(q)
		},
		DeleteFunc: func(_ context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			r.mu.Lock()
			r.counts.RemoveNamespace(e.Object.GetName())
			r.namespacesChanged = true
			r.mu.Unlock()
			enqueueSingleton(q)
		},
	}
}

// wake makes res come back at t, or earlier if it already does; never sooner than a
// second from now.
func wake(res *ctrl.Result, t, now time.Time) {
	if t.IsZero() {
		return
	}
	after := max(t.Sub(now), time.Second)
	if res.RequeueAfter == 0 || after < res.RequeueAfter {
		res.RequeueAfter = after
	}
}

func enqueueSingleton(q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	q.Add(singletonRequest)
}

// podOf is what the counts read of a cached pod (see dataPlanePod). The cache holds no
// terminated pod (runningPods), so none is Terminated.
func podOf(p metav1.Object) dataplane.Pod {
	kind, name := workloadOwner(p)
	return dataplane.Pod{
		Namespace: p.GetNamespace(), Name: p.GetName(),
		Labels: p.GetLabels(), Annotations: p.GetAnnotations(),
		OwnerKind: kind, OwnerName: name,
	}
}

// workloadOwner is the workload a pod's stale sidecar is reported on: its controller
// owner, with a ReplicaSet taken for its Deployment. This slice caches no ReplicaSets, so
// the Deployment's name comes from the ReplicaSet's: the Deployment controller names each
// ReplicaSet "<deployment>-<pod-template-hash>" and labels its pods with that same hash.
// Only when the pod's pod-template-hash label is the last "-" segment of the ReplicaSet's
// name is the rest taken for the Deployment; any other ReplicaSet (made by hand or by
// another controller) stays the owner. Empty for a pod no controller owns.
func workloadOwner(p metav1.Object) (kind, name string) {
	ref := metav1.GetControllerOfNoCopy(p)
	if ref == nil {
		return "", ""
	}
	if ref.Kind == "ReplicaSet" && strings.HasPrefix(ref.APIVersion, "apps/") {
		if hash := p.GetLabels()[podTemplateHashLabel]; hash != "" {
			if dep, ok := strings.CutSuffix(ref.Name, "-"+hash); ok && dep != "" {
				return "Deployment", dep
			}
		}
	}
	return ref.Kind, ref.Name
}
