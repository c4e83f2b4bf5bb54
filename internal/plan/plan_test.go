package plan

import (
	"errors"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/utils/ptr"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/apply"
	"github.com/capstan-mesh/capstan/internal/dataplane"
	"github.com/capstan-mesh/capstan/internal/values"
)

// inPlace is spec.upgrade for an in-place control plane.
var inPlace = &meshv1.UpgradeSpec{Strategy: meshv1.UpgradeInPlace}

// An in-place control plane is two units: base, shared by every revision, then istiod at
// the default revision, both in the declared namespace, from the embedded charts.
func TestForPlansBaseAndOneIstiod(t *testing.T) {
	p, err := For(&meshv1.MeshControlPlaneSpec{Namespace: "mesh", Version: "1.31.0", Upgrade: inPlace}, Installed{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Namespace != "mesh" || p.Version != "1.31.0" || p.Revision != apply.DefaultRevision {
		t.Errorf("plan %+v", p)
	}
	want := []apply.Unit{{Component: "base"}, {Component: "istiod", Revision: apply.DefaultRevision}}
	if len(p.Units) != len(want) {
		t.Fatalf("%d units, want %d", len(p.Units), len(want))
	}
	for i, u := range p.Units {
		if u.Key() != want[i] || u.Namespace != "mesh" || u.Version != "1.31.0" || u.Source.Minor() != "1.31" {
			t.Errorf("unit %d: %+v (key %+v)", i, u, u.Key())
		}
		if _, set := u.Values["revision"]; set {
			t.Errorf("unit %s sets the revision value; the default revision's objects are named without one", u.Component.Name)
		}
	}
}

// Only the planner names a revision: a unit at another revision gets the chart's revision
// value, which renames its objects, and the values shared with other units stay as they
// were.
func TestRevisionValuesAreTheUnits(t *testing.T) {
	shared := values.Values{"global": values.Values{"tag": "1.31.1"}}
	v := revisionValues(shared, "1-31-1")
	if v["revision"] != "1-31-1" {
		t.Errorf("revision value %v", v["revision"])
	}
	if _, set := shared["revision"]; set {
		t.Error("the shared values were changed")
	}
	if got := revisionValues(shared, apply.DefaultRevision); got["revision"] != nil {
		t.Errorf("the default revision sets revision %v", got["revision"])
	}
}

func TestForNamesTheFieldOfABadVersion(t *testing.T) {
	_, err := For(&meshv1.MeshControlPlaneSpec{Version: "1.99.0"}, Installed{})
	var fe *values.FieldError
	if !errors.As(err, &fe) || fe.Field != "spec.version" {
		t.Fatalf("error %v, want a FieldError on spec.version", err)
	}
}

// Render gives every unit's objects in one apply order, each labelled with its own unit.
func TestRenderLabelsEachObjectWithItsUnit(t *testing.T) {
	p, err := For(&meshv1.MeshControlPlaneSpec{Upgrade: inPlace}, Installed{})
	if err != nil {
		t.Fatal(err)
	}
	objs, err := p.Render("v1.37.1")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, o := range objs {
		inv, ok := apply.InventoryOf(o.GetLabels())
		if !ok || inv.Writer != apply.WriterInstall || inv.Component != o.Component {
			t.Fatalf("%s %s: inventory %+v", o.GetKind(), o.GetName(), inv)
		}
		seen[inv.Component+"/"+inv.Revision]++
	}
	if seen["base/"] == 0 || seen["istiod/default"] == 0 || len(seen) != 2 {
		t.Errorf("objects by unit: %v", seen)
	}
}

// istiod's injector stamps every pod it injects with the version and a hash of the proxy
// settings, so that a metadata-only pod watch tells a stale sidecar from a current one.
// The hash follows the proxy's settings and nothing else.
func TestInjectorStampsVersionAndProxySettings(t *testing.T) {
	stampOf := func(t *testing.T, raw string, spec meshv1.MeshControlPlaneSpec) (map[string]any, string) {
		t.Helper()
		if raw != "" {
			spec.Values = &apiextensionsv1.JSON{Raw: []byte(raw)}
		}
		spec.Upgrade = inPlace
		p, err := For(&spec, Installed{})
		if err != nil {
			t.Fatal(err)
		}
		if sw, _ := p.Units[0].Values["sidecarInjectorWebhook"].(map[string]any); sw != nil {
			if ann, _ := sw["injectedAnnotations"].(map[string]any); ann[dataplane.ProxyVersionAnnotation] != nil {
				t.Error("the base unit carries the injector's stamp")
			}
		}
		sw, _ := p.Units[1].Values["sidecarInjectorWebhook"].(map[string]any)
		ann, _ := sw["injectedAnnotations"].(map[string]any)
		if ann[dataplane.ProxyVersionAnnotation] != p.Version || ann[dataplane.ProxyConfigAnnotation] != p.Stamps[p.Revision].ProxyConfig {
			t.Errorf("injected annotations %v, stamps %v", ann, p.Stamps)
		}
		return ann, p.Stamps[p.Revision].ProxyConfig
	}
	_, base := stampOf(t, "", meshv1.MeshControlPlaneSpec{})
	tests := map[string]struct {
		raw     string
		spec    meshv1.MeshControlPlaneSpec
		changed bool
	}{
		"istiod's replicas are not the proxy's": {spec: meshv1.MeshControlPlaneSpec{Components: &meshv1.ComponentsSpec{Pilot: &meshv1.PilotSpec{Replicas: ptr.To[int32](3)}}}},
		"the proxy's resources":                 {raw: `{"global":{"proxy":{"resources":{"limits":{"cpu":"1"}}}}}`, changed: true},
		"the proxy's default config":            {raw: `{"meshConfig":{"defaultConfig":{"holdApplicationUntilProxyStarts":true}}}`, changed: true},
		"the image registry":                    {raw: `{"global":{"hub":"registry.example/istio"}}`, changed: true},
		"a version change is the version stamp": {spec: meshv1.MeshControlPlaneSpec{Version: "1.31.0"}, changed: true},
		"spec.injection.proxy's log level":      {spec: meshv1.MeshControlPlaneSpec{Injection: &meshv1.InjectionSpec{Proxy: &meshv1.ProxySpec{LogLevel: "debug"}}}, changed: true},
		"native sidecars on":                    {spec: meshv1.MeshControlPlaneSpec{Injection: &meshv1.InjectionSpec{Proxy: &meshv1.ProxySpec{NativeSidecars: ptr.To(true)}}}, changed: true},
		"another pilot env is not the proxy's":  {raw: `{"pilot":{"env":{"PILOT_TRACE_SAMPLING":"5"}}}`},
		"the rollout policy is not the proxy's": {spec: meshv1.MeshControlPlaneSpec{Injection: &meshv1.InjectionSpec{Rollout: &meshv1.RolloutSpec{RestartStaleWorkloads: meshv1.RestartAlways}}}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if _, h := stampOf(t, tc.raw, tc.spec); (h != base) != tc.changed {
				t.Errorf("proxy-config %s against %s: changed %t, want %t", h, base, h != base, tc.changed)
			}
		})
	}
	t.Run("the user's own injected annotations stay beside Capstan's", func(t *testing.T) {
		ann, _ := stampOf(t, `{"sidecarInjectorWebhook":{"injectedAnnotations":{"team":"payments"}}}`, meshv1.MeshControlPlaneSpec{})
		if ann["team"] != "payments" {
			t.Errorf("injected annotations %v", ann)
		}
	})
}

// TestWarmFallsBackToTheDefaults: a stored spec that cannot be planned does not keep the
// operator from proving its charts render; one that can is what is warmed.
func TestWarmFallsBackToTheDefaults(t *testing.T) {
	if err := Warm("", &meshv1.MeshControlPlane{Spec: meshv1.MeshControlPlaneSpec{Version: "9.9.9"}}); err != nil {
		t.Errorf("a spec that cannot be planned: %v", err)
	}
	if err := Warm("", &meshv1.MeshControlPlane{Spec: meshv1.MeshControlPlaneSpec{Version: "1.31.0"}}); err != nil {
		t.Errorf("a stored spec: %v", err)
	}
	if err := Warm("", nil); err != nil {
		t.Errorf("no stored spec: %v", err)
	}
}
