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

// TestSelectorOfTheControlPlaneNamespace: a namespace selector that selects the control
// plane's namespace whatever its labels is refused naming the field; one that might not is
// left to the controller; an unchanged stored selector is not refused again.
func TestSelectorOfTheControlPlaneNamespace(t *testing.T) {
	with := func(sel *metav1.LabelSelector) *meshv1.MeshControlPlane {
		return &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName},
			Spec: meshv1.MeshControlPlaneSpec{Namespace: "mesh", Injection: &meshv1.InjectionSpec{NamespaceSelector: sel}}}
	}
	byName := func(op metav1.LabelSelectorOperator, names ...string) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "kubernetes.io/metadata.name", Operator: op, Values: names}}}
	}
	tests := map[string]struct {
		sel     *metav1.LabelSelector
		refused bool
	}{
		"no selector":                        {sel: nil},
		"empty: every namespace":             {sel: &metav1.LabelSelector{}, refused: true},
		"by the control plane's name":        {sel: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "mesh"}}, refused: true},
		"names including it":                 {sel: byName(metav1.LabelSelectorOpIn, "shop", "mesh"), refused: true},
		"the name label exists":              {sel: byName(metav1.LabelSelectorOpExists), refused: true},
		"names excluding it":                 {sel: byName(metav1.LabelSelectorOpNotIn, "mesh")},
		"a label of the application's":       {sel: &metav1.LabelSelector{MatchLabels: map[string]string{"mesh": "on"}}},
		"other names":                        {sel: byName(metav1.LabelSelectorOpIn, "shop")},
		"a label must be absent: may not be": {sel: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: metav1.LabelSelectorOpDoesNotExist}}}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := Validator{}.ValidateCreate(context.Background(), with(tc.sel))
			if got := err != nil; got != tc.refused {
				t.Fatalf("refused %t (%v), want %t", got, err, tc.refused)
			}
			if tc.refused && !strings.Contains(err.Error(), "spec.injection.namespaceSelector: Forbidden") {
				t.Errorf("message %q does not name the field", err.Error())
			}
		})
	}
	stored := with(&metav1.LabelSelector{})
	if _, err := (Validator{}).ValidateUpdate(context.Background(), stored, stored.DeepCopy()); err != nil {
		t.Errorf("an unchanged stored selector refused: %v", err)
	}
}

// A switch to InPlace is refused while a revision other than default runs, and allowed
// when only the in-place revision does (or nothing yet).
func TestStrategySwitch(t *testing.T) {
	mcp := func(strategy meshv1.UpgradeStrategy, revisions ...string) *meshv1.MeshControlPlane {
		m := &meshv1.MeshControlPlane{Spec: meshv1.MeshControlPlaneSpec{Upgrade: &meshv1.UpgradeSpec{Strategy: strategy}}}
		for _, r := range revisions {
			m.Status.Revisions = append(m.Status.Revisions, meshv1.RevisionStatus{Name: r, Version: "1.31.1"})
		}
		return m
	}
	v := Validator{}
	if _, err := v.ValidateUpdate(t.Context(), mcp(meshv1.UpgradeRevisionBased, "1-31-1"), mcp(meshv1.UpgradeInPlace, "1-31-1")); err == nil || !strings.Contains(err.Error(), "spec.upgrade.strategy") {
		t.Errorf("InPlace beside revision 1-31-1: %v", err)
	}
	if _, err := v.ValidateUpdate(t.Context(), mcp(""), mcp(meshv1.UpgradeInPlace, "default")); err != nil {
		t.Errorf("InPlace with only the default revision: %v", err)
	}
	if _, err := v.ValidateUpdate(t.Context(), mcp(meshv1.UpgradeInPlace, "default"), mcp(meshv1.UpgradeRevisionBased, "default")); err != nil {
		t.Errorf("InPlace to RevisionBased: %v", err)
	}
}
