package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/apply"
	"github.com/capstan-mesh/capstan/internal/revision"
	"github.com/capstan-mesh/capstan/internal/values"
)

// InjectionLabelledAnnotation marks a namespace Capstan labelled for injection; its value
// is the label Capstan set, as key=value (istio-injection=enabled, istio.io/rev=1-31-1).
// Only a label so marked, and still holding that value, is ever moved or removed by
// Capstan.
const InjectionLabelledAnnotation = "capstan.dev/injection-labelled"

// namespaceSelectorField is the spec field the InjectionConfigured condition is about.
const namespaceSelectorField = "spec.injection.namespaceSelector"

// injectionLabel is the label that puts a namespace's new pods on a revision: for the
// in-place revision istio-injection=enabled, for any other istio.io/rev=<revision>.
func injectionLabel(rev string) (key, value string) {
	if rev == "" || rev == apply.DefaultRevision {
		return revision.InjectionLabel, "enabled"
	}
	return revision.RevLabel, rev
}

// namespaceWant is what the selector says of one namespace.
type namespaceWant struct {
	// Selected: the selector matches the namespace and it is not excluded.
	Selected bool
	// Revision is the revision a selected namespace is labelled for.
	Revision string
}

// namespaceLabelPatch is the one merge patch of a namespace's metadata that brings its
// injection label to what is wanted, or nil when it already is. A selected namespace with
// neither injection label gets Capstan's label and marker; a selected namespace whose label
// Capstan set, and which still has the value Capstan set, is moved to the wanted revision
// (a canary upgrade's move); a namespace no longer selected that carries the marker loses
// the label, if it still has the value Capstan set, and the marker. A label Capstan did not
// set, or that someone changed since, is never touched.
func namespaceLabelPatch(nsLabels, nsAnnotations map[string]string, want namespaceWant) []byte {
	markKey, markValue, isMarked := capstanLabel(nsAnnotations)
	ours := isMarked && markValue != "" && nsLabels[markKey] == markValue
	md := map[string]any{}
	key, value := injectionLabel(want.Revision)
	_, hasInjection := nsLabels[revision.InjectionLabel]
	_, hasRev := nsLabels[revision.RevLabel]
	switch {
	case want.Selected && !hasInjection && !hasRev:
		md["labels"] = map[string]any{key: value}
		md["annotations"] = map[string]any{InjectionLabelledAnnotation: key + "=" + value}
	case want.Selected && ours && (markKey != key || markValue != value):
		labels := map[string]any{key: value}
		if markKey != key {
			labels[markKey] = nil
		}
		md["labels"] = labels
		md["annotations"] = map[string]any{InjectionLabelledAnnotation: key + "=" + value}
	case want.Selected || !isMarked:
		return nil // labelled as wanted, or by its owner
	default:
		if ours {
			md["labels"] = map[string]any{markKey: nil}
		}
		md["annotations"] = map[string]any{InjectionLabelledAnnotation: nil}
	}
	b, err := json.Marshal(map[string]any{"metadata": md})
	if err != nil {
		panic(err) // maps of strings and nils always marshal
	}
	return b
}

// capstanLabel is the label Capstan's marker says it set: "key=value", or, as Capstan
// marked namespaces before it moved them between revisions, the key alone, whose value was
// "enabled" for istio-injection (the only one it set then); "" for a value not known.
func capstanLabel(nsAnnotations map[string]string) (key, value string, marked bool) {
	mark, marked := nsAnnotations[InjectionLabelledAnnotation]
	if !marked {
		return "", "", false
	}
	if k, v, ok := strings.Cut(mark, "="); ok {
		return k, v, true
	}
	if mark == revision.InjectionLabel {
		return mark, "enabled", true
	}
	return mark, "", true
}

// excludedNamespaces are the namespaces the selector is never applied to: the control
// plane's, Kubernetes' own and the operator's.
func excludedNamespaces(controlPlane, operator string) []string {
	out := append([]string{controlPlane}, values.ReservedNamespaces...)
	if operator != "" {
		out = append(out, operator)
	}
	return out
}

// reconcileInjectionLabels labels the namespaces spec.injection.namespaceSelector selects
// and unlabels the ones Capstan labelled that it no longer selects, one patch per
// namespace that needs one, and sets InjectionConfigured. It does nothing while the spec
// cannot be planned: without the revision and the control-plane namespace, no label is
// known to be right or wrong.
func (r *DataPlaneReconciler) reconcileInjectionLabels(ctx context.Context, s *dataPlaneScope) (err error) {
	if s.planErr != nil || s.revision == "" {
		return nil
	}
	// The pass depends on the spec (and whether it is being deleted), what was planned
	// from it and the namespaces: when none of them changed since the last complete pass,
	// its outcome, InjectionConfigured included, stands.
	key := fmt.Sprintf("%s@%d@%t@%s@%s@%s", s.mcp.UID, s.mcp.Generation, s.mcp.DeletionTimestamp.IsZero(), s.revision, s.cpNamespace, s.upgrade.labelsKey())
	r.mu.Lock()
	skip := !r.namespacesChanged && r.labelledFor == key
	r.namespacesChanged = false
	r.mu.Unlock()
	if skip {
		return nil
	}
	defer func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if err != nil {
			r.namespacesChanged = true
		} else {
			r.labelledFor = key
		}
	}()
	excluded := excludedNamespaces(s.cpNamespace, r.OperatorNamespace)
	var selector labels.Selector // nil: no namespace is selected (none set, or deleting)
	var sel *metav1.LabelSelector
	if s.mcp.Spec.Injection != nil && s.mcp.DeletionTimestamp.IsZero() {
		sel = s.mcp.Spec.Injection.NamespaceSelector
	}
	if sel != nil {
		parsed, err := metav1.LabelSelectorAsSelector(sel)
		if err != nil {
			setCondition(s.mcp, meshv1.ConditionInjectionConfigured, metav1.ConditionFalse, meshv1.ReasonInvalidSelector,
				fmt.Sprintf("%s: %v; no namespace is labelled or unlabelled until it is fixed", namespaceSelectorField, err))
			return nil
		}
		selector = parsed
	}
	list := &metav1.PartialObjectMetadataList{}
	list.SetGroupVersionKind(namespaceGVK.GroupVersion().WithKind("NamespaceList"))
	if err := r.List(ctx, list); err != nil {
		return fmt.Errorf("listing namespaces: %w", err)
	}
	var refused []string
	for i := range list.Items {
		ns := &list.Items[i]
		matches := selector != nil && selector.Matches(labels.Set(ns.Labels))
		never := slices.Contains(excluded, ns.Name)
		if matches && never {
			refused = append(refused, ns.Name)
		}
		patch := namespaceLabelPatch(ns.Labels, ns.Annotations, namespaceWant{Selected: matches && !never, Revision: s.upgrade.revisionFor(ns.Name, s.revision)})
		if patch == nil || !ns.DeletionTimestamp.IsZero() {
			continue
		}
		if err := r.Patch(ctx, ns, client.RawPatch(types.MergePatchType, patch)); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("namespace %s: %w", ns.Name, err)
		}
		ctrl.LoggerFrom(ctx).Info("namespace injection label", "namespace", ns.Name, "patch", string(patch))
	}
	switch {
	case sel == nil:
		meta.RemoveStatusCondition(&s.mcp.Status.Conditions, meshv1.ConditionInjectionConfigured)
	case len(refused) > 0:
		slices.Sort(refused)
		setCondition(s.mcp, meshv1.ConditionInjectionConfigured, metav1.ConditionFalse, meshv1.ReasonSelectorMatchesControlPlane,
			fmt.Sprintf("%s selects %s, which Capstan never labels for injection (the control plane's, Kubernetes' or the operator's namespace); narrow the selector. The other selected namespaces are labelled",
				namespaceSelectorField, strings.Join(refused, ", ")))
	default:
		setCondition(s.mcp, meshv1.ConditionInjectionConfigured, metav1.ConditionTrue, meshv1.ReasonNamespacesLabelled,
			fmt.Sprintf("every namespace %s selects is labelled for injection", namespaceSelectorField))
	}
	return nil
}
