package values_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/plan"
	"github.com/capstan-mesh/capstan/internal/values"
)

// installed is what a render of v installs, one line per object: kind, namespace, name,
// and where its webhooks send requests. Labels and object bodies are left out: they are
// settings, not names or places.
func installed(t *testing.T, v values.Values) []string {
	t.Helper()
	p, err := plan.For(&meshv1.MeshControlPlaneSpec{}, plan.Installed{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range p.Units {
		p.Units[i].Values = v // as if the planner had passed the value on
	}
	objs, err := p.Render("v1.37.1")
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	var out []string
	for _, o := range objs {
		line := fmt.Sprintf("%s %s/%s", o.GetKind(), o.GetNamespace(), o.GetName())
		hooks, _, _ := unstructured.NestedSlice(o.Object, "webhooks")
		for _, h := range hooks {
			cc, _ := json.Marshal(h.(map[string]any)["clientConfig"])
			line += " " + string(cc)
		}
		out = append(out, line)
	}
	slices.Sort(out)
	return out
}

// withRaw is the values of the default spec with one raw value set at a dotted path, as if
// values.For had not refused it.
func withRaw(t *testing.T, path string, val any) values.Values {
	t.Helper()
	v, err := values.For(&meshv1.MeshControlPlaneSpec{})
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(path, ".")
	m := v
	for _, p := range parts[:len(parts)-1] {
		if _, ok := m[p].(map[string]any); !ok {
			m[p] = map[string]any{}
		}
		m = m[p].(map[string]any)
	}
	m[parts[len(parts)-1]] = val
	return v
}

// sampleOf is a value a user might set at an owned path.
func sampleOf(o values.OwnedValue) any {
	switch {
	case strings.HasSuffix(o.Path, "profile"):
		return "remote"
	case strings.HasSuffix(o.Path, "resourceScope"):
		return "cluster"
	case strings.HasSuffix(o.Path, "validationURL"):
		return "https://elsewhere.example:15017/validate"
	}
	return map[string]any{
		"string":  "canary",
		"boolean": true,
		"array":   []any{"prod"},
		"object":  map[string]any{"enabled": true, "injectionURL": "https://elsewhere.example:15017/inject"},
	}[o.Type]
}

// TestOwnedValuesChangeWhatIsInstalled protects the reason each value is refused: with
// the embedded charts, setting it renames, moves, drops or re-targets objects Capstan
// installs (which prune would then delete). When the embedded charts change and one no
// longer does, this fails: re-check the list. The values considered and left alone change
// none of that.
func TestOwnedValuesChangeWhatIsInstalled(t *testing.T) {
	v, err := values.For(&meshv1.MeshControlPlaneSpec{})
	if err != nil {
		t.Fatal(err)
	}
	want := installed(t, v)
	for _, o := range values.OwnedValues {
		t.Run("refused "+o.Path, func(t *testing.T) {
			if got := installed(t, withRaw(t, o.Path, sampleOf(o))); slices.Equal(got, want) {
				t.Errorf("%s changes no name, namespace or webhook target of what is installed; is it still Capstan's?", o.Path)
			}
		})
	}
	left := map[string]any{
		"global.remotePilotAddress": "istiod.elsewhere.example",
		"global.configCluster":      true,
		"global.externalIstiod":     true,
		"global.caAddress":          "cert-manager-istio-csr.cert-manager.svc:443",
		"ownerName":                 "someone",
	}
	for path, val := range left {
		t.Run("left alone "+path, func(t *testing.T) {
			if got := installed(t, withRaw(t, path, val)); !slices.Equal(got, want) {
				t.Errorf("%s changes what is installed; should it be refused?\n got %q\nwant %q", path, got, want)
			}
		})
	}
}
