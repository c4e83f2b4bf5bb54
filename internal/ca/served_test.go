package ca

import (
	"testing"

	"github.com/capstan-mesh/capstan/internal/values"
)

// TestServedCounts protects which istio-ca-root-cert ConfigMaps a rotation waits on: those
// in namespaces istiod serves, never one in a terminating namespace or one
// discoverySelectors leave out, and always the control plane's own.
func TestServedCounts(t *testing.T) {
	sels, err := values.DiscoverySelectors([]byte(`{"global":{"hub":"x"},"meshConfig":{"accessLogFile":"/dev/stdout","discoverySelectors":[
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
