package bundlegen_test

import (
	"bytes"
	"fmt"
	"github.com/capstan-mesh/capstan/internal/manifestcheck"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/operator-framework/api/pkg/manifests"
	"github.com/operator-framework/api/pkg/validation"
	"github.com/operator-framework/api/pkg/validation/errors"
	interfaces "github.com/operator-framework/api/pkg/validation/interfaces"

	"github.com/capstan-mesh/capstan/internal/bundlegen"
)

// repoRoot is the repository root, seen from this package's directory.
const repoRoot = "../.."

// k8sVersion is the Kubernetes release the deprecated-API checks look ahead to (the one the
// project builds and tests against).
const k8sVersion = "1.37"

// allowedWarnings are the validator warnings the committed bundle may raise, keyed by a
// substring of the message, each with the reason it is accepted. Any other warning fails
// TestBundleValidates, and so does an entry here that no longer matches anything.
var allowedWarnings = map[string]string{
	// GoodPracticesValidator: channel names should start with candidate, fast or stable.
	`channel(s) ["alpha"] are not following the recommended naming convention`: "the " +
		"bundle is published in an alpha channel on purpose: the API is v1alpha1 and " +
		"upgrades between bundle versions are not guaranteed yet",
	// GoodPracticesValidator: CRD create/patch in the CSV's permissions.
	"CSV contains permissions to create CRD": "installing Istio's own CRDs (from Istio's " +
		"base chart) is Capstan's job: they are its operand, not another operator's API, " +
		"and no OLM dependency can provide a specific Istio release's CRDs",
}

// validators are the checks the bundle must pass: OLM's defaults (CSV, CRDs, bundle
// structure) and OperatorHub's (metadata, capability level, categories), good practices,
// APIs removed in later Kubernetes releases, and the objects shipped beside the CSV.
var validators = []struct {
	name string
	v    interfaces.Validator
}{
	{"default bundle validators", validation.DefaultBundleValidators},
	{"OperatorHub (v2)", validation.OperatorHubV2Validator},
	{"standard capabilities", validation.StandardCapabilitiesValidator},
	{"standard categories", validation.StandardCategoriesValidator},
	{"good practices", validation.GoodPracticesValidator},
	{"deprecated APIs", validation.AlphaDeprecatedAPIsValidator},
	{"bundle objects", validation.ObjectValidator},
}

// TestBundleValidates loads bundle/ the way OLM tooling does and runs the validators. It
// fails on any error, and on any warning not in allowedWarnings.
func TestBundleValidates(t *testing.T) {
	bundle, err := manifests.GetBundleFromDir(filepath.Join(repoRoot, "bundle"))
	if err != nil {
		t.Fatalf("loading bundle/: %v", err)
	}
	if got, want := bundle.CSV.GetName(), bundlegen.PackageName+".v"+bundle.CSV.Spec.Version.String(); got != want {
		t.Errorf("CSV name %q, want %q", got, want)
	}
	if bundle.Package != bundlegen.PackageName || bundle.DefaultChannel != bundlegen.Channel {
		t.Errorf("package %q default channel %q, want %q and %q", bundle.Package, bundle.DefaultChannel, bundlegen.PackageName, bundlegen.Channel)
	}

	objs := append(bundle.ObjectsToValidate(), map[string]string{"k8s-version": k8sVersion})
	matched := map[string]bool{}
	for _, tc := range validators {
		t.Run(tc.name, func(t *testing.T) {
			for _, result := range tc.v.Validate(objs...) {
				for _, e := range result.Errors {
					t.Errorf("error: %s", e)
				}
				for _, w := range result.Warnings {
					if key := allowedWarning(w); key != "" {
						matched[key] = true
						continue
					}
					t.Errorf("warning not in allowedWarnings (fix the bundle, or allow it with a reason): %s", w)
				}
			}
		})
	}
	for key := range allowedWarnings {
		if !matched[key] {
			t.Errorf("allowedWarnings entry %q matched no warning: remove it", key)
		}
	}
}

// allowedWarning is the allowedWarnings key a warning matches, or "".
func allowedWarning(w errors.Error) string {
	for key := range allowedWarnings {
		if strings.Contains(w.Error(), key) {
			return key
		}
	}
	return ""
}

// TestBundleUpToDate regenerates the bundle from config/ and compares it, byte for byte,
// with the committed one: a change to config/ (or to the generator) without `make bundle`
// fails here.
func TestBundleUpToDate(t *testing.T) {
	opts := bundlegen.Options{Root: repoRoot}
	if _, err := os.Stat(bundlegen.KubectlPath(opts)); err != nil {
		t.Fatalf("%s is missing (build it with `make tools` or `hack/build-tools.sh kubectl`): cannot render config/", bundlegen.KubectlPath(opts))
	}
	want, err := bundlegen.Generate(opts)
	if err != nil {
		t.Fatalf("generating the bundle: %v", err)
	}
	var stale []string
	for _, p := range want.Paths() {
		got, err := os.ReadFile(filepath.Join(repoRoot, filepath.FromSlash(p)))
		switch {
		case err != nil:
			stale = append(stale, fmt.Sprintf("%s: missing (%v)", p, err))
		case !bytes.Equal(got, want[p]):
			stale = append(stale, fmt.Sprintf("%s: differs from the generated file at %s", p, firstDifference(got, want[p])))
		}
	}
	for _, dir := range []string{bundlegen.ManifestsDir, bundlegen.MetadataDir} {
		entries, err := os.ReadDir(filepath.Join(repoRoot, filepath.FromSlash(dir)))
		if err != nil {
			continue // reported above as missing files
		}
		for _, e := range entries {
			if p := dir + "/" + e.Name(); want[p] == nil {
				stale = append(stale, p+": not generated any more")
			}
		}
	}
	if len(stale) > 0 {
		slices.Sort(stale)
		t.Errorf("bundle/ is stale against config/: run `make bundle` and commit the result.\n  %s", strings.Join(stale, "\n  "))
	}
}

// firstDifference locates the first differing line of two files.
func firstDifference(got, want []byte) string {
	g, w := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return fmt.Sprintf("line %d: committed %q, generated %q", i+1, gl, wl)
		}
	}
	return "end of file"
}

// TestBundleManagerEnv protects what the operator reads from its pod under OLM, as under
// the chart and kustomize: GOMEMLIMIT, the container's memory limit, under which Go's
// garbage collector keeps the heap, and POD_NAMESPACE, the operator's namespace, which
// the webhook refuses for the control plane.
func TestBundleManagerEnv(t *testing.T) {
	bundle, err := manifests.GetBundleFromDir(filepath.Join(repoRoot, "bundle"))
	if err != nil {
		t.Fatalf("loading bundle/: %v", err)
	}
	deps := bundle.CSV.Spec.InstallStrategy.StrategySpec.DeploymentSpecs
	if len(deps) != 1 || len(deps[0].Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("want one Deployment with one container, got %d", len(deps))
	}
	for _, p := range manifestcheck.ManagerEnv(deps[0].Spec.Template.Spec.Containers[0]) {
		t.Error(p)
	}
}
