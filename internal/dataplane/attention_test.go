package dataplane

import (
	"fmt"
	"slices"
	"testing"
)

func TestAttentionList(t *testing.T) {
	item := func(kind, ns, name string, s Status, r Reason) Item {
		return Item{StaleWorkload: StaleWorkload{WorkloadRef: WorkloadRef{kind, ns, name}, Pods: 1, Reason: r}, Status: s, Message: "m"}
	}
	many := func(n int) []Item {
		var items []Item
		for i := range n {
			items = append(items, item("Deployment", "shop", fmt.Sprintf("w%02d", i), StatusNotRestarted, ProxyConfigChanged))
		}
		return items
	}
	tests := map[string]struct {
		items   []Item
		missing []MissingRevision
		want    []string // "Kind namespace/name Reason"
		more    int
	}{
		"most important first: no sidecar at all, failed restarts, then what the user can act on": {
			items: []Item{
				item("Deployment", "a", "policy", StatusNotRestarted, VersionChanged),
				item("Deployment", "a", "optout", StatusOptedOut, VersionChanged),
				item("Job", "a", "job", StatusNotRestartable, VersionChanged),
				item("Deployment", "a", "pdb", StatusWaitingForPDB, VersionChanged),
				item("Deployment", "a", "again", StatusStaleAfterRestart, ProxyConfigChanged),
				item("Deployment", "a", "broken", StatusInvalidState, VersionChanged),
				item("Deployment", "z", "stuck", StatusTimedOut, VersionChanged),
			},
			missing: []MissingRevision{{Namespace: "typo", Name: "1-30-9", Pods: 3}},
			want: []string{
				"Namespace /typo RevisionMissing",
				"Deployment z/stuck RestartTimedOut",
				"Deployment a/broken InvalidRestartState",
				"Deployment a/again StaleAfterRestart",
				"Deployment a/pdb WaitingForDisruptionBudget",
				"Job a/job NotRestartable",
				"Deployment a/optout OptedOut",
				"Deployment a/policy NotRestarted",
			},
		},
		"restarts in progress or queued need no one": {
			items: []Item{item("Deployment", "a", "busy", StatusRestarting, VersionChanged), item("Deployment", "a", "next", StatusQueued, VersionChanged)},
		},
		"within a status, the more important stale reason first, then by namespace, kind and name": {
			items: []Item{
				item("Deployment", "a", "settings", StatusNotRestarted, ProxyConfigChanged),
				item("StatefulSet", "b", "db", StatusNotRestarted, RevisionChanged),
				item("Deployment", "b", "web", StatusNotRestarted, RevisionChanged),
				item("Deployment", "a", "old", StatusNotRestarted, Unstamped),
			},
			want: []string{
				"Deployment b/web NotRestarted",
				"StatefulSet b/db NotRestarted",
				"Deployment a/old NotRestarted",
				"Deployment a/settings NotRestarted",
			},
		},
		"capped at MaxAttention; more counts the rest": {
			items: many(15),
			want: []string{
				"Deployment shop/w00 NotRestarted", "Deployment shop/w01 NotRestarted", "Deployment shop/w02 NotRestarted",
				"Deployment shop/w03 NotRestarted", "Deployment shop/w04 NotRestarted", "Deployment shop/w05 NotRestarted",
				"Deployment shop/w06 NotRestarted", "Deployment shop/w07 NotRestarted", "Deployment shop/w08 NotRestarted",
				"Deployment shop/w09 NotRestarted",
			},
			more: 5,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			// The same entries in any order give the same list.
			for _, items := range [][]Item{tc.items, reversed(tc.items)} {
				list, more := AttentionList(items, tc.missing)
				var got []string
				for _, a := range list {
					got = append(got, fmt.Sprintf("%s %s/%s %s", a.Kind, a.Namespace, a.Name, a.Reason))
					if a.Message == "" {
						t.Errorf("%s/%s has no message", a.Namespace, a.Name)
					}
				}
				if !slices.Equal(got, tc.want) || more != tc.more {
					t.Errorf("list\n%q (more %d)\nwant\n%q (more %d)", got, more, tc.want, tc.more)
				}
			}
		})
	}
}

func reversed(items []Item) []Item {
	r := slices.Clone(items)
	slices.Reverse(r)
	return r
}
