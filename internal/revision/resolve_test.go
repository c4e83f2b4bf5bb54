package revision

import (
	"testing"
)

// canary is a control plane in the middle of a canary: revisions 1-31-0 and 1-31-1, the
// default and stable tags on the old one, the canary tag on the new one.
var canary = Resolver{
	Revisions: []string{"1-31-0", "1-31-1"},
	Tags:      map[string]string{"default": "1-31-0", "stable": "1-31-0", "canary": "1-31-1"},
}

// inPlace is an in-place control plane: one istiod, revision default, no tags.
var inPlace = Resolver{Revisions: []string{"default"}}

func TestResolveFollowsTheWebhooksSelectors(t *testing.T) {
	l := func(kv ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	tests := map[string]struct {
		r         Resolver
		ns, pod   map[string]string
		wantRev   string
		wantVia   Via
		wantGhost bool
	}{
		"no labels: no sidecar":                           {inPlace, nil, nil, "", ViaNone, false},
		"istio-injection=enabled, in place":               {inPlace, l(InjectionLabel, "enabled"), nil, "default", ViaNamespace, false},
		"istio-injection=enabled follows the default tag": {canary, l(InjectionLabel, "enabled"), nil, "1-31-0", ViaNamespace, false},
		"istio-injection=disabled wins over a rev label":  {canary, l(InjectionLabel, "disabled", RevLabel, "canary"), nil, "", ViaNamespaceOff, false},
		"istio-injection=disabled wins over the pod":      {canary, l(InjectionLabel, "disabled"), l(InjectLabel, "true"), "", ViaNamespaceOff, false},
		"istio-injection wins over istio.io/rev":          {canary, l(InjectionLabel, "enabled", RevLabel, "canary"), nil, "1-31-0", ViaNamespace, false},
		"a misspelt istio-injection value turns it off":   {canary, l(InjectionLabel, "enable"), nil, "", ViaNamespaceOff, false},
		"namespace rev names a revision":                  {canary, l(RevLabel, "1-31-1"), nil, "1-31-1", ViaNamespaceRev, false},
		"namespace rev names a tag":                       {canary, l(RevLabel, "stable"), nil, "1-31-0", ViaNamespaceRev, false},
		"namespace rev names nothing that exists":         {canary, l(RevLabel, "1-30-9"), nil, "", ViaNamespaceRev, true},
		"pod inject=false wins over the namespace":        {canary, l(InjectionLabel, "enabled"), l(InjectLabel, "false"), "", ViaPodOff, false},
		"the namespace's rev wins over the pod's":         {canary, l(RevLabel, "canary"), l(RevLabel, "stable"), "1-31-1", ViaNamespaceRev, false},
		"pod rev in an unlabelled namespace":              {canary, nil, l(RevLabel, "canary"), "1-31-1", ViaPodRev, false},
		"pod inject=true follows the default tag":         {canary, nil, l(InjectLabel, "true"), "1-31-0", ViaPodInject, false},
		"pod inject=true, in place":                       {inPlace, nil, l(InjectLabel, "true"), "default", ViaPodInject, false},
		"pod rev wins over its inject=true":               {canary, nil, l(InjectLabel, "true", RevLabel, "canary"), "1-31-1", ViaPodRev, false},
		"a tag pointing at a removed revision is missing": {Resolver{Revisions: []string{"1-31-1"}, Tags: map[string]string{"default": "1-31-0"}}, l(InjectionLabel, "enabled"), nil, "", ViaNamespace, true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := tc.r.Resolve(tc.ns, tc.pod)
			if got.Revision != tc.wantRev || got.Via != tc.wantVia || got.Missing != tc.wantGhost {
				t.Errorf("Resolve = %+v, want revision %q via %q missing %t", got, tc.wantRev, tc.wantVia, tc.wantGhost)
			}
		})
	}
}

func TestInjectedBy(t *testing.T) {
	tests := map[string]struct {
		annotations map[string]string
		rev         string
		ok          bool
	}{
		"no sidecar":                   {nil, "", true},
		"injected by a revision":       {map[string]string{StatusAnnotation: `{"revision":"1-31-1","containers":["istio-proxy"]}`}, "1-31-1", true},
		"injected before revisions":    {map[string]string{StatusAnnotation: `{"containers":["istio-proxy"]}`}, "default", true},
		"an annotation that is broken": {map[string]string{StatusAnnotation: `{revision`}, "", false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			rev, ok := InjectedBy(tc.annotations)
			if rev != tc.rev || ok != tc.ok {
				t.Errorf("InjectedBy = %q, %t; want %q, %t", rev, ok, tc.rev, tc.ok)
			}
		})
	}
}

// InUse is what pruning an old revision will trust: terminated pods keep no revision,
// pods injected through sidecar.istio.io/inject do, and an unreadable status makes every
// revision's use unknown rather than unused.
func TestInUse(t *testing.T) {
	injected := func(ns, rev string, terminated bool) Pod {
		return Pod{Namespace: ns, Annotations: map[string]string{StatusAnnotation: `{"revision":"` + rev + `"}`}, Terminated: terminated}
	}
	r := Resolver{Revisions: []string{"1-31-0", "1-31-1"}, Tags: map[string]string{"default": "1-31-1"}}
	namespaces := map[string]map[string]string{
		"moved":   {RevLabel: "1-31-1"},
		"default": {InjectionLabel: "enabled"},
		"off":     {InjectionLabel: "disabled"},
		"plain":   {},
	}
	t.Run("only terminated pods of the old revision: unused", func(t *testing.T) {
		u := r.InUse(namespaces, []Pod{injected("plain", "1-31-0", true), injected("moved", "1-31-1", false)})
		if !u.Unused("1-31-0") {
			t.Errorf("1-31-0 use %+v, unknown %t: want unused", u.ByRevision["1-31-0"], u.Unknown)
		}
		if got := u.ByRevision["1-31-1"]; got.Pods != 1 || got.Namespaces != 2 || len(got.Tags) != 1 || u.Unused("1-31-1") {
			t.Errorf("1-31-1 use %+v", got)
		}
	})
	t.Run("a pod injected through sidecar.istio.io/inject keeps its revision", func(t *testing.T) {
		p := injected("plain", "1-31-0", false)
		p.Labels = map[string]string{InjectLabel: "true"}
		if u := r.InUse(namespaces, []Pod{p}); u.Unused("1-31-0") || u.ByRevision["1-31-0"].Pods != 1 {
			t.Errorf("use %+v", u.ByRevision["1-31-0"])
		}
	})
	t.Run("an unreadable status makes use unknown, never unused", func(t *testing.T) {
		u := r.InUse(namespaces, []Pod{{Namespace: "plain", Annotations: map[string]string{StatusAnnotation: "{"}}})
		if !u.Unknown || u.Unused("1-31-0") || u.UnknownReason == "" {
			t.Errorf("uses %+v: want unknown", u)
		}
	})
	t.Run("a namespace label keeps a revision with no pods", func(t *testing.T) {
		u := r.InUse(map[string]map[string]string{"waiting": {RevLabel: "1-31-0"}}, nil)
		if u.Unused("1-31-0") || u.ByRevision["1-31-0"].Namespaces != 1 {
			t.Errorf("use %+v", u.ByRevision["1-31-0"])
		}
	})
}
