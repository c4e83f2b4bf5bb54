// Package webhook holds the MeshControlPlane admission checks that CEL cannot express,
// because they compare the new spec with what runs: which Istio versions this Capstan can
// install, and how far one change may move the version.
package webhook

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/version"
)

// Path is where the validating webhook is served, as controller-runtime derives it.
const Path = "/validate-mesh-capstan-dev-v1alpha1-meshcontrolplane"

// +kubebuilder:webhook:path=/validate-mesh-capstan-dev-v1alpha1-meshcontrolplane,mutating=false,failurePolicy=fail,sideEffects=None,groups=mesh.capstan.dev,resources=meshcontrolplanes,verbs=create;update,versions=v1alpha1,name=vmeshcontrolplane.mesh.capstan.dev,admissionReviewVersions=v1

// Validator checks MeshControlPlanes at admission.
type Validator struct{}

var _ admission.Validator[*meshv1.MeshControlPlane] = Validator{}

// SetupWithManager serves the validator on the manager's webhook server.
func SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewWebhookManagedBy(mgr, &meshv1.MeshControlPlane{}).WithValidator(Validator{}).Complete()
}

// ValidateCreate refuses a version this Capstan cannot install.
func (Validator) ValidateCreate(_ context.Context, m *meshv1.MeshControlPlane) (admission.Warnings, error) {
	return nil, invalid(m, checkVersion(m.Spec.Version, ""))
}

// ValidateUpdate also refuses a version change that skips a minor release or goes back
// further than the oldest Istio version running.
func (Validator) ValidateUpdate(_ context.Context, old, m *meshv1.MeshControlPlane) (admission.Warnings, error) {
	if old.Spec.Version == m.Spec.Version {
		return nil, nil // leave an unchanged spec.version alone, even one that became unsupported
	}
	return nil, invalid(m, checkVersion(m.Spec.Version, oldestRunning(old)))
}

// ValidateDelete allows every deletion: removing the control plane is always possible.
func (Validator) ValidateDelete(context.Context, *meshv1.MeshControlPlane) (admission.Warnings, error) {
	return nil, nil
}

// oldestRunning is the oldest Istio version whose objects are applied ("" when none are).
// With in-place upgrades that is status.version; canary upgrades will add revisions here.
func oldestRunning(m *meshv1.MeshControlPlane) string {
	return m.Status.Version
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

func invalid(m *meshv1.MeshControlPlane, ferr *field.Error) error {
	if ferr == nil {
		return nil
	}
	return apierrors.NewInvalid(schema.GroupKind{Group: meshv1.GroupVersion.Group, Kind: "MeshControlPlane"}, m.Name, field.ErrorList{ferr})
}
