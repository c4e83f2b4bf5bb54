package chart

import (
	"bytes"
	"fmt"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	chartv2 "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/capstan-mesh/capstan/test/harness"
)

// The release every test renders: with the name "capstan" in "capstan-system" the chart's
// object names are config/'s (ServiceAccount capstan-system/capstan, ClusterRole
// capstan-manager), which harness.StartOperator relies on.
const (
	releaseName      = "capstan"
	releaseNamespace = "capstan-system"
)

// repoFile is the absolute path of a file in the repository.
func repoFile(t testing.TB, rel string) string {
	t.Helper()
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, filepath.FromSlash(rel))
}

// loadChart loads charts/capstan from its directory, as `helm install ./charts/capstan` does.
func loadChart(t testing.TB) *chartv2.Chart {
	t.Helper()
	ch, err := loader.Load(repoFile(t, "charts/capstan"))
	if err != nil {
		t.Fatalf("loading charts/capstan: %v", err)
	}
	return ch
}

// renderChart renders the chart's templates with vals (merged over values.yaml and validated
// against values.schema.json) and returns the objects in file order, each template's
// documents in written order. kubeVersion "" renders with Helm's default capabilities.
// The crds/ directory is not rendered (Helm installs it as is): see ch.CRDObjects().
func renderChart(ch *chartv2.Chart, vals map[string]any, kubeVersion string) ([]*unstructured.Unstructured, error) {
	caps := common.DefaultCapabilities.Copy()
	if kubeVersion != "" {
		kv, err := common.ParseKubeVersion(kubeVersion)
		if err != nil {
			return nil, err
		}
		caps.KubeVersion = *kv
	}
	if vals == nil {
		vals = map[string]any{}
	}
	opts := common.ReleaseOptions{Name: releaseName, Namespace: releaseNamespace, Revision: 1, IsInstall: true}
	rv, err := util.ToRenderValuesWithSchemaValidation(ch, vals, opts, caps, false)
	if err != nil {
		return nil, err
	}
	files, err := engine.Render(ch, rv)
	if err != nil {
		return nil, err
	}
	var names []string
	for name := range files {
		if base := path.Base(name); strings.HasPrefix(base, "_") || strings.HasSuffix(base, ".txt") {
			continue
		}
		names = append(names, name)
	}
	slices.Sort(names)
	var out []*unstructured.Unstructured
	for _, name := range names {
		docs := releaseutil.SplitManifests(files[name])
		keys := make([]string, 0, len(docs))
		for k := range docs {
			keys = append(keys, k)
		}
		// "manifest-N": order numerically.
		slices.SortFunc(keys, func(a, b string) int {
			if len(a) != len(b) {
				return len(a) - len(b)
			}
			return strings.Compare(a, b)
		})
		for _, k := range keys {
			doc := bytes.TrimSpace([]byte(docs[k]))
			if len(doc) == 0 {
				continue
			}
			obj, err := parseObject(doc)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			if obj != nil {
				out = append(out, obj)
			}
		}
	}
	return out, nil
}

// parseObject parses one YAML document into an object; nil for a document of comments only.
func parseObject(doc []byte) (*unstructured.Unstructured, error) {
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, err
	}
	if s := string(js); s == "null" || s == "{}" {
		return nil, nil
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(js); err != nil {
		return nil, err
	}
	if u.GetKind() == "" || u.GetAPIVersion() == "" || u.GetName() == "" {
		return nil, fmt.Errorf("object without apiVersion, kind or name:\n%s", doc)
	}
	return u, nil
}

// find returns the rendered object of that kind and name, or nil.
func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}
