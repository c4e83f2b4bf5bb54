package webhook

import (
	"context"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
)

func TestCheckVersion(t *testing.T) {
	tests := map[string]struct {
		want, running string
		// refused is a part of the message, or "" when the change is allowed.
		refused string
	}{
		"a fresh install of the embedded version":          {want: "1.31.1", running: ""},
		"the defaulted version":                            {want: "", running: "1.31.0"},
		"a patch upgrade":                                  {want: "1.31.4", running: "1.31.1"},
		"a patch downgrade within the running minor":       {want: "1.31.0", running: "1.31.2"},
		"one minor up, when this Capstan embeds it":        {want: "1.32.0", running: "1.31.1", refused: "not supported by this Capstan"},
		"a version this Capstan does not embed":            {want: "1.99.0", running: "", refused: "not supported by this Capstan"},
		"a jump of two minors from an older control plane": {want: "1.31.1", running: "1.29.3", refused: "one minor version at a time"},
		"one minor up from the previous release":           {want: "1.31.0", running: "1.30.5"},
		"a downgrade past the oldest running minor":        {want: "1.31.0", running: "1.32.1", refused: "downgrade"},
		"a change of major version":                        {want: "1.31.0", running: "2.0.0", refused: "major"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := checkVersion(tc.want, tc.running)
			switch {
			case tc.refused == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.refused != "" && err == nil:
				t.Fatalf("allowed; want a refusal containing %q", tc.refused)
			case err != nil && !strings.Contains(err.Error(), tc.refused):
				t.Fatalf("message %q lacks %q", err.Error(), tc.refused)
			case err != nil && !strings.HasPrefix(err.Error(), "spec.version"):
				t.Fatalf("message %q does not name spec.version", err.Error())
			}
		})
	}
}

// TestOperatorNamespace protects the operator's namespace from holding the control plane
// (whose uninstall would then reach the operator's own objects), without blocking updates
// of a control plane stored there before the check existed: one of them removes the
// finalizer of a deleted control plane.
func TestOperatorNamespace(t *testing.T) {
	mcp := func(ns, version string) *meshv1.MeshControlPlane {
		return &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName}, Spec: meshv1.MeshControlPlaneSpec{Namespace: ns, Version: version}}
	}
	tests := map[string]struct {
		operator string
		old, new *meshv1.MeshControlPlane // old nil: a create
		refused  []string                 // parts of the message; none when admitted
	}{
		"a create in a namespace of its own":                    {operator: "capstan-system", new: mcp("istio-system", "")},
		"a create in the operator's namespace":                  {operator: "capstan-system", new: mcp("capstan-system", ""), refused: []string{"spec.namespace: Forbidden: capstan-system is the Capstan operator's own namespace"}},
		"a create with the default namespace, the operator's":   {operator: "istio-system", new: mcp("", ""), refused: []string{"spec.namespace: Forbidden: istio-system is the Capstan operator's own namespace"}},
		"a create when the operator's namespace is unknown":     {operator: "", new: mcp("capstan-system", "")},
		"an update moving into the operator's namespace":        {operator: "capstan-system", old: mcp("mesh", ""), new: mcp("capstan-system", ""), refused: []string{"spec.namespace: Forbidden", "operator's own namespace"}},
		"an update of one stored there before the check":        {operator: "capstan-system", old: mcp("capstan-system", "1.31.1"), new: mcp("capstan-system", "1.31.1")},
		"both refusals at once, each naming its field":          {operator: "capstan-system", new: mcp("capstan-system", "1.99.0"), refused: []string{"spec.version: Invalid value", "spec.namespace: Forbidden"}},
		"a version change beside an unchanged stored namespace": {operator: "capstan-system", old: mcp("capstan-system", "1.31.1"), new: mcp("capstan-system", "1.31.2")},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			v := Validator{OperatorNamespace: tc.operator}
			var err error
			if tc.old == nil {
				_, err = v.ValidateCreate(context.Background(), tc.new)
			} else {
				_, err = v.ValidateUpdate(context.Background(), tc.old, tc.new)
			}
			if len(tc.refused) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("admitted; want a refusal containing %q", tc.refused)
			}
			for _, part := range tc.refused {
				if !strings.Contains(err.Error(), part) {
					t.Errorf("message %q lacks %q", err.Error(), part)
				}
			}
		})
	}
}
