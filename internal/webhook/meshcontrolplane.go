// Package webhook holds the MeshControlPlane admission checks that CEL cannot express,
// because they compare the new spec with what runs or with where the operator runs:
// which Istio versions this Capstan can install, how far one change may move the version,
// and that the control plane does not share the operator's namespace.
package webhook

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/values"
	"github.com/capstan-mesh/capstan/internal/version"
)

// Path is where the validating webhook is served, as controller-runtime derives it.
const Path = "/validate-mesh-capstan-dev-v1alpha1-meshcontrolplane"

// +kubebuilder:webhook:path=/validate-mesh-capstan-dev-v1alpha1-meshcontrolplane,mutating=false,failurePolicy=fail,sideEffects=None,groups=mesh.capstan.dev,resources=meshcontrolplanes,verbs=create;update,versions=v1alpha1,name=vmeshcontrolplane.mesh.capstan.dev,admissionReviewVersions=v1

// Validator checks MeshControlPlanes at admission.
type Validator struct {
	// OperatorNamespace is the namespace the operator runs in (the pod's POD_NAMESPACE),
	// which the control plane may not share; "" when unknown, which skips that check.
	OperatorNamespace string
}

var _ admission.Validator[*meshv1.MeshControlPlane] = Validator{}

// SetupWithManager serves v on the manager's webhook server.
func SetupWithManager(mgr ctrl.Manager, v Validator) error {
	return ctrl.NewWebhookManagedBy(mgr, &meshv1.MeshControlPlane{}).WithValidator(v).Complete()
}

// ValidateCreate refuses a version this Capstan cannot install, and the operator's own
// namespace for the control plane.
func (v Validator) ValidateCreate(_ context.Context, m *meshv1.MeshControlPlane) (admission.Warnings, error) {
	return nil, invalid(m, checkVersion(m.Spec.Version, ""), v.checkNamespace(m), checkSelector(m))
}

// ValidateUpdate also refuses a version change that skips a minor release or goes back
// further than the oldest Istio version running. What did not change is left alone, even
// when it has become invalid: the controller reports it, and the update may be the one
// that removes the finalizer of a deleted control plane.
func (v Validator) ValidateUpdate(_ context.Context, old, m *meshv1.MeshControlPlane) (admission.Warnings, error) {
	var errs []*field.Error
	if old.Spec.Version != m.Spec.Version {
		errs = append(errs, checkVersion(m.Spec.Version, oldestRunning(old)))
	}
	if values.Namespace(&old.Spec) != values.Namespace(&m.Spec) {
		errs = append(errs, v.checkNamespace(m)) // the CRD refuses the change already
	}
	if !equality.Semantic.DeepEqual(selectorOf(old), selectorOf(m)) {
		errs = append(errs, checkSelector(m))
	}
	if strategyOf(old) != strategyOf(m) {
		errs = append(errs, checkStrategy(m))
	}
	return nil, invalid(m, errs...)
}

// ValidateDelete allows every deletion: removing the control plane is always possible.
func (Validator) ValidateDelete(context.Context, *meshv1.MeshControlPlane) (admission.Warnings, error) {
	return nil, nil
}

// oldestRunning is the oldest Istio version whose objects are applied ("" when none are):
// status.version, or an older revision still installed beside it.
func oldestRunning(m *meshv1.MeshControlPlane) string {
	oldest := m.Status.Version
	for _, r := range m.Status.Revisions {
		if r.Version != "" && (oldest == "" || version.Less(r.Version, oldest)) {
			oldest = r.Version
		}
	}
	return oldest
}

var versionPath = field.NewPath("spec", "version")

// checkVersion applies the version rules to a requested version, given the oldest version
// running ("" on a fresh install).
func checkVersion(want, running string) *field.Error {
	if want == "" {
		return nil // the CRD's default applies
	}
	if err := version.Supported(want); err != nil {
		return field.Invalid(versionPath, want, err.Error())
	}
	if running == "" {
		return nil
	}
	rmaj, rmin, _, err := version.Parse(running)
	if err != nil {
		return nil // nothing sane runs; let the controller report it
	}
	wmaj, wmin, _, _ := version.Parse(want)
	switch {
	case wmaj != rmaj:
		return field.Invalid(versionPath, want, fmt.Sprintf("Istio %s runs; a change of major version is not supported", running))
	case wmin > rmin+1:
		return field.Invalid(versionPath, want, fmt.Sprintf("Istio %s runs; upgrade one minor version at a time (to %d.%d.x first)", running, rmaj, rmin+1))
	case wmin < rmin:
		return field.Invalid(versionPath, want, fmt.Sprintf("Istio %s is the oldest version running; a downgrade to an older minor version is not supported", running))
	}
	return nil
}

var strategyPath = field.NewPath("spec", "upgrade", "strategy")

func strategyOf(m *meshv1.MeshControlPlane) meshv1.UpgradeStrategy {
	if m.Spec.Upgrade == nil {
		return ""
	}
	return m.Spec.Upgrade.Strategy
}

// checkStrategy refuses InPlace while a revision other than the in-place one runs: the
// in-place istiod would be a second control plane beside it, and no migration moves
// workloads back to it. RevisionBased is always allowed (from InPlace it is a canary
// upgrade from the revision default).
func checkStrategy(m *meshv1.MeshControlPlane) *field.Error {
	if strategyOf(m) != meshv1.UpgradeInPlace {
		return nil
	}
	for _, r := range m.Status.Revisions {
		if r.Name != "default" && (r.Version != "" || r.Ready != nil) {
			return field.Forbidden(strategyPath, fmt.Sprintf("revision %s runs; InPlace runs only the revision default. Keep RevisionBased: an unused revision is removed after spec.upgrade.inactiveRevisionGracePeriod", r.Name))
		}
	}
	return nil
}

var namespacePath = field.NewPath("spec", "namespace")

// checkNamespace refuses the operator's own namespace for the control plane. The CRD
// refuses Kubernetes' own namespaces; values.CheckNamespace refuses both, again, for
// objects stored before.
func (v Validator) checkNamespace(m *meshv1.MeshControlPlane) *field.Error {
	if v.OperatorNamespace == "" {
		return nil
	}
	if err := values.CheckNamespace(&m.Spec, v.OperatorNamespace); err != nil {
		var fe *values.FieldError
		if errors.As(err, &fe) {
			return field.Forbidden(namespacePath, fe.Detail)
		}
		return field.Forbidden(namespacePath, err.Error())
	}
	return nil
}

var selectorPath = field.NewPath("spec", "injection", "namespaceSelector")

func selectorOf(m *meshv1.MeshControlPlane) *metav1.LabelSelector {
	if m.Spec.Injection == nil {
		return nil
	}
	return m.Spec.Injection.NamespaceSelector
}

// checkSelector refuses a namespace selector that certainly selects the control plane's
// namespace, whatever labels that namespace carries: one whose every requirement holds
// for a namespace labelled with its name alone, and none of which an extra label could
// break (no NotIn, no DoesNotExist). The empty selector, which selects every namespace, is
// one. A selector that selects it only through labels the namespace happens to carry
// cannot be told here; the controller leaves that namespace unlabelled and says so in the
// InjectionConfigured condition.
func checkSelector(m *meshv1.MeshControlPlane) *field.Error {
	sel := selectorOf(m)
	if sel == nil {
		return nil
	}
	ls, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return field.Invalid(selectorPath, sel.String(), err.Error())
	}
	for _, e := range sel.MatchExpressions {
		if e.Operator == metav1.LabelSelectorOpNotIn || e.Operator == metav1.LabelSelectorOpDoesNotExist {
			return nil
		}
	}
	ns := values.Namespace(&m.Spec)
	if ls.Matches(labels.Set{corev1.LabelMetadataName: ns}) {
		return field.Forbidden(selectorPath, fmt.Sprintf("it selects the control plane's namespace %s (an empty selector selects every namespace); "+
			"Capstan never labels that namespace for injection: select the application namespaces by a label of theirs", ns))
	}
	return nil
}

func invalid(m *meshv1.MeshControlPlane, ferrs ...*field.Error) error {
	var list field.ErrorList
	for _, e := range ferrs {
		if e != nil {
			list = append(list, e)
		}
	}
	if len(list) == 0 {
		return nil
	}
	return apierrors.NewInvalid(schema.GroupKind{Group: meshv1.GroupVersion.Group, Kind: "MeshControlPlane"}, m.Name, list)
}
