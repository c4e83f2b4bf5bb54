package dataplane

import (
	"testing"

	"github.com/capstan-mesh/capstan/internal/revision"
)

// canary is a control plane in the middle of a canary upgrade: 1-31-0 (the default and
// stable tags) and 1-31-1 (the canary tag), each stamping its own version and settings.
var canary = Desired{
	Resolver: revision.Resolver{
		Revisions: []string{"1-31-0", "1-31-1"},
		Tags:      map[string]string{"default": "1-31-0", "stable": "1-31-0", "canary": "1-31-1"},
	},
	Stamps: map[string]Stamp{"1-31-0": {"1.31.0", "c0"}, "1-31-1": {"1.31.1", "c1"}},
}

// inPlace is an in-place control plane: the one revision default, now at 1.31.1.
var inPlace = Desired{
	Resolver: revision.Resolver{Revisions: []string{"default"}},
	Stamps:   map[string]Stamp{"default": {"1.31.1", "cA"}},
}

// labels builds a map from key, value pairs.
func labels(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// sidecar is the annotations of a pod injected by rev with the given stamps; "-" leaves a
// stamp out.
func sidecar(rev, version, config string) map[string]string {
	a := map[string]string{revision.StatusAnnotation: `{"revision":"` + rev + `","containers":["istio-proxy"]}`}
	if version != "-" {
		a[ProxyVersionAnnotation] = version
	}
	if config != "-" {
		a[ProxyConfigAnnotation] = config
	}
	return a
}

func TestStale(t *testing.T) {
	enabled := labels(revision.InjectionLabel, "enabled")
	preRevisions := map[string]string{revision.StatusAnnotation: `{"containers":["istio-proxy"]}`, ProxyVersionAnnotation: "1.31.1", ProxyConfigAnnotation: "cA"}
	tests := map[string]struct {
		d    Desired
		ns   map[string]string
		pod  Pod
		want Reason // "" when not stale
	}{
		"a pod without a sidecar is not stale":             {canary, enabled, Pod{}, ""},
		"a terminated pod is not stale":                    {canary, enabled, Pod{Annotations: sidecar("1-31-1", "-", "-"), Terminated: true}, ""},
		"current: the selected revision, its stamps":       {canary, enabled, Pod{Annotations: sidecar("1-31-0", "1.31.0", "c0")}, ""},
		"istio-injection=enabled follows the default tag":  {canary, enabled, Pod{Annotations: sidecar("1-31-1", "1.31.1", "c1")}, RevisionChanged},
		"a namespace moved to the canary tag":              {canary, labels(revision.RevLabel, "canary"), Pod{Annotations: sidecar("1-31-0", "1.31.0", "c0")}, RevisionChanged},
		"a namespace naming the revision itself":           {canary, labels(revision.RevLabel, "1-31-1"), Pod{Annotations: sidecar("1-31-1", "1.31.1", "c1")}, ""},
		"the pod's own rev label, unlabelled namespace":    {canary, nil, Pod{Labels: labels(revision.RevLabel, "canary"), Annotations: sidecar("1-31-0", "1.31.0", "c0")}, RevisionChanged},
		"the namespace's rev wins over the pod's":          {canary, labels(revision.RevLabel, "stable"), Pod{Labels: labels(revision.RevLabel, "canary"), Annotations: sidecar("1-31-0", "1.31.0", "c0")}, ""},
		"pod inject=true follows the default tag":          {canary, nil, Pod{Labels: labels(revision.InjectLabel, "true"), Annotations: sidecar("1-31-1", "1.31.1", "c1")}, RevisionChanged},
		"injected before revisions, in place: current":     {inPlace, enabled, Pod{Annotations: preRevisions}, ""},
		"injected before revisions, default tag moved":     {canary, enabled, Pod{Annotations: preRevisions}, RevisionChanged},
		"another revision wins over stamps":                {canary, enabled, Pod{Annotations: sidecar("1-31-1", "1.31.0", "c0")}, RevisionChanged},
		"namespace turned off: a restart would drop it":    {canary, labels(revision.InjectionLabel, "disabled"), Pod{Annotations: sidecar("1-31-1", "-", "-")}, ""},
		"namespace unlabelled: a restart would drop it":    {canary, nil, Pod{Annotations: sidecar("1-31-1", "-", "-")}, ""},
		"pod inject=false since: a restart would drop it":  {canary, enabled, Pod{Labels: labels(revision.InjectLabel, "false"), Annotations: sidecar("1-31-1", "-", "-")}, ""},
		"namespace names a missing revision":               {canary, labels(revision.RevLabel, "1-30-9"), Pod{Annotations: sidecar("1-31-0", "-", "-")}, ""},
		"in-place upgrade: same revision, older version":   {inPlace, enabled, Pod{Annotations: sidecar("default", "1.31.0", "cA")}, VersionChanged},
		"same revision and version, other proxy settings":  {inPlace, enabled, Pod{Annotations: sidecar("default", "1.31.1", "cB")}, ProxyConfigChanged},
		"version and settings changed: the version counts": {inPlace, enabled, Pod{Annotations: sidecar("default", "1.31.0", "cB")}, VersionChanged},
		"no stamps: injected before Capstan":               {inPlace, enabled, Pod{Annotations: sidecar("default", "-", "-")}, Unstamped},
		"a version stamp only: unstamped":                  {inPlace, enabled, Pod{Annotations: sidecar("default", "1.31.1", "-")}, Unstamped},
		"an older version without a config stamp":          {inPlace, enabled, Pod{Annotations: sidecar("default", "1.31.0", "-")}, VersionChanged},
		"a revision with no known stamp: by name only":     {Desired{Resolver: inPlace.Resolver}, enabled, Pod{Annotations: sidecar("default", "-", "-")}, ""},
		"an unreadable status in a meshed namespace":       {canary, enabled, Pod{Annotations: map[string]string{revision.StatusAnnotation: "{"}}, UnreadableStatus},
		"an unreadable status where nothing injects":       {canary, nil, Pod{Annotations: map[string]string{revision.StatusAnnotation: "{"}}, ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			stale, reason := Stale(tc.pod, tc.ns, tc.d)
			if stale != (tc.want != "") || reason != tc.want {
				t.Errorf("Stale = %t, %q; want %q", stale, reason, tc.want)
			}
		})
	}
}

func TestWorkloadOf(t *testing.T) {
	tests := map[string]struct {
		pod         Pod
		want        WorkloadRef
		restartable bool
	}{
		"a Deployment's pod (its ReplicaSet resolved)": {Pod{Namespace: "shop", Name: "cart-7d9-x", OwnerKind: "Deployment", OwnerName: "cart"}, WorkloadRef{"Deployment", "shop", "cart"}, true},
		"a StatefulSet's pod":                          {Pod{Namespace: "db", Name: "pg-0", OwnerKind: "StatefulSet", OwnerName: "pg"}, WorkloadRef{"StatefulSet", "db", "pg"}, true},
		"a DaemonSet's pod":                            {Pod{Namespace: "ops", Name: "agent-q", OwnerKind: "DaemonSet", OwnerName: "agent"}, WorkloadRef{"DaemonSet", "ops", "agent"}, true},
		"a Job's pod is reported only":                 {Pod{Namespace: "ops", Name: "mig-z", OwnerKind: "Job", OwnerName: "mig"}, WorkloadRef{"Job", "ops", "mig"}, false},
		"a bare ReplicaSet's pod is reported only":     {Pod{Namespace: "ops", Name: "rs-z", OwnerKind: "ReplicaSet", OwnerName: "rs"}, WorkloadRef{"ReplicaSet", "ops", "rs"}, false},
		"a pod no controller owns is its own workload": {Pod{Namespace: "ops", Name: "debug"}, WorkloadRef{"Pod", "ops", "debug"}, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := WorkloadOf(tc.pod)
			if got != tc.want || got.Restartable() != tc.restartable {
				t.Errorf("WorkloadOf = %v (restartable %t); want %v (restartable %t)", got, got.Restartable(), tc.want, tc.restartable)
			}
		})
	}
}
