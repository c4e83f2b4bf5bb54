package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/dataplane"
)

// RBAC of the restarts: Capstan reads every workload and PodDisruptionBudget, and patches
// a workload's annotations (and its pod template's) to restart it.
//
// +kubebuilder:rbac:groups=apps,resources=deployments;statefulsets;daemonsets,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch

// RestartFieldManager is the field manager of Capstan's restart patches.
const RestartFieldManager = "capstan-restart"

// refusalRetry is how long a workload whose restart the API server refused is left alone
// before the restart is tried again.
const refusalRetry = 5 * time.Minute

// restartCacheObjects are the kinds the restarts read from their own cache: every
// Deployment, StatefulSet, DaemonSet and PodDisruptionBudget of the cluster. They have a
// cache of their own because the install's cache holds only Capstan's own objects of the
// same kinds (see CacheByObject), and a cache has one configuration per kind.
func restartCacheObjects() map[client.Object]cache.ByObject {
	workload := cache.ByObject{Label: labels.Everything(), Transform: restartWorkload}
	return map[client.Object]cache.ByObject{
		&appsv1.Deployment{}:            workload,
		&appsv1.StatefulSet{}:           workload,
		&appsv1.DaemonSet{}:             workload,
		&policyv1.PodDisruptionBudget{}: {Label: labels.Everything(), Transform: cache.TransformStripManagedFields()},
	}
}

// restartWorkload is the restart cache's transform of a workload: what tells whether its
// rollout is complete (generation, replicas, update strategy, status), its pod template's
// labels (which PodDisruptionBudgets select), and of its annotations only Capstan's own.
// The rest of the spec, which dominates a workload's size, is dropped.
func restartWorkload(obj any) (any, error) {
	switch w := obj.(type) {
	case *appsv1.Deployment:
		return &appsv1.Deployment{TypeMeta: w.TypeMeta, ObjectMeta: restartMeta(w.ObjectMeta), Status: w.Status,
			Spec: appsv1.DeploymentSpec{Replicas: w.Spec.Replicas, Template: templateLabels(w.Spec.Template)}}, nil
	case *appsv1.StatefulSet:
		return &appsv1.StatefulSet{TypeMeta: w.TypeMeta, ObjectMeta: restartMeta(w.ObjectMeta), Status: w.Status,
			Spec: appsv1.StatefulSetSpec{Replicas: w.Spec.Replicas, UpdateStrategy: w.Spec.UpdateStrategy, Template: templateLabels(w.Spec.Template)}}, nil
	case *appsv1.DaemonSet:
		return &appsv1.DaemonSet{TypeMeta: w.TypeMeta, ObjectMeta: restartMeta(w.ObjectMeta), Status: w.Status,
			Spec: appsv1.DaemonSetSpec{UpdateStrategy: w.Spec.UpdateStrategy, Template: templateLabels(w.Spec.Template)}}, nil
	}
	return obj, nil
}

func restartMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	out := metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion,
		Generation: m.Generation, DeletionTimestamp: m.DeletionTimestamp}
	for _, k := range [...]string{dataplane.RestartAnnotation, dataplane.RestartedAtAnnotation, dataplane.RestartedForAnnotation} {
		if v, ok := m.Annotations[k]; ok {
			if out.Annotations == nil {
				out.Annotations = map[string]string{}
			}
			out.Annotations[k] = v
		}
	}
	return out
}

func templateLabels(t corev1.PodTemplateSpec) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: t.Labels}}
}

// workloadState is what the restarts read of one workload.
type workloadState struct {
	ref         dataplane.WorkloadRef
	annotations map[string]string
	// observed: its controller has seen its current generation; complete: every replica
	// runs the current template and is available, and no old one is left (what `kubectl
	// rollout status` waits for).
	observed, complete bool
	// onDelete: a template change restarts nothing (updateStrategy OnDelete).
	onDelete  bool
	podLabels map[string]string
}

// stateOf reads a workload of the restart cache; false for any other object.
func stateOf(obj client.Object) (workloadState, bool) {
	s := workloadState{annotations: obj.GetAnnotations()}
	switch w := obj.(type) {
	case *appsv1.Deployment:
		want, st := ptr.Deref(w.Spec.Replicas, 1), w.Status
		s.ref.Kind, s.podLabels = "Deployment", w.Spec.Template.Labels
		s.observed = st.ObservedGeneration >= w.Generation
		s.complete = st.UpdatedReplicas == want && st.Replicas == want && st.AvailableReplicas == want
	case *appsv1.StatefulSet:
		want, st := ptr.Deref(w.Spec.Replicas, 1), w.Status
		s.ref.Kind, s.podLabels = "StatefulSet", w.Spec.Template.Labels
		s.observed = st.ObservedGeneration >= w.Generation
		s.onDelete = w.Spec.UpdateStrategy.Type == appsv1.OnDeleteStatefulSetStrategyType
		partition := int32(0)
		if ru := w.Spec.UpdateStrategy.RollingUpdate; ru != nil {
			partition = ptr.Deref(ru.Partition, 0)
		}
		s.complete = st.UpdatedReplicas >= want-partition && st.ReadyReplicas == want && st.AvailableReplicas == want &&
			(partition > 0 || st.CurrentRevision == st.UpdateRevision)
	case *appsv1.DaemonSet:
		st := w.Status
		s.ref.Kind, s.podLabels = "DaemonSet", w.Spec.Template.Labels
		s.observed = st.ObservedGeneration >= w.Generation
		s.onDelete = w.Spec.UpdateStrategy.Type == appsv1.OnDeleteDaemonSetStrategyType
		s.complete = st.UpdatedNumberScheduled == st.DesiredNumberScheduled && st.NumberAvailable == st.DesiredNumberScheduled
	default:
		return s, false
	}
	s.ref.Namespace, s.ref.Name = obj.GetNamespace(), obj.GetName()
	return s, true
}

// newWorkload is an empty object of a restartable kind, to read or patch.
func newWorkload(ref dataplane.WorkloadRef) client.Object {
	var obj client.Object
	switch ref.Kind {
	case "Deployment":
		obj = &appsv1.Deployment{}
	case "StatefulSet":
		obj = &appsv1.StatefulSet{}
	case "DaemonSet":
		obj = &appsv1.DaemonSet{}
	default:
		return nil
	}
	obj.SetNamespace(ref.Namespace)
	obj.SetName(ref.Name)
	return obj
}

// restartMemory is what the restarts remember between reconciles. None of it is needed
// for safety after a crash (the restart state is on each workload); it spares the API
// server and keeps pauseBetween.
type restartMemory struct {
	// tracked are the workloads carrying a restart annotation, fed by the restart cache's
	// events: when their restart was, whether their rollout is complete, and since when
	// (as this process saw it).
	tracked map[dataplane.WorkloadRef]*trackedRestart
	// written holds the restarts this process wrote that the cache has not shown yet.
	written map[dataplane.WorkloadRef]writtenRestart
	// refused holds, per workload, a refused restart's target, message and retry time.
	refused map[dataplane.WorkloadRef]refusal
	// timeoutsReported are the restarts (by their time) whose timeout was told in an Event.
	timeoutsReported map[dataplane.WorkloadRef]time.Time
}

type trackedRestart struct {
	at          time.Time
	complete    bool
	completedAt time.Time
}

// writtenRestart is a restart this process wrote: when, and for which target.
type writtenRestart struct {
	at     time.Time
	target string
}

type refusal struct {
	target, message string
	until           time.Time
}

func newRestartMemory() restartMemory {
	return restartMemory{
		tracked: map[dataplane.WorkloadRef]*trackedRestart{}, written: map[dataplane.WorkloadRef]writtenRestart{},
		refused: map[dataplane.WorkloadRef]refusal{}, timeoutsReported: map[dataplane.WorkloadRef]time.Time{},
	}
}

// track records a workload event of the restart cache (obj nil: deleted), and says whether
// the restart plan should look again: a restart began or its rollout completed.
func (m *restartMemory) track(ref dataplane.WorkloadRef, obj client.Object, now time.Time) bool {
	if obj == nil {
		delete(m.tracked, ref)
		delete(m.written, ref)
		return false
	}
	st, ok := stateOf(obj)
	if !ok {
		return false
	}
	rs, err := dataplane.RestartStateOf(st.annotations)
	if err != nil || rs.At.IsZero() {
		delete(m.tracked, ref)
		return false
	}
	if w, ok := m.written[ref]; ok && !rs.At.Before(w.at) {
		delete(m.written, ref) // the cache has caught up with the write
	}
	t := m.tracked[ref]
	if t == nil || !t.at.Equal(rs.At) {
		t = &trackedRestart{at: rs.At}
		m.tracked[ref] = t
	}
	complete := st.observed && st.complete
	changed := complete != t.complete
	t.complete = complete
	if complete && t.completedAt.Before(t.at) {
		t.completedAt = now
	}
	return changed
}

// restartCandidate is one workload Decide will see, with what the restart memory says of
// it: when its restart was seen complete, why it cannot be restarted now (a refusal), and
// the restart this process wrote that the cache has not shown yet (zero if none).
type restartCandidate struct {
	dataplane.Workload
	written writtenRestart
}

// restartCandidates are every workload with stale pods, and every tracked restart that is
// still rolling, or recent enough to matter for the timeout and pauseBetween, with what
// the memory says of each: those of the namespaces in selects. The caller holds r.mu.
func (r *DataPlaneReconciler) restartCandidates(p dataplane.Policy, stale []dataplane.StaleWorkload, in func(namespace string) bool, now time.Time) []restartCandidate {
	relevant := p.Timeout + p.PauseBetween
	byRef := make(map[dataplane.WorkloadRef]dataplane.StaleWorkload, len(stale))
	for _, w := range stale {
		if in(w.Namespace) {
			byRef[w.WorkloadRef] = w
		}
	}
	for ref, t := range r.restarts.tracked {
		if _, ok := byRef[ref]; !ok && in(ref.Namespace) && (!t.complete || now.Sub(t.at) < relevant || now.Sub(t.completedAt) < p.PauseBetween) {
			byRef[ref] = dataplane.StaleWorkload{WorkloadRef: ref}
		}
	}
	for ref := range r.restarts.written {
		if _, ok := byRef[ref]; !ok && in(ref.Namespace) {
			byRef[ref] = dataplane.StaleWorkload{WorkloadRef: ref}
		}
	}
	out := make([]restartCandidate, 0, len(byRef))
	for ref, sw := range byRef {
		c := restartCandidate{Workload: dataplane.Workload{StaleWorkload: sw}, written: r.restarts.written[ref]}
		if t := r.restarts.tracked[ref]; t != nil {
			c.CompletedAt = t.completedAt
		}
		if rf, ok := r.restarts.refused[ref]; ok && rf.target == sw.Target && now.Before(rf.until) {
			c.CannotRestart = fmt.Sprintf("the API server refused its restart (%s); tried again at %s", rf.message, rf.until.UTC().Format(time.RFC3339))
		}
		out = append(out, c)
	}
	return out
}

// restartInputs gathers Decide's inputs: the candidates, each read from the restart cache,
// and the resourceVersion each was read at, on which its restart is conditional. The
// cache is read without r.mu held: the informers feeding the counts wait on it.
func (r *DataPlaneReconciler) restartInputs(ctx context.Context, p dataplane.Policy, stale []dataplane.StaleWorkload, in func(string) bool, now time.Time) ([]dataplane.Workload, map[dataplane.WorkloadRef]string, error) {
	r.mu.Lock()
	candidates := r.restartCandidates(p, stale, in, now)
	r.mu.Unlock()
	mayRestart := p.Restart != "" && p.Restart != dataplane.RestartNever
	out := make([]dataplane.Workload, 0, len(candidates))
	versions := make(map[dataplane.WorkloadRef]string, len(candidates))
	pdbs := map[string][]policyv1.PodDisruptionBudget{} // by namespace, read once per pass
	for _, c := range candidates {
		w, ref := c.Workload, c.WorkloadRef
		obj := newWorkload(ref)
		if obj == nil {
			out = append(out, w) // reported as not restartable by Decide
			continue
		}
		if err := r.workloads.Get(ctx, client.ObjectKeyFromObject(obj), obj); apierrors.IsNotFound(err) {
			if w.Pods > 0 && w.CannotRestart == "" {
				w.CannotRestart = "its " + ref.Kind + " is not found; its pods are left as they are"
				out = append(out, w)
			}
			continue
		} else if err != nil {
			return nil, nil, fmt.Errorf("reading %s: %w", ref, err)
		}
		versions[ref] = obj.GetResourceVersion()
		st, _ := stateOf(obj)
		w.Annotations, w.GenerationObserved, w.RolloutComplete = st.annotations, st.observed, st.complete
		if cached, err := dataplane.RestartStateOf(st.annotations); !c.written.at.IsZero() && (err != nil || cached.At.Before(c.written.at)) {
			// The cache has not shown this process's own restart yet: take what was written.
			w.Annotations = maps.Clone(w.Annotations)
			if w.Annotations == nil {
				w.Annotations = map[string]string{}
			}
			w.Annotations[dataplane.RestartedAtAnnotation] = c.written.at.UTC().Format(time.RFC3339)
			w.Annotations[dataplane.RestartedForAnnotation] = c.written.target
			w.GenerationObserved, w.RolloutComplete = false, false
		} else if !c.written.at.IsZero() {
			// It has, though its event may have come before the write was remembered.
			r.mu.Lock()
			if r.restarts.written[ref] == c.written {
				delete(r.restarts.written, ref)
			}
			r.mu.Unlock()
		}
		if st.onDelete && w.CannotRestart == "" {
			w.CannotRestart = "its updateStrategy is OnDelete, so a restart replaces no pod; delete its pods to give them a current sidecar"
		}
		if w.Pods > 0 && w.CannotRestart == "" && mayRestart {
			if _, ok := pdbs[ref.Namespace]; !ok {
				l := &policyv1.PodDisruptionBudgetList{}
				if err := r.workloads.List(ctx, l, client.InNamespace(ref.Namespace)); err != nil {
					return nil, nil, fmt.Errorf("listing PodDisruptionBudgets in %s: %w", ref.Namespace, err)
				}
				pdbs[ref.Namespace] = l.Items
			}
			w.DisruptionBlocked = disruptionBlocked(pdbs[ref.Namespace], st.podLabels)
		}
		out = append(out, w)
	}
	return out, versions, nil
}

// disruptionBlocked says whether one of pdbs selecting pods with podLabels allows no
// disruption now.
func disruptionBlocked(pdbs []policyv1.PodDisruptionBudget, podLabels map[string]string) bool {
	for _, pdb := range pdbs {
		sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		if err != nil || pdb.Spec.Selector == nil {
			continue // selects nothing, for the disruption controller too
		}
		if sel.Matches(labels.Set(podLabels)) && pdb.Status.DisruptionsAllowed == 0 {
			return true
		}
	}
	return false
}

// policyOf is spec.injection.rollout as the restart plan reads it.
func policyOf(spec *meshv1.MeshControlPlaneSpec) dataplane.Policy {
	var p dataplane.Policy
	if spec.Injection == nil || spec.Injection.Rollout == nil {
		return p
	}
	ro := spec.Injection.Rollout
	p.Restart = dataplane.RestartPolicy(ro.RestartStaleWorkloads)
	p.MaxConcurrent = int(ro.MaxConcurrent)
	if ro.PauseBetween != nil {
		p.PauseBetween = ro.PauseBetween.Duration
	}
	if ro.RestartTimeout != nil {
		p.Timeout = ro.RestartTimeout.Duration
	}
	if p.Timeout <= 0 {
		p.Timeout = dataplane.DefaultRestartTimeout
	}
	return p
}

// restartHold says why no restart may start now, or "": only once the control plane
// serves the generation that made the sidecars stale do restarted pods get current ones.
func restartHold(mcp *meshv1.MeshControlPlane) string {
	ready := meta.FindStatusCondition(mcp.Status.Conditions, meshv1.ConditionReady)
	switch {
	case ready == nil || ready.Status != metav1.ConditionTrue:
		return "waiting for the control plane to be Ready"
	case mcp.Status.ObservedGeneration != mcp.Generation:
		return fmt.Sprintf("waiting for the control plane to apply generation %d", mcp.Generation)
	}
	return ""
}

// runRestarts runs the restart plans: the migration's, for the namespaces a canary upgrade
// moves now (every stale workload of the batch at once, whatever restartStaleWorkloads
// says, each given readinessTimeout), then spec.injection.rollout's for every other
// namespace. It returns their decisions as one, for status, and keeps the migration's
// items for the upgrade's next step.
func (r *DataPlaneReconciler) runRestarts(ctx context.Context, s *dataPlaneScope) (dataplane.Decision, error) {
	hold := restartHold(s.mcp)
	var moving func(string) bool
	var migration dataplane.Decision
	if u := s.upgrade; u != nil && len(u.moving) > 0 {
		moving = func(ns string) bool { return slices.Contains(u.moving, ns) }
		n := 0
		for _, w := range s.stale {
			if moving(w.Namespace) {
				n++
			}
		}
		p := dataplane.Policy{Restart: dataplane.RestartAlways, MaxConcurrent: max(n, 1), Timeout: u.cfg.ReadinessTimeout}
		var err error
		if migration, err = r.restartPlan(ctx, s, p, moving, hold, "moving to revision "+u.revisionFor(u.moving[0], s.revision)); err != nil {
			return migration, err
		}
		s.migration = migration.Items
	}
	p := policyOf(&s.mcp.Spec)
	if p.Restart != "" && p.Restart != dataplane.RestartNever {
		s.hold = hold
	}
	rest := func(ns string) bool { return moving == nil || !moving(ns) }
	d, err := r.restartPlan(ctx, s, p, rest, hold, fmt.Sprintf("restartStaleWorkloads %s", p.Restart))
	if err != nil {
		return d, err
	}
	if moving != nil {
		d.Items = append(d.Items, migration.Items...)
		slices.SortFunc(d.Items, func(a, b dataplane.Item) int { return dataplane.CompareRefs(a.WorkloadRef, b.WorkloadRef) })
		d.InProgress += migration.InProgress
		if !migration.Wake.IsZero() && (d.Wake.IsZero() || migration.Wake.Before(d.Wake)) {
			d.Wake, d.WakeReason = migration.Wake, migration.WakeReason
		}
	}
	return d, nil
}

// restartPlan runs one restart plan over the stale workloads of the namespaces in
// selects: Decide, make its one write, and again, until it has nothing more to write now.
// It returns the last decision and tells each batch of restarts, and each timeout, in an
// Event that says why (the policy, or the upgrade).
func (r *DataPlaneReconciler) restartPlan(ctx context.Context, s *dataPlaneScope, p dataplane.Policy, in func(string) bool, hold, why string) (dataplane.Decision, error) {
	var (
		d       dataplane.Decision
		batch   []string
		refused []string
	)
	for range 100 { // bounded: each round writes one restart, at most maxConcurrent
		ws, versions, err := r.restartInputs(ctx, p, s.stale, in, s.now)
		if err != nil {
			return d, err
		}
		d = dataplane.Decide(dataplane.Inputs{Policy: p, Workloads: ws, Now: s.now, Hold: hold})
		r.mu.Lock()
		for _, ref := range d.Completed {
			if t := r.restarts.tracked[ref]; t != nil && t.completedAt.Before(t.at) {
				t.completedAt = s.now
			}
		}
		r.mu.Unlock()
		if d.Action.Kind != dataplane.ActionRestart {
			break
		}
		if err := r.restart(ctx, d.Action, versions[d.Action.Workload]); err != nil {
			if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
				// The cache is behind the workload, or it just went: decide again in a
				// second, whether or not an event about it arrives.
				if retry := s.now.Add(time.Second); d.Wake.IsZero() || retry.Before(d.Wake) {
					d.Wake, d.WakeReason = retry, d.Action.Workload.String()+" changed under its restart"
				}
				break
			}
			r.mu.Lock()
			r.restarts.refused[d.Action.Workload] = refusal{target: d.Action.For, message: err.Error(), until: s.now.Add(refusalRetry)}
			r.mu.Unlock()
			refused = append(refused, d.Action.Workload.String()+": "+err.Error())
			continue
		}
		batch = append(batch, d.Action.Workload.String())
	}
	if len(batch) > 0 {
		r.Recorder.Eventf(s.mcp, nil, corev1.EventTypeNormal, meshv1.ReasonRestartingWorkloads, "Restart",
			"restarting %d workloads with stale sidecars (%s): %s", len(batch), why, listSome(batch))
	}
	if len(refused) > 0 {
		r.Recorder.Eventf(s.mcp, nil, corev1.EventTypeWarning, meshv1.ReasonRestartRefused, "Restart",
			"the API server refused %d restarts: %s", len(refused), listSome(refused))
	}
	r.reportTimeouts(s.mcp, d.Items)
	return d, nil
}

// restart makes the one write of a restart: the restart state on the workload's metadata
// and the restart annotation on its pod template, in one merge patch, conditional on the
// resourceVersion Decide's view of it was read at, so a restart decided from a stale view
// fails instead of repeating one.
func (r *DataPlaneReconciler) restart(ctx context.Context, a dataplane.Action, resourceVersion string) error {
	meta, template := a.Annotations()
	body, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"resourceVersion": resourceVersion, "annotations": meta},
		"spec":     map[string]any{"template": map[string]any{"metadata": map[string]any{"annotations": template}}},
	})
	if err != nil {
		return err
	}
	target := newWorkload(a.Workload)
	if err := r.Patch(ctx, target, client.RawPatch(types.MergePatchType, body), client.FieldOwner(RestartFieldManager)); err != nil {
		return err
	}
	r.mu.Lock()
	r.restarts.written[a.Workload] = writtenRestart{at: a.At, target: a.For}
	if t := r.restarts.tracked[a.Workload]; t == nil || t.at.Before(a.At) {
		r.restarts.tracked[a.Workload] = &trackedRestart{at: a.At}
	}
	r.mu.Unlock()
	return nil
}

// reportTimeouts tells each restart that timed out in a Warning Event, once.
func (r *DataPlaneReconciler) reportTimeouts(mcp *meshv1.MeshControlPlane, items []dataplane.Item) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, it := range items {
		if it.Status != dataplane.StatusTimedOut {
			continue
		}
		t := r.restarts.tracked[it.WorkloadRef]
		if t == nil || r.restarts.timeoutsReported[it.WorkloadRef].Equal(t.at) {
			continue
		}
		r.restarts.timeoutsReported[it.WorkloadRef] = t.at
		r.Recorder.Eventf(mcp, nil, corev1.EventTypeWarning, string(dataplane.StatusTimedOut), "Restart", "%s", it.Message)
	}
}
