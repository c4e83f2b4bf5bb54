package render

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/chart/common"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/equality"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/apply"
	"github.com/capstan-mesh/capstan/internal/values"
)

func renderSpec(t *testing.T, spec meshv1.MeshControlPlaneSpec) []Object {
	t.Helper()
	v, err := values.For(&spec)
	if err != nil {
		t.Fatal(err)
	}
	ns := spec.Namespace
	if ns == "" {
		ns = "istio-system"
	}
	var objs []Object
	for _, u := range testUnits {
		o, err := Render(Input{Component: u.c, Source: embedded{}, Values: v, Namespace: ns, KubeVersion: "v1.37.1", Revision: u.rev})
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, o...)
	}
	return objs
}

// testUnits are the units of an in-place control plane: base, and istiod at the default
// revision.
var testUnits = []struct {
	c   Component
	rev string
}{{Base, ""}, {Istiod, apply.DefaultRevision}}

// components are the charts Capstan installs.
var components = []Component{Base, Istiod}

func find(objs []Object, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o.Unstructured
		}
	}
	return nil
}

func TestRenderDefaultControlPlane(t *testing.T) {
	objs := renderSpec(t, meshv1.MeshControlPlaneSpec{})
	counts := map[string]int{}
	for _, o := range objs {
		counts[o.Component]++
		k, ok := Lookup(o.GroupVersionKind())
		if !ok {
			t.Fatalf("%s is not a managed kind", o.GroupVersionKind())
		}
		if k.Namespaced != (o.GetNamespace() != "") {
			t.Errorf("%s %s: namespace %q for namespaced=%t", o.GetKind(), o.GetName(), o.GetNamespace(), k.Namespaced)
		}
		if k.Namespaced && o.GetNamespace() != "istio-system" {
			t.Errorf("%s %s rendered into %q", o.GetKind(), o.GetName(), o.GetNamespace())
		}
	}
	if counts["base"] < 15 || counts["istiod"] < 15 {
		t.Errorf("rendered %v objects per chart; want Istio's CRDs from base and the istiod control plane", counts)
	}
	d := find(objs, "Deployment", "istiod")
	if d == nil {
		t.Fatal("no istiod Deployment")
	}
	img, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "containers")
	if got := img[0].(map[string]any)["image"]; got != "docker.io/istio/pilot:1.31.1" {
		t.Errorf("istiod image = %v", got)
	}
	if find(objs, "HorizontalPodAutoscaler", "istiod") == nil {
		t.Error("Istio's default autoscaler missing")
	}
}

func TestRenderOrdersDefinitionsFirstAndWebhooksLast(t *testing.T) {
	v, err := values.For(&meshv1.MeshControlPlaneSpec{})
	if err != nil {
		t.Fatal(err)
	}
	objs, err := Render(Input{Component: Istiod, Source: embedded{}, Values: v, Namespace: "istio-system", Revision: apply.DefaultRevision})
	if err != nil {
		t.Fatal(err)
	}
	last := -1
	for _, o := range objs {
		r := applyRank(o)
		if r < last {
			t.Fatalf("%s %s (rank %d) comes after rank %d", o.GetKind(), o.GetName(), r, last)
		}
		last = r
	}
	if applyRank(objs[0]) != 1 || !strings.HasSuffix(objs[len(objs)-1].GetKind(), "WebhookConfiguration") {
		t.Errorf("order starts with %s and ends with %s", objs[0].GetKind(), objs[len(objs)-1].GetKind())
	}
}

func TestRenderFollowsTheSpec(t *testing.T) {
	replicas := int32(3)
	objs := renderSpec(t, meshv1.MeshControlPlaneSpec{
		Namespace:  "mesh",
		Version:    "1.31.3",
		Components: &meshv1.ComponentsSpec{Pilot: &meshv1.PilotSpec{Replicas: &replicas}},
	})
	d := find(objs, "Deployment", "istiod")
	if got, _, _ := unstructured.NestedInt64(d.Object, "spec", "replicas"); got != 3 {
		t.Errorf("replicas = %d, want 3", got)
	}
	if d.GetNamespace() != "mesh" {
		t.Errorf("namespace = %q", d.GetNamespace())
	}
	if find(objs, "HorizontalPodAutoscaler", "istiod") != nil {
		t.Error("an autoscaler is rendered although replicas are fixed")
	}
	if find(objs, "MutatingWebhookConfiguration", "istio-sidecar-injector-mesh") == nil {
		t.Error("no injection webhook for the mesh namespace")
	}
}

func TestRenderReportsChartErrors(t *testing.T) {
	_, err := Render(Input{Component: Istiod, Source: embedded{}, Values: map[string]any{"profile": "no-such-profile"}, Namespace: "istio-system", Revision: apply.DefaultRevision})
	if err == nil || !strings.Contains(err.Error(), "no-such-profile") {
		t.Fatalf("want the chart's unknown-profile error, got %v", err)
	}
}

func TestRenderDoesNotChangeItsInput(t *testing.T) {
	in := map[string]any{"global": map[string]any{"tag": "1.31.1"}}
	if _, err := Render(Input{Component: Istiod, Source: embedded{}, Values: in, Namespace: "istio-system", Revision: apply.DefaultRevision}); err != nil {
		t.Fatal(err)
	}
	if len(in) != 1 || len(in["global"].(map[string]any)) != 1 {
		t.Errorf("render merged chart defaults into its input: %v", in)
	}
}

func TestRenderReturnsObjectsTheCallerOwns(t *testing.T) {
	first := renderSpec(t, meshv1.MeshControlPlaneSpec{})
	d := find(first, "Deployment", "istiod")
	d.SetLabels(map[string]string{"changed": "by the caller"})
	_ = unstructured.SetNestedField(d.Object, int64(42), "spec", "replicas")

	second := renderSpec(t, meshv1.MeshControlPlaneSpec{})
	d2 := find(second, "Deployment", "istiod")
	if d2.GetLabels()["changed"] != "" {
		t.Error("a remembered render was changed through an earlier result")
	}
	if r, found, _ := unstructured.NestedInt64(d2.Object, "spec", "replicas"); found && r == 42 {
		t.Error("a remembered render was changed through an earlier result")
	}
	replicas := int32(2)
	third := renderSpec(t, meshv1.MeshControlPlaneSpec{Components: &meshv1.ComponentsSpec{Pilot: &meshv1.PilotSpec{Replicas: &replicas}}})
	if r, _, _ := unstructured.NestedInt64(find(third, "Deployment", "istiod").Object, "spec", "replicas"); r != 2 {
		t.Errorf("a different spec got a remembered render: replicas %d", r)
	}
}

// TestValueKeysCoverWhatTheChartReads keeps Component.ValueKeys honest: every top-level
// value a restricted chart's templates read must be in the list, or a spec change that
// affects the chart would be served a stale render.
func TestValueKeysCoverWhatTheChartReads(t *testing.T) {
	ref := regexp.MustCompile(`\.Values\)?\.([A-Za-z_][A-Za-z0-9_]*)`)
	for _, c := range components {
		if c.ValueKeys == nil {
			continue
		}
		ch, err := loadChart(c, embedded{})
		if err != nil {
			t.Fatal(err)
		}
		var read int
		for _, tpl := range ch.Templates {
			for _, m := range ref.FindAllStringSubmatch(string(tpl.Data), -1) {
				read++
				if !slices.Contains(c.ValueKeys, m[1]) {
					t.Errorf("chart %s: %s reads .Values.%s, which is not in its ValueKeys", c.Name, tpl.Name, m[1])
				}
			}
		}
		if read == 0 {
			t.Errorf("chart %s: found no value references; is the pattern still right?", c.Name)
		}
	}
}

// variedSpecs are specs that touch many settings of both charts, for tests that compare two
// ways of rendering them.
func variedSpecs() map[string]meshv1.MeshControlPlaneSpec {
	replicas := int32(3)
	return map[string]meshv1.MeshControlPlaneSpec{
		"defaults":       {},
		"demo profile":   {Profile: "demo"},
		"openshift":      {Profile: "openshift", Namespace: "mesh"},
		"istiod changes": {Components: &meshv1.ComponentsSpec{Pilot: &meshv1.PilotSpec{Replicas: &replicas}}, MeshConfig: &meshv1.MeshConfigSpec{TrustDomain: "corp.example"}},
	}
}

// TestRestrictedValuesRenderTheSame compares a restricted chart's render from its value
// keys alone with its render from every value, for specs that touch many settings.
func TestRestrictedValuesRenderTheSame(t *testing.T) {
	specs := variedSpecs()
	specs["raw values"] = meshv1.MeshControlPlaneSpec{Values: &apiextensionsv1.JSON{Raw: []byte(`{"base":{"excludedCRDs":["wasmplugins.extensions.istio.io"]},"experimental":{"stableValidationPolicy":true},"global":{"enableReaderRBAC":false}}`)}}
	caps := common.DefaultCapabilities.Copy()
	for name, spec := range specs {
		t.Run(name, func(t *testing.T) {
			v, err := values.For(&spec)
			if err != nil {
				t.Fatal(err)
			}
			ns := spec.Namespace
			if ns == "" {
				ns = "istio-system"
			}
			for _, c := range components {
				if c.ValueKeys == nil {
					continue
				}
				ch, err := loadChart(c, embedded{})
				if err != nil {
					t.Fatal(err)
				}
				full, err := renderChart(ch, c, Input{Values: v, Namespace: ns}, caps)
				if err != nil {
					t.Fatal(err)
				}
				restricted, err := renderChart(ch, c, Input{Values: c.values(v), Namespace: ns}, caps)
				if err != nil {
					t.Fatal(err)
				}
				if len(full) != len(restricted) {
					t.Fatalf("chart %s: %d objects from all values, %d from its keys", c.Name, len(full), len(restricted))
				}
				for i := range full {
					if !equality.Semantic.DeepEqual(full[i].Object, restricted[i].Object) {
						t.Errorf("chart %s: %s %s differs when rendered from its value keys alone", c.Name, full[i].GetKind(), full[i].GetName())
					}
				}
			}
		})
	}
}

// Every spec change re-renders the istiod chart; that must not push the base chart's
// render (its CRDs cost several times more) out of the memo.
func TestIstiodRendersDoNotEvictBase(t *testing.T) {
	spec := func(replicas int32) meshv1.MeshControlPlaneSpec {
		return meshv1.MeshControlPlaneSpec{Components: &meshv1.ComponentsSpec{Pilot: &meshv1.PilotSpec{Replicas: &replicas}}}
	}
	renderSpec(t, spec(1))
	v, err := values.For(&meshv1.MeshControlPlaneSpec{})
	if err != nil {
		t.Fatal(err)
	}
	baseKey, err := Input{Component: Base, Source: embedded{}, Values: Base.values(v), Namespace: "istio-system", KubeVersion: "v1.37.1"}.key()
	if err != nil {
		t.Fatal(err)
	}
	for r := int32(2); r < 2+memoSize+1; r++ {
		renderSpec(t, spec(r))
	}
	if _, ok := memo.get(Base.Name, Base.Name, baseKey); !ok {
		t.Errorf("after %d renders of other istiod specs, the base chart's render is no longer remembered", memoSize+1)
	}
}

// Every spec of variedSpecs renders objects that decode strictly: Istio's charts as they
// ship give Kubernetes no field it does not know, so the apiserver's strict field
// validation, which every apply asks for, refuses only what the user wrote.
func TestIstioChartsRenderOnlyKnownFields(t *testing.T) {
	for name, spec := range variedSpecs() {
		t.Run(name, func(t *testing.T) {
			for _, o := range renderSpec(t, spec) {
				js, err := o.JSON()
				if err != nil {
					t.Fatal(err)
				}
				if err := checkFields(o.GroupVersionKind(), js); err != nil {
					t.Errorf("%s %s: %v", o.GetKind(), o.GetName(), err)
				}
			}
		})
	}
}

// checkFields refuses what it should, for every kind Capstan manages: none escapes the
// check for want of a Go type.
func TestCheckFieldsCoversEveryManagedKind(t *testing.T) {
	for _, k := range Kinds {
		t.Run(k.Kind, func(t *testing.T) {
			obj := fmt.Sprintf(`{"apiVersion":%q,"kind":%q,"metadata":{"name":"x"},"specz":{}}`, k.GroupVersion().String(), k.Kind)
			err := checkFields(k.GroupVersionKind, []byte(obj))
			if err == nil || !strings.Contains(err.Error(), `unknown field "specz"`) {
				t.Errorf("an unknown top-level field: %v", err)
			}
			dup := fmt.Sprintf(`{"apiVersion":%q,"kind":%q,"metadata":{"name":"x","name":"y"}}`, k.GroupVersion().String(), k.Kind)
			if err := checkFields(k.GroupVersionKind, []byte(dup)); err == nil || !strings.Contains(err.Error(), "duplicate field") {
				t.Errorf("a duplicate field: %v", err)
			}
			ok := fmt.Sprintf(`{"apiVersion":%q,"kind":%q,"metadata":{"name":"x","labels":{"a":"b"}}}`, k.GroupVersion().String(), k.Kind)
			if err := checkFields(k.GroupVersionKind, []byte(ok)); err != nil {
				t.Errorf("a valid object: %v", err)
			}
		})
	}
}

// Render stamps what it returns, remembered renders included: the controller applies the
// objects as they come.
func TestRenderStampsInventoryLabelsAndHash(t *testing.T) {
	for _, pass := range []string{"rendered", "remembered"} {
		for _, o := range renderSpec(t, meshv1.MeshControlPlaneSpec{}) {
			l := o.GetLabels()
			if l[apply.ManagedByLabel] != apply.ManagedByValue || l[apply.ComponentLabel] != o.Component || l[apply.WriterLabel] != apply.WriterInstall || l[apply.RevisionLabel] != map[string]string{"base": "", "istiod": apply.DefaultRevision}[o.Component] {
				t.Errorf("%s: %s %s has labels %v", pass, o.GetKind(), o.GetName(), l)
			}
			if o.GetAnnotations()[apply.ConfigHashAnnot] == "" {
				t.Errorf("%s: %s %s has no configuration hash", pass, o.GetKind(), o.GetName())
			}
		}
	}
}

// CRDs come with only their metadata decoded, and their whole body as JSON: the same
// object, byte for byte, as the chart renders and stamps, whether the render was fresh or
// remembered.
func TestRenderedCRDsCarryTheirWholeBody(t *testing.T) {
	spec := meshv1.MeshControlPlaneSpec{Namespace: "crd-body-test"} // a render no other test has remembered
	v, err := values.For(&spec)
	if err != nil {
		t.Fatal(err)
	}
	in := Input{Component: Base, Source: embedded{}, Values: Base.values(v), Namespace: spec.Namespace, KubeVersion: "v1.37.1"}
	caps := common.DefaultCapabilities.Copy()
	kv, _ := common.ParseKubeVersion(in.KubeVersion)
	caps.KubeVersion = *kv
	want, err := renderComponent(Base, in, caps)
	if err != nil {
		t.Fatal(err)
	}
	for _, pass := range []string{"fresh", "remembered"} {
		got := renderSpec(t, spec)
		crds := 0
		for _, o := range got {
			w := find(want, o.GetKind(), o.GetName())
			if o.GetKind() != "CustomResourceDefinition" {
				if o.Partial() {
					t.Errorf("%s: %s %s is only partly decoded", pass, o.GetKind(), o.GetName())
				}
				continue
			}
			crds++
			if !o.Partial() {
				t.Errorf("%s: CRD %s is decoded whole", pass, o.GetName())
			}
			if _, found, _ := unstructured.NestedMap(o.Object, "spec"); found {
				t.Errorf("%s: CRD %s: the partial object holds its spec", pass, o.GetName())
			}
			if o.GetAnnotations()[apply.ConfigHashAnnot] != w.GetAnnotations()[apply.ConfigHashAnnot] || o.GetLabels()[apply.ComponentLabel] != "base" {
				t.Errorf("%s: CRD %s: metadata %v", pass, o.GetName(), o.Object["metadata"])
			}
			full, err := o.Full()
			if err != nil {
				t.Fatal(err)
			}
			if !equality.Semantic.DeepEqual(full.Object, w.Object) {
				t.Errorf("%s: CRD %s: the body differs from the chart's render", pass, o.GetName())
			}
		}
		if crds != 15 {
			t.Errorf("%s: %d CRDs, want Istio's 15", pass, crds)
		}
	}
}
