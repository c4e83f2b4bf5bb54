package controllers

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/apply"
	"github.com/capstan-mesh/capstan/internal/plan"
	"github.com/capstan-mesh/capstan/internal/render"
	"github.com/capstan-mesh/capstan/internal/values"
)

// phaseFunc is one step of a reconcile. It sets s.stop to end the reconcile early.
type phaseFunc func(context.Context, *scope) (ctrl.Result, error)

// phase is a named step of a reconcile. An error it returns, unless it already reported
// the failure itself (scope.fail), is reported with reason: no error ever reaches status
// as success.
type phase struct {
	name   string
	reason string
	run    phaseFunc
}

// scope is what the phases of one reconcile share.
type scope struct {
	mcp    *meshv1.MeshControlPlane
	before *meshv1.MeshControlPlane

	namespace string
	plan      plan.Plan
	// desired are the rendered objects of every unit, in apply order.
	desired []render.Object
	// live are the objects Capstan's controllers wrote, as the cache holds them.
	live []apply.Live
	// keep are objects Capstan owns that are not rendered but must not be pruned (the
	// control-plane namespace it created).
	keep []apply.Ref
	// applied are the objects written in this reconcile; repaired those among them that
	// had drifted from an unchanged spec.
	applied, repaired []apply.Ref
	// written holds the apiserver's answer to each apply of this reconcile: fresher than
	// the cache, which has not seen those writes yet.
	written map[apply.Ref]*unstructured.Unstructured
	failure *failure
	stop    bool
	// completed is set once every phase ran without a failure.
	completed bool
	// observed is set once observe read the components' state into status.
	observed bool
	// awaitingCA: istiod is held back until the mesh CA is issued.
	awaitingCA bool
	// released is set once the finalizer is gone and the object may no longer exist.
	released bool
	// pruneRevisions are the revisions this reconcile removes; wake is when the next one
	// may be removed (zero when no time alone does).
	pruneRevisions []string
	wake           time.Time
}

// failure is why the declared state cannot be reached, for the Degraded condition.
type failure struct {
	reason  string
	message string
	// terminal failures wait for a spec change; others are retried with backoff.
	terminal bool
	// phase is the name of the phase that failed.
	phase string
}

func (s *scope) fail(reason string, err error, terminal bool) {
	s.failure = &failure{reason: reason, message: err.Error(), terminal: terminal}
	s.stop = true
}

func (r *MeshControlPlaneReconciler) ensureFinalizer(ctx context.Context, s *scope) (ctrl.Result, error) {
	if controllerutil.ContainsFinalizer(s.mcp, Finalizer) {
		return ctrl.Result{}, nil
	}
	patch := client.MergeFrom(s.mcp.DeepCopy())
	controllerutil.AddFinalizer(s.mcp, Finalizer)
	if err := r.Patch(ctx, s.mcp, patch); err != nil {
		return ctrl.Result{}, fmt.Errorf("adding finalizer: %w", err)
	}
	s.before.Finalizers = s.mcp.Finalizers
	s.before.ResourceVersion = s.mcp.ResourceVersion
	return ctrl.Result{}, nil
}

// plan turns the spec into units and renders each. It touches nothing in the cluster: a
// spec the charts reject stops here, and what runs keeps running. The revisions it plans
// are those the spec and the upgrade under way ask for, and every other one installed
// that is not yet to be removed: a revision no longer active goes once the data plane has
// reported it unused for spec.upgrade.inactiveRevisionGracePeriod.
func (r *MeshControlPlaneReconciler) plan(_ context.Context, s *scope) (ctrl.Result, error) {
	in := plan.InstalledFrom(&s.mcp.Status)
	for _, l := range s.live {
		if _, known := in.Revisions[l.Revision]; installsIstiod(l.Inventory) && !known {
			in.Revisions[l.Revision] = ""
			if l.Revision == apply.DefaultRevision {
				in.Revisions[l.Revision] = s.mcp.Status.Version
			}
		}
	}
	var wake time.Time
	layout, err := plan.LayoutFor(&s.mcp.Spec, in)
	if err == nil {
		in.Prune, wake = plan.Prunable(layout, &s.mcp.Status, plan.GracePeriod(&s.mcp.Spec), r.clock().Now())
		s.pruneRevisions = in.Prune
	}
	var p plan.Plan
	if err == nil {
		p, err = plan.For(&s.mcp.Spec, in)
	}
	if err == nil {
		// Admission refuses these namespaces; an object stored before it did is refused here.
		err = values.CheckNamespace(&s.mcp.Spec, r.OperatorNamespace)
	}
	if err != nil {
		s.fail(meshv1.ReasonInvalidSpec, err, true)
		return ctrl.Result{}, nil
	}
	s.plan = p
	objs, err := p.Render(r.KubeVersion)
	if err != nil {
		s.fail(meshv1.ReasonRenderFailed, fmt.Errorf("spec.values or the typed fields give values Istio's charts reject (nothing was changed): %w", err), true)
		return ctrl.Result{}, nil
	}
	s.desired = objs
	if !wake.IsZero() {
		s.wake = wake
	}
	return ctrl.Result{}, nil
}

// inventory reads what Capstan's controllers wrote, and refuses to go on when the
// install's objects live in another namespace than the spec names: spec.namespace was
// changed under a running control plane (admission refuses that now, but not for objects
// stored before the rule). Applying would start a second istiod without its CA, and
// pruning would delete the running one.
func (r *MeshControlPlaneReconciler) inventory(ctx context.Context, s *scope) (ctrl.Result, error) {
	s.namespace = values.Namespace(&s.mcp.Spec)
	live, err := r.listOwned(ctx)
	if err != nil {
		return ctrl.Result{}, err
	}
	s.live = live
	if l, moved := movedFrom(live, s.namespace); moved {
		s.fail(meshv1.ReasonNamespaceChanged, fmt.Errorf(
			"spec.namespace: the control plane runs in namespace %s (%s), and spec.namespace says %s; a control plane cannot move in place. Set spec.namespace back to %s, or delete this MeshControlPlane (Istio's CRDs and your Istio objects are kept) and create it again with namespace %s. Nothing was changed",
			l, s.namespace, s.namespace, l, s.namespace), true)
	}
	return ctrl.Result{}, nil
}

// movedFrom says whether the install's objects show a control plane in another namespace
// than ns, and which: a namespaced object of the install there, or the control-plane
// namespace Capstan created for it (which holds the CA's root key).
func movedFrom(live []apply.Live, ns string) (string, bool) {
	for _, l := range live {
		if l.Writer != apply.WriterInstall {
			continue
		}
		if l.Namespace != "" && l.Namespace != ns {
			return l.Namespace, true
		}
		if l.Namespace == "" && l.Component == apply.NamespaceComponent && l.GVK.Kind == "Namespace" && l.Name != ns {
			return l.Name, true
		}
	}
	return "", false
}

// ensureNamespace creates the control-plane namespace when it is missing. A namespace the
// user made stays the user's: Capstan neither labels nor ever deletes it.
func (r *MeshControlPlaneReconciler) ensureNamespace(ctx context.Context, s *scope) (ctrl.Result, error) {
	ref := apply.Ref{GVK: namespaceGVK}
	ref.Name = s.namespace
	ns := metadataOf(namespaceGVK)
	err := r.Get(ctx, client.ObjectKey{Name: s.namespace}, ns) // every namespace is cached
	if err == nil {
		if apply.Owned(ns.Labels) {
			s.keep = append(s.keep, ref)
		}
		return ctrl.Result{}, nil
	}
	if !apierrors.IsNotFound(err) {
		return ctrl.Result{}, fmt.Errorf("reading namespace %s: %w", s.namespace, err)
	}
	created := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: s.namespace,
		Labels: apply.Inventory{Component: apply.NamespaceComponent, Writer: apply.WriterInstall}.Labels()}}
	switch err := r.Create(ctx, created); {
	case apierrors.IsAlreadyExists(err):
		// The cache has not seen it yet. Whose it is, the next reconcile reads from the
		// cache; until then it is not pruned.
		s.keep = append(s.keep, ref)
		return ctrl.Result{}, nil
	case err != nil:
		s.fail(meshv1.ReasonApplyFailed, fmt.Errorf("spec.namespace: creating namespace %s: %w", s.namespace, err), false)
		return ctrl.Result{}, err
	}
	s.keep = append(s.keep, ref)
	s.applied = append(s.applied, ref)
	return ctrl.Result{}, nil
}

// awaitCA holds back istiod's first start until the CA controller has written the cacerts
// Secret: istiod decides once, at start, between the plugged-in CA and a self-signed one of
// its own, and a mesh started on the latter would need a disruptive switch. Everything
// else is applied meanwhile. Once an istiod runs, it is never held back again.
func (r *MeshControlPlaneReconciler) awaitCA(ctx context.Context, s *scope) (ctrl.Result, error) {
	if slices.ContainsFunc(s.live, func(l apply.Live) bool { return installsIstiod(l.Inventory) && l.GVK.Kind == "Deployment" }) {
		return ctrl.Result{}, nil
	}
	cacerts := &corev1.Secret{}
	err := r.Get(ctx, client.ObjectKey{Namespace: s.namespace, Name: CACertsSecret}, cacerts)
	switch {
	case err == nil && !leftover(cacerts, s.mcp):
		return ctrl.Result{}, nil
	case err == nil:
		// The previous control plane's, going with it: the CA controller issues a new one.
		log.FromContext(ctx).V(1).Info("cacerts is a deleted MeshControlPlane's; istiod waits for the new CA")
	case !apierrors.IsNotFound(err):
		// Also when the operator may not read Secrets in this namespace at all: the CA
		// controller's CAReady condition says so and how to fix it.
		log.FromContext(ctx).V(1).Info("cannot read cacerts; istiod waits", "error", err.Error())
	}
	s.desired = slices.DeleteFunc(s.desired, isIstiod)
	s.awaitingCA = true
	return ctrl.Result{}, nil
}

// isIstiod says whether a rendered object is an istiod Deployment, which awaitCA holds back.
func isIstiod(o render.Object) bool {
	return o.GetKind() == "Deployment" && o.Component == render.Istiod.Name
}

// applyObjects server-side applies each rendered object that is missing or has drifted,
// and nothing else: an unchanged object costs no request. Once a control plane runs, the
// changed objects are first validated with a server-side dry run, so that an object the
// apiserver rejects stops the change before any of it is written.
func (r *MeshControlPlaneReconciler) applyObjects(ctx context.Context, s *scope) (ctrl.Result, error) {
	logger := log.FromContext(ctx)
	installed := s.mcp.Status.Version != ""
	// An object missing while the spec is unchanged since the last reconcile was deleted:
	// a repair. After a spec change it may simply be new (two replicas add a disruption
	// budget), which is an update.
	specSeen := s.before.Status.ObservedGeneration == s.mcp.Generation
	// Nor is istiod missing when the last reconcile held it back for the mesh CA: this is
	// its first start.
	progressing := meta.FindStatusCondition(s.before.Status.Conditions, meshv1.ConditionProgressing)
	firstStart := progressing != nil && progressing.Reason == meshv1.ReasonCAWaiting
	var changed []render.Object
	repair := map[apply.Ref]bool{}
	for _, o := range s.desired {
		d, err := r.drifted(ctx, o.Unstructured)
		if err != nil {
			return ctrl.Result{}, fmt.Errorf("reading %s to compare it with the render: %w", apply.RefOf(o.Unstructured), err)
		}
		if d == apply.InSync {
			continue
		}
		changed = append(changed, o)
		repair[apply.RefOf(o.Unstructured)] = d == apply.Modified || (d == apply.Missing && installed && specSeen && !(firstStart && isIstiod(o)))
	}
	if installed && len(changed) > 1 {
		if o, err := r.applyInWaves(ctx, changed, func(o render.Object) error {
			_, err := r.applyOne(ctx, o, true)
			return err
		}); err != nil {
			return r.applyFailed(s, o.Unstructured, err)
		}
	}
	var mu sync.Mutex
	o, err := r.applyInWaves(ctx, changed, func(o render.Object) error {
		ref := apply.RefOf(o.Unstructured)
		obj, err := r.applyOne(ctx, o, false)
		if err != nil {
			return err
		}
		if ref.GVK.Kind == "CustomResourceDefinition" {
			r.crdGenerations.Store(ref.Name, obj.GetGeneration())
		}
		logger.V(1).Info("applied", "object", ref.String())
		mu.Lock()
		defer mu.Unlock()
		if s.written == nil {
			s.written = map[apply.Ref]*unstructured.Unstructured{}
		}
		s.written[ref] = obj
		s.applied = append(s.applied, ref)
		if repair[ref] {
			s.repaired = append(s.repaired, ref)
		}
		return nil
	})
	if err != nil {
		return r.applyFailed(s, o.Unstructured, err)
	}
	return ctrl.Result{}, nil
}

// applyConcurrency bounds the requests one lane of a reconcile has in flight.
const applyConcurrency = 16

// applyInWaves runs fn over objects in apply order: objects of one rank (identities, RBAC,
// configuration, then workloads, then webhooks) concurrently, and a rank only once every
// object of the ranks before it succeeded. CRDs go in a lane of their own, started at once
// and waited for at the end: nothing Capstan installs is an Istio resource, so nothing
// waits for them, and they are the slowest writes by far (the apiserver checks and
// publishes each schema), so the other ranks are written while the apiserver stores them.
// It returns the first object that failed, in apply order, and its error.
func (r *MeshControlPlaneReconciler) applyInWaves(ctx context.Context, objs []render.Object, fn func(render.Object) error) (render.Object, error) {
	var crds, rest []render.Object
	for _, o := range objs {
		if k, _ := render.Lookup(o.GroupVersionKind()); isCRD(k) {
			crds = append(crds, o)
		} else {
			rest = append(rest, o)
		}
	}
	crdErrs := make([]error, len(crds))
	var lane errgroup.Group
	lane.SetLimit(applyConcurrency)
	for i, o := range crds {
		lane.Go(func() error {
			crdErrs[i] = fn(o)
			return nil
		})
	}
	failed, err := r.applyRanks(ctx, rest, fn)
	_ = lane.Wait()
	for i, e := range crdErrs {
		if e != nil {
			return crds[i], e // CRDs come first in apply order
		}
	}
	return failed, err
}

// applyRanks runs fn over objects rank by rank, concurrently within a rank.
func (r *MeshControlPlaneReconciler) applyRanks(ctx context.Context, objs []render.Object, fn func(render.Object) error) (render.Object, error) {
	for start := 0; start < len(objs); {
		end := start + 1
		rank := render.Rank(objs[start].GroupVersionKind())
		for end < len(objs) && render.Rank(objs[end].GroupVersionKind()) == rank {
			end++
		}
		wave := objs[start:end]
		errs := make([]error, len(wave))
		g, _ := errgroup.WithContext(ctx)
		g.SetLimit(applyConcurrency)
		for i, o := range wave {
			g.Go(func() error {
				errs[i] = fn(o)
				return nil
			})
		}
		_ = g.Wait()
		for i, err := range errs {
			if err != nil {
				return wave[i], err
			}
		}
		start = end
	}
	return render.Object{}, nil
}

// rejected says whether the apiserver refused an object for its content. Server-side apply
// reports an object it cannot convert to its schema (a duplicate list key, a wrong type) as
// a 500 "failed to create typed patch object" rather than as Invalid.
func rejected(err error) bool {
	return apierrors.IsInvalid(err) || apierrors.IsBadRequest(err) ||
		(apierrors.IsInternalError(err) && strings.Contains(err.Error(), "failed to create typed patch object"))
}

// applyOne server-side applies desired, which it leaves as it is, and returns the
// apiserver's answer. The apiserver answers an apply with the whole stored object;
// Capstan reads back only the metadata (generation, labels) of everything but
// Deployments, whose status says whether istiod is ready. So it asks for the answer as
// metadata only: Istio's CRDs alone come back as about a megabyte of JSON otherwise, which
// the apiserver would encode and Capstan decode on every install. A metadata-only answer
// is returned as an object that holds only its metadata.
//
// The apiserver judges every field (fieldValidation=Strict): a field its schema does not
// know, such as a misspelt key in spec.values that a chart passes through, is refused with
// its path rather than dropped with a warning. The server's schema is the judge, not the
// types Capstan was compiled with: a newer server accepts newer fields, an older one
// refuses what it lacks instead of dropping it.
func (r *MeshControlPlaneReconciler) applyOne(ctx context.Context, desired render.Object, dryRun bool) (*unstructured.Unstructured, error) {
	body, err := desired.JSON()
	if err != nil {
		return nil, err
	}
	patch := client.RawPatch(types.ApplyPatchType, body)
	opts := []client.PatchOption{client.FieldOwner(apply.FieldManager), client.ForceOwnership, client.FieldValidation(metav1.FieldValidationStrict)}
	if dryRun {
		opts = append(opts, client.DryRunAll)
	}
	answer := &unstructured.Unstructured{}
	answer.SetGroupVersionKind(desired.GroupVersionKind())
	answer.SetNamespace(desired.GetNamespace())
	answer.SetName(desired.GetName())
	if desired.GetKind() == "Deployment" {
		return answer, r.Patch(ctx, answer, patch, opts...)
	}
	m := metadataOf(desired.GroupVersionKind())
	m.SetNamespace(desired.GetNamespace())
	m.SetName(desired.GetName())
	if err := r.Patch(ctx, m, patch, opts...); err != nil {
		return nil, err
	}
	answer.SetResourceVersion(m.ResourceVersion)
	answer.SetGeneration(m.Generation)
	answer.SetLabels(m.Labels)
	answer.SetAnnotations(m.Annotations)
	return answer, nil
}

// applyFailed reports a failed apply. An object the apiserver rejects as invalid comes from
// the spec (raw values, env, resources), so it waits for the spec to change; other errors
// are retried with backoff.
func (r *MeshControlPlaneReconciler) applyFailed(s *scope, o *unstructured.Unstructured, err error) (ctrl.Result, error) {
	ref := apply.RefOf(o)
	if rejected(err) {
		outcome := "so nothing was changed"
		if s.mcp.Status.Version == "" {
			outcome = "so the install stopped there"
		}
		s.fail(meshv1.ReasonApplyFailed, fmt.Errorf("the apiserver rejects the rendered %s, %s; check spec.values and spec.components: %w", ref, outcome, err), true)
		return ctrl.Result{}, nil
	}
	s.fail(meshv1.ReasonApplyFailed, fmt.Errorf("applying %s: %w", ref, err), false)
	return ctrl.Result{}, err
}

// drifted compares a desired object with Capstan's cached copy of it.
func (r *MeshControlPlaneReconciler) drifted(ctx context.Context, desired *unstructured.Unstructured) (apply.Drift, error) {
	key := client.ObjectKeyFromObject(desired)
	if desired.GetKind() == "CustomResourceDefinition" {
		live := crdMetadata()
		if err := r.Get(ctx, key, live); err != nil {
			return apply.Missing, client.IgnoreNotFound(err)
		}
		d := apply.MetadataDrift(desired, live)
		if applied, known := r.crdGenerations.Load(key.Name); d == apply.InSync && known && applied.(int64) != live.Generation {
			d = apply.Modified
		}
		return d, nil
	}
	live := &unstructured.Unstructured{}
	live.SetGroupVersionKind(desired.GroupVersionKind())
	if err := r.Get(ctx, key, live); err != nil {
		return apply.Missing, client.IgnoreNotFound(err)
	}
	d, field := apply.Diff(desired, live)
	if d != apply.InSync {
		log.FromContext(ctx).V(1).Info("drift", "object", apply.RefOf(desired).String(), "field", field)
	}
	return d, nil
}

// prune deletes, within each planned unit, the install's objects the render no longer
// contains. It never touches another controller's objects, nor a unit the plan does not
// name. CRDs are never pruned: deleting one deletes every object of its kind.
func (r *MeshControlPlaneReconciler) prune(ctx context.Context, s *scope) (ctrl.Result, error) {
	desired := slices.Clone(s.keep)
	for _, o := range s.desired {
		desired = append(desired, apply.RefOf(o.Unstructured))
	}
	units := []apply.Unit{{Component: apply.NamespaceComponent}}
	for _, u := range s.plan.Units {
		units = append(units, u.Key())
	}
	// A revision to remove is a unit planned with nothing in it: all its objects go, and
	// only its own (its inventory labels name it).
	for _, rev := range s.pruneRevisions {
		units = append(units, apply.Unit{Component: render.Istiod.Name, Revision: rev})
	}
	var removed []apply.Ref
	for _, ref := range apply.Prunable(desired, s.live, rankOf, apply.PruneOptions{Writer: apply.WriterInstall, Units: units, KeepCRDs: true}) {
		if err := r.deleteRef(ctx, ref); err != nil {
			return ctrl.Result{}, fmt.Errorf("pruning %s: %w", ref, err)
		}
		log.FromContext(ctx).Info("pruned", "object", ref.String())
		s.applied = append(s.applied, ref)
		removed = append(removed, ref)
	}
	if len(s.pruneRevisions) > 0 && len(removed) > 0 {
		r.Recorder.Eventf(s.mcp, nil, corev1.EventTypeNormal, meshv1.ReasonRevisionPruned, "Prune",
			"removed revision %s, unused for %s: %s", strings.Join(s.pruneRevisions, ", "), plan.GracePeriod(&s.mcp.Spec), describeRefs(removed))
	}
	return ctrl.Result{}, nil
}

// observe reads the readiness of every Deployment of the install into status: those the
// cluster holds and those the plan wants. A Deployment written in this reconcile is judged
// by the apiserver's answer to that write, never by the cache, which may still hold the
// previous spec with all its replicas available. It runs after a failure too, for Ready
// says whether the last good state still serves.
func (r *MeshControlPlaneReconciler) observe(ctx context.Context, s *scope) (ctrl.Result, error) {
	gvk := appsv1.SchemeGroupVersion.WithKind("Deployment")
	refs := map[apply.Ref]bool{}
	l := &unstructured.UnstructuredList{}
	l.SetGroupVersionKind(gvk.GroupVersion().WithKind("DeploymentList"))
	if err := r.List(ctx, l, client.MatchingLabels{apply.ManagedByLabel: apply.ManagedByValue}); err != nil {
		return ctrl.Result{}, fmt.Errorf("listing the control plane's Deployments: %w", err)
	}
	live := map[apply.Ref]*unstructured.Unstructured{}
	for i := range l.Items {
		d := &l.Items[i]
		if inv, ok := apply.InventoryOf(d.GetLabels()); ok && inv.Writer == apply.WriterInstall && d.GetDeletionTimestamp() == nil {
			ref := apply.RefOf(d)
			refs[ref], live[ref] = true, d
		}
	}
	if s.failure == nil {
		// After a failure, Ready asks whether what was applied before serves: a Deployment
		// the failed change would have added is not part of that.
		for _, o := range s.desired {
			if o.GetKind() == "Deployment" {
				refs[apply.RefOf(o.Unstructured)] = true
			}
		}
	}
	var components []meshv1.ComponentStatus
	istiodReady := map[string]bool{} // by revision: every istiod Deployment of it is ready
	for _, ref := range slices.SortedFunc(maps.Keys(refs), func(a, b apply.Ref) int { return strings.Compare(a.String(), b.String()) }) {
		dep := s.written[ref]
		if dep == nil {
			dep = live[ref]
		}
		var c meshv1.ComponentStatus
		if dep == nil {
			c = meshv1.ComponentStatus{Name: ref.Name, DesiredReplicas: 1}
			for _, o := range s.desired {
				if apply.RefOf(o.Unstructured) == ref {
					dep = o.Unstructured // not applied yet: its labels say which unit it is
				}
			}
		} else {
			d := &appsv1.Deployment{}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(dep.Object, d); err != nil {
				return ctrl.Result{}, fmt.Errorf("reading %s: %w", ref, err)
			}
			c = deploymentStatus(ref.Name, d)
		}
		components = append(components, c)
		if dep == nil {
			continue
		}
		if inv, ok := apply.InventoryOf(dep.GetLabels()); ok && installsIstiod(inv) {
			ready, seen := istiodReady[inv.Revision]
			istiodReady[inv.Revision] = c.Ready && (ready || !seen)
		}
	}
	s.mcp.Status.Components = components
	var revisions []meshv1.RevisionStatus
	for _, rev := range slices.Sorted(maps.Keys(istiodReady)) {
		revisions = append(revisions, r.revisionStatus(s, rev, istiodReady[rev]))
	}
	mergeRevisions(&s.mcp.Status, revisions)
	s.observed = true
	return ctrl.Result{}, nil
}

// revisionStatus is the install's view of one installed revision: its version and tags as
// applied (the plan's, once applied; until then, as they were), and whether it is Ready.
func (r *MeshControlPlaneReconciler) revisionStatus(s *scope, rev string, ready bool) meshv1.RevisionStatus {
	st := meshv1.RevisionStatus{Name: rev, Ready: ptr.To(ready)}
	if i := slices.IndexFunc(s.before.Status.Revisions, func(x meshv1.RevisionStatus) bool { return x.Name == rev }); i >= 0 {
		st.Version, st.Tags = s.before.Status.Revisions[i].Version, s.before.Status.Revisions[i].Tags
	}
	if v, planned := s.plan.Layout.Versions[rev]; planned && s.failure == nil {
		st.Version, st.Tags = v, s.plan.Layout.Tags[rev]
	}
	if st.Version == "" && rev == apply.DefaultRevision {
		st.Version = s.mcp.Status.Version
	}
	return st
}

// mergeRevisions sets the install's fields (version, ready) of status.revisions to ours,
// keeping the data plane's, and drops the install's fields of revisions no longer
// installed.
func mergeRevisions(st *meshv1.MeshControlPlaneStatus, ours []meshv1.RevisionStatus) {
	out := make([]meshv1.RevisionStatus, 0, len(ours))
	for _, o := range ours {
		if i := slices.IndexFunc(st.Revisions, func(r meshv1.RevisionStatus) bool { return r.Name == o.Name }); i >= 0 {
			o.InUse, o.Pods, o.Namespaces, o.UnusedSince = st.Revisions[i].InUse, st.Revisions[i].Pods, st.Revisions[i].Namespaces, st.Revisions[i].UnusedSince
		}
		out = append(out, o)
	}
	for _, r := range st.Revisions {
		if !slices.ContainsFunc(ours, func(o meshv1.RevisionStatus) bool { return o.Name == r.Name }) && r.InUse != "" {
			out = append(out, meshv1.RevisionStatus{Name: r.Name, InUse: r.InUse, Pods: r.Pods, Namespaces: r.Namespaces, UnusedSince: r.UnusedSince})
		}
	}
	st.Revisions = out
}

// deploymentStatus says whether a Deployment has rolled out its current spec and has every
// replica available.
func deploymentStatus(name string, d *appsv1.Deployment) meshv1.ComponentStatus {
	desired := int32(1)
	if d.Spec.Replicas != nil {
		desired = *d.Spec.Replicas
	}
	st := d.Status
	return meshv1.ComponentStatus{
		Name:            name,
		DesiredReplicas: desired,
		ReadyReplicas:   st.AvailableReplicas,
		Ready: st.ObservedGeneration >= d.Generation && st.UpdatedReplicas == desired &&
			st.AvailableReplicas >= desired && st.Replicas == st.UpdatedReplicas,
	}
}

// removeInstalled deletes everything Capstan installed, CRDs only when the resource asks.
func (r *MeshControlPlaneReconciler) removeInstalled(ctx context.Context, s *scope) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(s.mcp, Finalizer) {
		s.stop = true
		return ctrl.Result{}, nil
	}
	live, err := r.listOwned(ctx)
	if err != nil {
		return ctrl.Result{}, err
	}
	keepCRDs := s.mcp.Spec.Uninstall == nil || !s.mcp.Spec.Uninstall.RemoveCRDs
	var errs []error
	for _, ref := range apply.Prunable(nil, live, rankOf, apply.PruneOptions{Writer: apply.WriterInstall, KeepCRDs: keepCRDs}) {
		if err := r.deleteRef(ctx, ref); err != nil {
			errs = append(errs, fmt.Errorf("deleting %s: %w", ref, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		s.fail(meshv1.ReasonUninstallFailed, err, false)
		return ctrl.Result{}, err
	}
	r.Recorder.Eventf(s.mcp, nil, corev1.EventTypeNormal, meshv1.ReasonUninstalled, "Uninstall", "removed %d objects; Istio CRDs kept: %t", len(live), keepCRDs)
	return ctrl.Result{}, nil
}

func (r *MeshControlPlaneReconciler) releaseFinalizer(ctx context.Context, s *scope) (ctrl.Result, error) {
	patch := client.MergeFrom(s.mcp.DeepCopy())
	controllerutil.RemoveFinalizer(s.mcp, Finalizer)
	if err := r.Patch(ctx, s.mcp, patch); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	s.released = true
	return ctrl.Result{}, nil
}

// listOwned lists, from the cache, every object of a managed kind that carries Capstan's
// inventory labels and is not already being deleted.
func (r *MeshControlPlaneReconciler) listOwned(ctx context.Context) ([]apply.Live, error) {
	sel := client.MatchingLabels{apply.ManagedByLabel: apply.ManagedByValue}
	var out []apply.Live
	add := func(k render.Kind, o metav1.Object) {
		if inv, ok := apply.InventoryOf(o.GetLabels()); ok && o.GetDeletionTimestamp() == nil {
			out = append(out, apply.Live{Ref: refFor(k, o), Inventory: inv})
		}
	}
	for _, k := range render.Kinds {
		if metadataOnly(k) {
			l := &metav1.PartialObjectMetadataList{}
			l.SetGroupVersionKind(k.GroupVersion().WithKind(k.Kind + "List"))
			if err := r.List(ctx, l, sel); err != nil {
				return nil, fmt.Errorf("listing %s objects: %w", k.Kind, err)
			}
			for i := range l.Items {
				add(k, &l.Items[i])
			}
			continue
		}
		l := &unstructured.UnstructuredList{}
		l.SetGroupVersionKind(k.GroupVersion().WithKind(k.Kind + "List"))
		if err := r.List(ctx, l, sel); err != nil {
			return nil, fmt.Errorf("listing %s objects: %w", k.Kind, err)
		}
		for i := range l.Items {
			add(k, &l.Items[i])
		}
	}
	return out, nil
}

func refFor(k render.Kind, o metav1.Object) apply.Ref {
	ref := apply.Ref{GVK: k.GroupVersionKind}
	ref.Namespace, ref.Name = o.GetNamespace(), o.GetName()
	return ref
}

func (r *MeshControlPlaneReconciler) deleteRef(ctx context.Context, ref apply.Ref) error {
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(ref.GVK)
	m.SetNamespace(ref.Namespace)
	m.SetName(ref.Name)
	return client.IgnoreNotFound(r.Delete(ctx, m, client.PropagationPolicy(metav1.DeletePropagationBackground)))
}

func rankOf(ref apply.Ref) int { return render.Rank(ref.GVK) }

// describeRefs names at most a few objects, for events and messages that stay short.
func describeRefs(refs []apply.Ref) string {
	names := make([]string, len(refs))
	for i, r := range refs {
		names[i] = r.String()
	}
	return listSome(names)
}

// listSome lists up to five names, and counts the rest, for Events and messages.
func listSome(names []string) string {
	const most = 5
	if len(names) <= most {
		return strings.Join(names, ", ")
	}
	return strings.Join(names[:most], ", ") + fmt.Sprintf(", and %d more", len(names)-most)
}
