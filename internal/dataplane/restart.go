package dataplane

import (
	"fmt"
	"slices"
	"time"
)

// Annotations on a workload that hold its restart state and its opt-out. The restart
// state lives on each workload, written with the restart itself (one write per restarted
// workload), so a plan interrupted by a crash resumes from the cluster alone, and a
// workload is never restarted twice for the same target.
const (
	// RestartAnnotation "false" keeps Capstan from restarting the workload; its stale pods
	// are reported.
	RestartAnnotation = "capstan.dev/restart"
	// RestartedAtAnnotation is when Capstan last restarted the workload (RFC 3339, to the
	// second). Capstan writes it on the workload and on its pod template, whose change is
	// the restart, as `kubectl rollout restart` writes kubectl.kubernetes.io/restartedAt.
	RestartedAtAnnotation = "capstan.dev/restarted-at"
	// RestartedForAnnotation is the target that restart aimed at,
	// "revision/version/proxy-config".
	RestartedForAnnotation = "capstan.dev/restarted-for"
)

// RestartPolicy is spec.injection.rollout.restartStaleWorkloads: which stale sidecars
// Capstan restarts.
type RestartPolicy string

// The restart policies.
const (
	// RestartNever restarts nothing and writes nothing; stale workloads are reported.
	RestartNever RestartPolicy = "Never"
	// RestartOnUpgrade restarts workloads whose sidecars come from another revision or
	// version: not for proxy settings alone, nor for a missing stamp, which is no evidence
	// of an upgrade (so adopting an existing mesh restarts nothing).
	RestartOnUpgrade RestartPolicy = "OnUpgrade"
	// RestartAlways restarts workloads with stale sidecars whatever the reason.
	RestartAlways RestartPolicy = "Always"
)

// DefaultRestartTimeout is how long a restarted workload has to become available, when the
// policy says nothing: a Deployment's own default progress deadline.
const DefaultRestartTimeout = 10 * time.Minute

// Policy is spec.injection.rollout.
type Policy struct {
	// Restart is which stale sidecars are restarted; "" is Never.
	Restart RestartPolicy
	// MaxConcurrent is how many restarts may be in progress at once; below 1 is 1.
	MaxConcurrent int
	// PauseBetween is the least time between one restart completing (or timing out) and
	// the next starting.
	PauseBetween time.Duration
	// Timeout is how long a restart has to become available before its workload is
	// reported and skipped; 0 is DefaultRestartTimeout.
	Timeout time.Duration
}

// restarts says whether p restarts a workload whose stale pods have reason r at worst.
func (p Policy) restarts(r Reason) bool {
	switch p.Restart {
	case RestartAlways:
		return true
	case RestartOnUpgrade:
		return r.upgrade()
	}
	return false
}

// Workload is one workload as Decide sees it: its stale pods, its own annotations (the
// persisted restart state), and what was observed of its rollout. The caller passes every
// workload with stale pods and every workload with a restart that is not complete or not
// older than the timeout, each never from a cache older than Capstan's own last write to it.
type Workload struct {
	// StaleWorkload is what Counts says of its pods; Pods is 0 when none is stale.
	StaleWorkload
	// Annotations are the workload's own metadata annotations.
	Annotations map[string]string
	// GenerationObserved: its controller has observed its current generation.
	GenerationObserved bool
	// RolloutComplete: every replica runs the current template and is available, and no
	// old replica is left (what `kubectl rollout status` waits for).
	RolloutComplete bool
	// DisruptionBlocked: a PodDisruptionBudget selecting its pods allows no disruption now.
	// Decide sets no wake-up for it: the caller watches PodDisruptionBudgets.
	DisruptionBlocked bool
	// CompletedAt is when the caller saw its last restart complete, from its own memory:
	// zero when it has not (or forgot, in a crash: the restart is then seen complete anew).
	CompletedAt time.Time
	// CannotRestart, when set, says why the caller cannot restart it although its kind is
	// restartable (its update strategy is OnDelete, it was not found, the API server
	// refused the last restart): it is reported and the others go on.
	CannotRestart string
}

// Inputs are everything Decide looks at.
type Inputs struct {
	Policy    Policy
	Workloads []Workload
	Now       time.Time
	// Hold, when set, says why no restart may start now (the control plane is not ready to
	// inject the new sidecars): restarts in progress go on, the rest are queued.
	Hold string
}

// ActionKind says which single write a decision asks for.
type ActionKind int

// The writes Decide can ask for.
const (
	// ActionNone: nothing to write; decide again at Decision.Wake, or on the next change.
	ActionNone ActionKind = iota
	// ActionRestart: restart Action.Workload, recording Action.At and Action.For.
	ActionRestart
)

// Action is at most one write, so that a crash between any two writes leaves a state
// from which Decide picks up where it stopped.
type Action struct {
	Kind     ActionKind
	Workload WorkloadRef
	At       time.Time
	// For is the target of a restart.
	For string
}

// Annotations are what a restart sets, in one patch: on the workload's own metadata, and
// on its pod template, whose change is the restart.
func (a Action) Annotations() (workload, template map[string]string) {
	if a.Kind != ActionRestart {
		return nil, nil
	}
	at := a.At.UTC().Format(time.RFC3339)
	return map[string]string{RestartedAtAnnotation: at, RestartedForAnnotation: a.For},
		map[string]string{RestartedAtAnnotation: at}
}

// Status is where a workload stands in the restart plan.
type Status string

// The statuses of Item.
const (
	// StatusRestarting: its restart is under way.
	StatusRestarting Status = "Restarting"
	// StatusQueued: it will be restarted when a restart slot frees or a pause ends.
	StatusQueued Status = "Queued"
	// StatusTimedOut: it did not become available within the timeout; it is skipped.
	StatusTimedOut Status = "RestartTimedOut"
	// StatusWaitingForPDB: a PodDisruptionBudget allows no disruption now.
	StatusWaitingForPDB Status = "WaitingForDisruptionBudget"
	// StatusStaleAfterRestart: its pods are still stale after its restart for the same
	// target; it is not restarted again until the target changes.
	StatusStaleAfterRestart Status = "StaleAfterRestart"
	// StatusOptedOut: the workload carries capstan.dev/restart=false.
	StatusOptedOut Status = "OptedOut"
	// StatusNotRestartable: a Job, a pod no controller owns, another owner, or a workload
	// the caller cannot restart (Workload.CannotRestart).
	StatusNotRestartable Status = "NotRestartable"
	// StatusNotRestarted: the policy does not restart it for its reason.
	StatusNotRestarted Status = "NotRestarted"
	// StatusInvalidState: its restart annotations cannot be read; it is left alone.
	StatusInvalidState Status = "InvalidRestartState"
)

// Item is one workload's place in the plan, for status and the attention list.
type Item struct {
	StaleWorkload
	Status  Status
	Message string
}

// Decision is what Decide returns: at most one write, when to look again, and where every
// workload stands.
type Decision struct {
	Action Action
	// Wake is when time alone next changes the decision; zero when only a change does.
	Wake time.Time
	// WakeReason says what happens at Wake.
	WakeReason string
	// Items are the workloads that are restarting, waiting or left stale, ordered by
	// namespace, kind and name.
	Items []Item
	// InProgress is how many restarts are in progress: status.injection.restartsInProgress.
	InProgress int
	// Completed are the workloads whose restart is seen complete now, for the first time:
	// the caller remembers it (Workload.CompletedAt) from Now.
	Completed []WorkloadRef
}

// RestartState is the restart state persisted on a workload.
type RestartState struct {
	// At is when Capstan last restarted the workload; zero if never.
	At time.Time
	// For is the target that restart aimed at.
	For string
}

// RestartStateOf reads a workload's restart state from its annotations.
func RestartStateOf(annotations map[string]string) (RestartState, error) {
	s := RestartState{For: annotations[RestartedForAnnotation]}
	if v, ok := annotations[RestartedAtAnnotation]; ok {
		at, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return RestartState{}, fmt.Errorf("annotation %s: %q is not an RFC 3339 time", RestartedAtAnnotation, v)
		}
		s.At = at
	}
	return s, nil
}

// Decide is the restart plan as a pure function: given the policy, every relevant
// workload (with its persisted restart state) and the time, it returns the one write to
// make next. The controller makes that write and calls Decide again, until there is none.
//
// Guarantees: never more than MaxConcurrent restarts in progress (a timed-out one no
// longer counts); a new restart only PauseBetween after the last completion or timeout
// (after a crash, the first completion seen counts from then); no workload restarted
// twice for the same target, since the target is written with the restart; a workload
// whose PodDisruptionBudget allows no disruption waits while the others go on; under
// Never, no write at all.
func Decide(in Inputs) Decision {
	p := in.Policy
	if p.MaxConcurrent < 1 {
		p.MaxConcurrent = 1
	}
	if p.Timeout <= 0 {
		p.Timeout = DefaultRestartTimeout
	}
	now := in.Now.UTC().Truncate(time.Second)
	var (
		d          Decision
		lastEnd    time.Time // the last completion or timeout of a restart
		candidates []int     // indexes in d.Items of workloads to restart
	)
	wake := func(at time.Time, why string) {
		if d.Wake.IsZero() || at.Before(d.Wake) {
			d.Wake, d.WakeReason = at, why
		}
	}
	item := func(w Workload, s Status, format string, args ...any) {
		d.Items = append(d.Items, Item{StaleWorkload: w.StaleWorkload, Status: s, Message: w.String() + ": " + fmt.Sprintf(format, args...)})
	}
	workloads := slices.SortedFunc(slices.Values(in.Workloads), func(a, b Workload) int { return compareRefs(a.WorkloadRef, b.WorkloadRef) })
	for _, w := range workloads {
		st, err := RestartStateOf(w.Annotations)
		if err != nil {
			item(w, StatusInvalidState, "%v; it is not restarted until the annotation is fixed or removed", err)
			continue
		}
		deadline := st.At.Add(p.Timeout)
		switch complete := w.GenerationObserved && w.RolloutComplete; {
		case st.At.IsZero():
		case !w.CompletedAt.Before(st.At):
			lastEnd = later(lastEnd, w.CompletedAt)
		case complete:
			d.Completed = append(d.Completed, w.WorkloadRef)
			lastEnd = now
		case now.Before(deadline):
			d.InProgress++
			wake(deadline, w.String()+" times out")
			item(w, StatusRestarting, "restarted at %s; waiting for its rollout to complete and be available (timeout %s)", formatTime(st.At), p.Timeout)
			continue
		default:
			lastEnd = later(lastEnd, deadline)
			if w.Pods == 0 || st.For == w.Target {
				item(w, StatusTimedOut, "did not become available within %s of its restart at %s; skipped", p.Timeout, formatTime(st.At))
				continue
			}
			// Timed out for an older target: the new one is a new attempt.
		}
		if w.Pods == 0 {
			continue
		}
		stale := fmt.Sprintf("stale pods: %d (%s)", w.Pods, w.Reason)
		switch {
		case !w.Restartable():
			item(w, StatusNotRestartable, "%s; %s", stale, w.whyNotRestartable())
		case w.CannotRestart != "":
			item(w, StatusNotRestartable, "%s; %s", stale, w.CannotRestart)
		case w.Annotations[RestartAnnotation] == "false":
			item(w, StatusOptedOut, "%s, not restarted: it has %s=false", stale, RestartAnnotation)
		case !p.restarts(w.Reason):
			item(w, StatusNotRestarted, "%s, not restarted: restartStaleWorkloads is %s", stale, policyName(p.Restart))
		case st.For == w.Target:
			item(w, StatusStaleAfterRestart, "%s after its restart at %s for %s; not restarted again for the same target", stale, formatTime(st.At), st.For)
		case w.DisruptionBlocked:
			item(w, StatusWaitingForPDB, "%s; its restart waits: a PodDisruptionBudget allows no disruption now", stale)
		default:
			item(w, StatusQueued, "%s", stale)
			candidates = append(candidates, len(d.Items)-1)
		}
	}
	pauseEnd := lastEnd.Add(p.PauseBetween)
	for _, i := range candidates {
		it := &d.Items[i]
		switch {
		case in.Hold != "":
			it.Message += "; queued: " + in.Hold
		case d.InProgress >= p.MaxConcurrent:
			it.Message += fmt.Sprintf("; queued behind %d restarts in progress (maxConcurrent %d)", d.InProgress, p.MaxConcurrent)
		case now.Before(pauseEnd):
			it.Message += "; queued until " + formatTime(pauseEnd) + " (pauseBetween)"
			wake(pauseEnd, "pauseBetween ends")
		case d.Action.Kind == ActionNone:
			d.Action = Action{Kind: ActionRestart, Workload: it.WorkloadRef, At: now, For: it.Target}
			d.InProgress++
			it.Status = StatusRestarting
			it.Message += "; restarting now for " + it.Target
		}
	}
	return d
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func policyName(p RestartPolicy) RestartPolicy {
	if p == "" {
		return RestartNever
	}
	return p
}
