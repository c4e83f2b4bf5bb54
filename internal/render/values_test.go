package render

import (
	"testing"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/equality"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/values"
)

// TestUnderDefaults pins the merge rules Capstan applies as Helm does: each case is one
// rule.
func TestUnderDefaults(t *testing.T) {
	cases := map[string]struct {
		vals, defaults, want map[string]any
	}{
		"a missing key takes its default": {
			vals: map[string]any{}, defaults: map[string]any{"a": 1}, want: map[string]any{"a": 1},
		},
		"a given value wins over its default": {
			vals: map[string]any{"a": 2}, defaults: map[string]any{"a": 1}, want: map[string]any{"a": 2},
		},
		"null drops the default": {
			vals: map[string]any{"a": nil}, defaults: map[string]any{"a": 1}, want: map[string]any{},
		},
		"maps merge key by key": {
			vals:     map[string]any{"m": map[string]any{"x": 1, "gone": nil}},
			defaults: map[string]any{"m": map[string]any{"x": 0, "y": 2, "gone": 3}},
			want:     map[string]any{"m": map[string]any{"x": 1, "y": 2}},
		},
		"a scalar replaces a default map, and a map a default scalar": {
			vals:     map[string]any{"a": "flat", "b": map[string]any{"k": 1}},
			defaults: map[string]any{"a": map[string]any{"k": 1}, "b": "flat"},
			want:     map[string]any{"a": "flat", "b": map[string]any{"k": 1}},
		},
		"keys without a default are kept, null ones too": {
			vals: map[string]any{"extra": 1, "empty": nil}, defaults: map[string]any{}, want: map[string]any{"extra": 1, "empty": nil},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := underDefaults(tc.vals, tc.defaults); !equality.Semantic.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// TestRenderValuesMatchHelm compares what Capstan gives the templates with what Helm's own
// ToRenderValues gives them, for each installed chart and specs that set, override and
// null out values at several depths.
func TestRenderValuesMatchHelm(t *testing.T) {
	specs := variedSpecs()
	specs["raw values with nulls"] = meshv1.MeshControlPlaneSpec{Values: &apiextensionsv1.JSON{Raw: []byte(
		`{"pilot":{"nodeSelector":null,"podAnnotations":{"a":"b"}},"global":{"proxy":{"resources":null},"logging":null},"base":{"excludedCRDs":["wasmplugins.extensions.istio.io"]},"telemetry":null}`)}}
	caps := common.DefaultCapabilities.Copy()
	opts := common.ReleaseOptions{Name: "r", Namespace: "istio-system", Revision: 1, IsInstall: true}
	for name, spec := range specs {
		for _, c := range components {
			t.Run(name+"/"+c.Name, func(t *testing.T) {
				v, err := values.For(&spec)
				if err != nil {
					t.Fatal(err)
				}
				ch, err := loadChart(c, embedded{})
				if err != nil {
					t.Fatal(err)
				}
				want, err := util.ToRenderValues(ch, copyValues(v), opts, caps)
				if err != nil {
					t.Fatal(err)
				}
				ch, err = loadChart(c, embedded{}) // Helm's merge may share the chart's maps
				if err != nil {
					t.Fatal(err)
				}
				got, err := renderValues(ch, copyValues(v), opts, caps)
				if err != nil {
					t.Fatal(err)
				}
				for _, k := range []string{"Values", "Chart", "Release", "Capabilities"} {
					if !equality.Semantic.DeepEqual(got[k], want[k]) {
						t.Errorf(".%s differs from Helm's", k)
					}
				}
				if len(got) != len(want) {
					t.Errorf("top-level keys %d, Helm's %d", len(got), len(want))
				}
			})
		}
	}
}
