package values_test

import (
	"errors"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"

	"github.com/capstan-mesh/capstan/internal/ca"
	"github.com/capstan-mesh/capstan/internal/values"
)

// TestDiscoverySelectors protects reading meshConfig.discoverySelectors from spec.values:
// unset or empty means every namespace, and a malformed selector is an error naming it.
func TestDiscoverySelectors(t *testing.T) {
	cases := map[string]struct {
		values  string
		wantN   int
		wantErr string
	}{
		"no values":                     {values: ""},
		"no meshConfig":                 {values: `{"pilot":{"env":{}}}`},
		"an empty list":                 {values: `{"meshConfig":{"discoverySelectors":[]}}`},
		"an empty selector":             {values: `{"meshConfig":{"discoverySelectors":[{}]}}`, wantN: 1},
		"a selector that is a string":   {values: `{"meshConfig":{"discoverySelectors":[{"matchLabels":{"a":"b"}},"mesh=on"]}}`, wantErr: "spec.values.meshConfig.discoverySelectors[1]"},
		"a bad operator":                {values: `{"meshConfig":{"discoverySelectors":[{"matchExpressions":[{"key":"a","operator":"Near"}]}]}}`, wantErr: "spec.values.meshConfig.discoverySelectors[0]"},
		"discoverySelectors not a list": {values: `{"meshConfig":{"discoverySelectors":{"matchLabels":{}}}}`, wantErr: "spec.values.meshConfig.discoverySelectors"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			sels, err := values.DiscoverySelectors([]byte(tc.values))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(sels) != tc.wantN || (tc.wantN == 0 && sels != nil) {
				t.Fatalf("%d selectors (%v), want %d", len(sels), sels, tc.wantN)
			}
			if tc.wantN == 1 && !(ca.Served{Selectors: sels}).Counts("any", nil, false) {
				t.Fatal("an empty selector does not select every namespace")
			}
		})
	}
}

// A selector istiod cannot read is bad input: the spec is refused with the field, before
// anything is rendered, rather than only logged by the CA on every reconcile.
func TestForRefusesUnreadableDiscoverySelectors(t *testing.T) {
	spec := &meshv1.MeshControlPlaneSpec{Values: &apiextensionsv1.JSON{Raw: []byte(`{"meshConfig":{"discoverySelectors":[{"matchExpressions":[{"key":"a","operator":"Near"}]}]}}`)}}
	_, err := values.For(spec)
	var fe *values.FieldError
	if !errors.As(err, &fe) || fe.Field != "spec.values.meshConfig.discoverySelectors" || !strings.Contains(err.Error(), "[0]") {
		t.Fatalf("error %v, want a FieldError naming the selector", err)
	}
	spec.Values.Raw = []byte(`{"meshConfig":{"discoverySelectors":[{"matchLabels":{"mesh":"on"}}]}}`)
	if _, err := values.For(spec); err != nil {
		t.Fatalf("a readable selector: %v", err)
	}
}
