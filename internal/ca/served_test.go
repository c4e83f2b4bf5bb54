package ca

import (
	"strings"
	"testing"
)

// TestServedCounts protects which istio-ca-root-cert ConfigMaps a rotation waits on: those
// in namespaces istiod serves, never one in a terminating namespace or one
// discoverySelectors leave out, and always the control plane's own.
func TestServedCounts(t *testing.T) {
	sels, err := DiscoverySelectors([]byte(`{"global":{"hub":"x"},"meshConfig":{"accessLogFile":"/dev/stdout","discoverySelectors":[
		{"matchLabels":{"mesh":"on"}},
		{"matchExpressions":[{"key":"team","operator":"In","values":["payments","search"]}]}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(sels) != 2 {
		t.Fatalf("read %d selectors, want 2", len(sels))
	}
	cases := map[string]struct {
		served      Served
		ns          string
		labels      map[string]string
		terminating bool
		want        bool
	}{
		"no selectors: any namespace":               {served: Served{ControlPlane: "istio-system"}, ns: "app", want: true},
		"no selectors: a terminating one does not":  {served: Served{ControlPlane: "istio-system"}, ns: "app", terminating: true},
		"matches the first selector":                {served: Served{ControlPlane: "istio-system", Selectors: sels}, ns: "app", labels: map[string]string{"mesh": "on"}, want: true},
		"matches the second selector":               {served: Served{ControlPlane: "istio-system", Selectors: sels}, ns: "app", labels: map[string]string{"team": "search"}, want: true},
		"matches no selector":                       {served: Served{ControlPlane: "istio-system", Selectors: sels}, ns: "app", labels: map[string]string{"mesh": "off", "team": "ads"}},
		"no labels, selectors set":                  {served: Served{ControlPlane: "istio-system", Selectors: sels}, ns: "app"},
		"the control plane, unselected, still does": {served: Served{ControlPlane: "istio-system", Selectors: sels}, ns: "istio-system", want: true},
		"the control plane, terminating, does not":  {served: Served{ControlPlane: "istio-system", Selectors: sels}, ns: "istio-system", terminating: true},
		"selected but terminating does not":         {served: Served{ControlPlane: "istio-system", Selectors: sels}, ns: "app", labels: map[string]string{"mesh": "on"}, terminating: true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := tc.served.Counts(tc.ns, tc.labels, tc.terminating); got != tc.want {
				t.Fatalf("Counts(%s, %v, terminating %t) = %t, want %t", tc.ns, tc.labels, tc.terminating, got, tc.want)
			}
		})
	}
}

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
			sels, err := DiscoverySelectors([]byte(tc.values))
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
			if tc.wantN == 1 && !(Served{Selectors: sels}).Counts("any", nil, false) {
				t.Fatal("an empty selector does not select every namespace")
			}
		})
	}
}
