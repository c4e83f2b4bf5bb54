package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/apply"
	"github.com/capstan-mesh/capstan/internal/render"
	"github.com/capstan-mesh/capstan/internal/values"
)

// phaseFunc is one step of a reconcile. It sets s.stop to end the reconcile early.
type phaseFunc func(context.Context, *scope) (ctrl.Result, error)

// scope is what the phases of one reconcile share.
type scope struct {
	mcp    *meshv1.MeshControlPlane
	before *meshv1.MeshControlPlane

	namespace string
	desired   []render.Object
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
	// awaitingCA: istiod is held back until the mesh CA is issued.
	awaitingCA bool
	// released is set once the finalizer is gone and the object may no longer exist.
	released bool
}

// failure is why the declared state cannot be reached, for the Degraded condition.
type failure struct {
	reason  string
	message string
	// terminal failures wait for a spec change; others are retried with backoff.
	terminal bool
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

// plan turns the spec into the objects to apply. It touches nothing in the cluster: a spec
// the charts reject stops here, and what runs keeps running.
func (r *MeshControlPlaneReconciler) plan(_ context.Context, s *scope) (ctrl.Result, error) {
	spec := &s.mcp.Spec
	s.namespace = spec.Namespace
	if s.namespace == "" {
		s.namespace = "istio-system"
	}
	vals, err := values.For(spec)
	if err != nil {
		s.fail(meshv1.ReasonInvalidSpec, err, true)
		return ctrl.Result{}, nil
	}
	objs, err := render.Render(render.Input{Values: vals, Namespace: s.namespace, KubeVersion: r.KubeVersion, Revision: apply.DefaultRevision})
	if err != nil {
		s.fail(meshv1.ReasonRenderFailed, fmt.Errorf("spec.values or the typed fields give values Istio's charts reject (nothing was changed): %w", err), true)
		return ctrl.Result{}, nil
	}
	s.desired = objs
	return ctrl.Result{}, nil
}

// watchKinds starts watching the optional kinds the render contains and Capstan does not
// watch yet, before any object of theirs is read or written: drift in them must reach
// the controller, and prune must find them in the cache.
func (r *MeshControlPlaneReconciler) watchKinds(ctx context.Context, s *scope) (ctrl.Result, error) {
	return ctrl.Result{}, r.watches.ensure(ctx, s.desired)
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
		return ctrl.Result{}, err
	}
	created := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: s.namespace, Labels: map[string]string{
		apply.ManagedByLabel: apply.ManagedByValue,
		apply.ComponentLabel: apply.NamespaceComponent,
		apply.RevisionLabel:  apply.DefaultRevision,
	}}}
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
// else is applied meanwhile. Once istiod runs, it is never held back again.
func (r *MeshControlPlaneReconciler) awaitCA(ctx context.Context, s *scope) (ctrl.Result, error) {
	dep := &unstructured.Unstructured{}
	dep.SetGroupVersionKind(appsv1.SchemeGroupVersion.WithKind("Deployment"))
	if err := r.Get(ctx, client.ObjectKey{Namespace: s.namespace, Name: "istiod"}, dep); err == nil {
		return ctrl.Result{}, nil
	} else if !apierrors.IsNotFound(err) {
		return ctrl.Result{}, err
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

// isIstiod says whether a rendered object is istiod's Deployment, which awaitCA holds back.
func isIstiod(o render.Object) bool {
	return o.GetKind() == "Deployment" && o.GetName() == "istiod"
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
			return ctrl.Result{}, err
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
// The apiserver is asked not to check the body for fields it does not know
// (fieldValidation=Ignore): the render has already decoded every object strictly against
// the same Kubernetes types and refused any such field (render.checkFields). Left on, the
// check is a second YAML parse of every body, as costly as the first: about a tenth of a
// second of the apiserver's CPU for Istio's CRDs, on the path of every install.
func (r *MeshControlPlaneReconciler) applyOne(ctx context.Context, desired render.Object, dryRun bool) (*unstructured.Unstructured, error) {
	body, err := desired.JSON()
	if err != nil {
		return nil, err
	}
	patch := client.RawPatch(types.ApplyPatchType, body)
	opts := []client.PatchOption{client.FieldOwner(apply.FieldManager), client.ForceOwnership, client.FieldValidation(metav1.FieldValidationIgnore)}
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
		s.fail(meshv1.ReasonApplyFailed, fmt.Errorf("the apiserver rejects the rendered %s, so nothing was changed; check spec.values and spec.components: %w", ref, err), true)
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

// prune deletes the objects Capstan owns that the render no longer contains. CRDs are
// never pruned: deleting one deletes every object of its kind.
func (r *MeshControlPlaneReconciler) prune(ctx context.Context, s *scope) (ctrl.Result, error) {
	live, err := r.listOwned(ctx)
	if err != nil {
		return ctrl.Result{}, err
	}
	desired := slices.Clone(s.keep)
	for _, o := range s.desired {
		desired = append(desired, apply.RefOf(o.Unstructured))
	}
	for _, ref := range apply.Prunable(desired, live, rankOf, apply.PruneOptions{KeepCRDs: true}) {
		if err := r.deleteRef(ctx, ref); err != nil {
			s.fail(meshv1.ReasonApplyFailed, fmt.Errorf("pruning %s: %w", ref, err), false)
			return ctrl.Result{}, err
		}
		log.FromContext(ctx).Info("pruned", "object", ref.String())
		s.applied = append(s.applied, ref)
	}
	return ctrl.Result{}, nil
}

// observe reads the components' readiness into status. A Deployment written in this
// reconcile is judged by the apiserver's answer to that write, never by the cache, which
// may still hold the previous spec with all its replicas available.
func (r *MeshControlPlaneReconciler) observe(ctx context.Context, s *scope) (ctrl.Result, error) {
	gvk := appsv1.SchemeGroupVersion.WithKind("Deployment")
	ref := apply.Ref{GVK: gvk}
	ref.Namespace, ref.Name = s.namespace, "istiod"
	cs := meshv1.ComponentStatus{Name: "istiod"}
	var err error
	dep := s.written[ref]
	if dep == nil {
		dep = &unstructured.Unstructured{}
		dep.SetGroupVersionKind(gvk)
		err = r.Get(ctx, ref.NamespacedName, dep)
	}
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return ctrl.Result{}, err
	default:
		d := &appsv1.Deployment{}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(dep.Object, d); err != nil {
			return ctrl.Result{}, fmt.Errorf("reading Deployment %s/istiod: %w", s.namespace, err)
		}
		cs = deploymentStatus("istiod", d)
	}
	s.mcp.Status.Components = []meshv1.ComponentStatus{cs}
	s.mcp.Status.Version = s.mcp.Spec.Version
	return ctrl.Result{}, nil
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
	for _, ref := range apply.Prunable(nil, live, rankOf, apply.PruneOptions{KeepCRDs: keepCRDs}) {
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

// listOwned lists, from the cache, every object carrying Capstan's inventory labels that is
// not already being deleted. Capstan owns objects only of the kinds it watches; the first
// call of a process also looks in the cluster for objects of optional kinds it does not
// watch yet (see kindWatches).
func (r *MeshControlPlaneReconciler) listOwned(ctx context.Context) ([]apply.Ref, error) {
	if err := r.watches.checkCluster(ctx); err != nil {
		return nil, err
	}
	sel := client.MatchingLabels{apply.ManagedByLabel: apply.ManagedByValue}
	var refs []apply.Ref
	for _, k := range r.watches.kinds() {
		if metadataOnly(k) {
			l := &metav1.PartialObjectMetadataList{}
			l.SetGroupVersionKind(k.GroupVersion().WithKind(k.Kind + "List"))
			if err := r.List(ctx, l, sel); err != nil {
				return nil, fmt.Errorf("listing %s: %w", k.Kind, err)
			}
			for i := range l.Items {
				if deletable(&l.Items[i]) {
					refs = append(refs, refFor(k, &l.Items[i]))
				}
			}
			continue
		}
		l := &unstructured.UnstructuredList{}
		l.SetGroupVersionKind(k.GroupVersion().WithKind(k.Kind + "List"))
		if err := r.List(ctx, l, sel); err != nil {
			return nil, fmt.Errorf("listing %s: %w", k.Kind, err)
		}
		for i := range l.Items {
			if deletable(&l.Items[i]) {
				refs = append(refs, refFor(k, &l.Items[i]))
			}
		}
	}
	return refs, nil
}

func deletable(o metav1.Object) bool {
	return apply.Owned(o.GetLabels()) && o.GetDeletionTimestamp() == nil
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
	const most = 5
	names := make([]string, 0, most)
	for i, r := range refs {
		if i == most {
			names = append(names, fmt.Sprintf("and %d more", len(refs)-most))
			break
		}
		names = append(names, r.String())
	}
	return strings.Join(names, ", ")
}
