package dataplane

import (
	"cmp"
	"fmt"
	"slices"
)

// MaxAttention is how many entries status.injection's attention list holds at most, so
// that status stays small however many workloads need attention.
const MaxAttention = 10

// ReasonRevisionMissing is the attention reason of a namespace whose labels name a
// revision or tag that does not exist.
const ReasonRevisionMissing = "RevisionMissing"

// Attention is one entry of status.injection's list of what needs attention.
type Attention struct {
	// Kind is a workload's kind, or "Namespace".
	Kind, Namespace, Name string
	Reason                string
	Message               string
}

// attentionRank orders the attention list, most important first: pods that get no sidecar
// at all, then restarts that failed, then workloads left stale for a reason the user can
// act on, last those the policy leaves stale. Restarts in progress or queued are not in the
// list: they need no one.
var attentionRank = map[string]int{
	ReasonRevisionMissing:           0,
	string(StatusTimedOut):          1,
	string(StatusInvalidState):      2,
	string(StatusStaleAfterRestart): 3,
	string(StatusWaitingForPDB):     4,
	string(StatusNotRestartable):    5,
	string(StatusOptedOut):          6,
	string(StatusNotRestarted):      7,
}

// AttentionList is status.injection's list of what needs attention: namespaces labelled
// for a revision that does not exist, and Decide's items that need someone, at most
// MaxAttention of them, most important first and then by stale reason, namespace, kind and
// name, so that the same cluster always gives the same list. more is how many were left
// out.
func AttentionList(items []Item, missing []MissingRevision) (list []Attention, more int) {
	type entry struct {
		Attention
		rank, reason int
	}
	var all []entry
	for _, m := range missing {
		all = append(all, entry{Attention: Attention{Kind: "Namespace", Name: m.Namespace, Reason: ReasonRevisionMissing,
			Message: fmt.Sprintf("namespace %s: its labels select revision or tag %q, which does not exist, so its new pods get no sidecar (%d of its pods have none)", m.Namespace, m.Name, m.Pods)}})
	}
	for _, it := range items {
		rank, ok := attentionRank[string(it.Status)]
		if !ok {
			continue
		}
		all = append(all, entry{Attention: Attention{Kind: it.Kind, Namespace: it.Namespace, Name: it.Name, Reason: string(it.Status), Message: it.Message},
			rank: rank, reason: slices.Index(reasons[:], it.Reason)})
	}
	slices.SortFunc(all, func(a, b entry) int {
		return cmp.Or(cmp.Compare(a.rank, b.rank), cmp.Compare(a.reason, b.reason),
			cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Name, b.Name))
	})
	if len(all) > MaxAttention {
		more = len(all) - MaxAttention
		all = all[:MaxAttention]
	}
	for _, e := range all {
		list = append(list, e.Attention)
	}
	return list, more
}
