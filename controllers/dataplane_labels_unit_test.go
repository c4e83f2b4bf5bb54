package controllers

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/capstan-mesh/capstan/internal/revision"
)

// The decision of one namespace's injection label: what spec.injection.namespaceSelector
// selects is labelled once, what Capstan labelled is unlabelled once it is not selected,
// and no label Capstan did not set is touched.
func TestNamespaceLabelPatch(t *testing.T) {
	// The marker as Capstan wrote it before it moved namespaces between revisions: the key alone.
	marker := map[string]string{InjectionLabelledAnnotation: revision.InjectionLabel}
	enabled := map[string]string{"team": "mesh", revision.InjectionLabel: "enabled"}
	for name, tc := range map[string]struct {
		labels, annotations map[string]string
		want                namespaceWant
		patch               string // "" for no write
	}{
		"selected and unlabelled: label and marker in one patch": {
			labels: map[string]string{"team": "mesh"},
			want:   namespaceWant{Selected: true, Revision: "default"},
			patch:  `{"metadata":{"annotations":{"capstan.dev/injection-labelled":"istio-injection=enabled"},"labels":{"istio-injection":"enabled"}}}`,
		},
		"selected, for a named revision: istio.io/rev": {
			want:  namespaceWant{Selected: true, Revision: "1-31-1"},
			patch: `{"metadata":{"annotations":{"capstan.dev/injection-labelled":"istio.io/rev=1-31-1"},"labels":{"istio.io/rev":"1-31-1"}}}`,
		},
		"selected, Capstan's in-place label, moved to a revision (a canary's first batch)": {
			labels: enabled, annotations: marker,
			want:  namespaceWant{Selected: true, Revision: "1-31-1"},
			patch: `{"metadata":{"annotations":{"capstan.dev/injection-labelled":"istio.io/rev=1-31-1"},"labels":{"istio-injection":null,"istio.io/rev":"1-31-1"}}}`,
		},
		"selected, Capstan's revision label, moved to the next revision": {
			labels:      map[string]string{revision.RevLabel: "1-31-0"},
			annotations: map[string]string{InjectionLabelledAnnotation: "istio.io/rev=1-31-0"},
			want:        namespaceWant{Selected: true, Revision: "1-31-1"},
			patch:       `{"metadata":{"annotations":{"capstan.dev/injection-labelled":"istio.io/rev=1-31-1"},"labels":{"istio.io/rev":"1-31-1"}}}`,
		},
		"selected, Capstan's revision label changed by the user since: untouched": {
			labels:      map[string]string{revision.RevLabel: "stable"},
			annotations: map[string]string{InjectionLabelledAnnotation: "istio.io/rev=1-31-0"},
			want:        namespaceWant{Selected: true, Revision: "1-31-1"},
		},
		"not selected, Capstan's revision label: label and marker go": {
			labels:      map[string]string{revision.RevLabel: "1-31-0"},
			annotations: map[string]string{InjectionLabelledAnnotation: "istio.io/rev=1-31-0"},
			want:        namespaceWant{Revision: "1-31-1"},
			patch:       `{"metadata":{"annotations":{"capstan.dev/injection-labelled":null},"labels":{"istio.io/rev":null}}}`,
		},
		"selected and labelled by Capstan already: nothing": {
			labels: enabled, annotations: marker,
			want: namespaceWant{Selected: true, Revision: "default"},
		},
		"selected, the user's istio.io/rev: untouched": {
			labels: map[string]string{revision.RevLabel: "x"},
			want:   namespaceWant{Selected: true, Revision: "default"},
		},
		"selected, the user's istio-injection=disabled: untouched": {
			labels: map[string]string{revision.InjectionLabel: "disabled"},
			want:   namespaceWant{Selected: true, Revision: "default"},
		},
		"not selected, labelled by Capstan: label and marker go in one patch": {
			labels: enabled, annotations: marker,
			want:  namespaceWant{Revision: "default"},
			patch: `{"metadata":{"annotations":{"capstan.dev/injection-labelled":null},"labels":{"istio-injection":null}}}`,
		},
		"not selected, value changed by the user since: the label stays, the marker goes": {
			labels: map[string]string{revision.InjectionLabel: "disabled"}, annotations: marker,
			want:  namespaceWant{Revision: "default"},
			patch: `{"metadata":{"annotations":{"capstan.dev/injection-labelled":null}}}`,
		},
		"not selected, label removed by the user: the marker goes": {
			annotations: marker,
			want:        namespaceWant{Revision: "default"},
			patch:       `{"metadata":{"annotations":{"capstan.dev/injection-labelled":null}}}`,
		},
		"not selected, the user's own label, no marker: untouched": {
			labels: enabled,
			want:   namespaceWant{Revision: "default"},
		},
		"not selected, nothing there: nothing": {
			want: namespaceWant{Revision: "default"},
		},
	} {
		t.Run(name, func(t *testing.T) {
			got := namespaceLabelPatch(tc.labels, tc.annotations, tc.want)
			if tc.patch == "" {
				if got != nil {
					t.Fatalf("want no patch, got %s", got)
				}
				return
			}
			var g, w any
			if err := json.Unmarshal(got, &g); err != nil {
				t.Fatalf("patch %q: %v", got, err)
			}
			if err := json.Unmarshal([]byte(tc.patch), &w); err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(w, g); d != "" {
				t.Errorf("patch (-want +got):\n%s", d)
			}
		})
	}
}

// Which namespaces a selector is applied to: what it matches, less the excluded ones.
func TestInjectionSelection(t *testing.T) {
	excluded := excludedNamespaces("istio-system", "capstan-system")
	for _, ns := range []string{"istio-system", "kube-system", "kube-public", "kube-node-lease", "capstan-system"} {
		if !slices.Contains(excluded, ns) {
			t.Errorf("%s is not excluded", ns)
		}
	}
	if slices.Contains(excludedNamespaces("istio-system", ""), "") {
		t.Error("an unknown operator namespace excludes the empty name")
	}
	if _, err := metav1.LabelSelectorAsSelector(&metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: "Near"}}}); err == nil {
		t.Error("operator Near parsed: the InvalidSelector case cannot happen")
	}
}
