package dataplane

import (
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 9, 1, 12, 0, 0, 0, time.UTC)

const target = "default/1.31.1/cA"

// stale is a Deployment in namespace shop with 3 pods stale for reason, towards target.
func stale(name string, reason Reason) StaleWorkload {
	return StaleWorkload{WorkloadRef: WorkloadRef{"Deployment", "shop", name}, Pods: 3, Reason: reason, Target: target}
}

// restarted is the annotations of a workload restarted at at for target forTarget.
func restarted(at time.Time, forTarget string) map[string]string {
	a, _ := Action{Kind: ActionRestart, At: at, For: forTarget}.Annotations()
	return a
}

func TestDecide(t *testing.T) {
	always := Policy{Restart: RestartAlways, MaxConcurrent: 1, Timeout: 10 * time.Minute}
	onUpgrade := always
	onUpgrade.Restart = RestartOnUpgrade
	two := always
	two.MaxConcurrent = 2
	paused := always
	paused.PauseBetween = 5 * time.Minute
	running := func(w StaleWorkload, at time.Time) Workload {
		return Workload{StaleWorkload: w, Annotations: restarted(at, target), GenerationObserved: true}
	}
	job := StaleWorkload{WorkloadRef: WorkloadRef{"Job", "shop", "migrate"}, Pods: 1, Reason: VersionChanged, Target: target}
	bare := StaleWorkload{WorkloadRef: WorkloadRef{"Pod", "shop", "debug"}, Pods: 1, Reason: VersionChanged, Target: target}
	tests := map[string]struct {
		policy    Policy
		workloads []Workload
		// want is the write expected: its kind and workload name.
		wantKind ActionKind
		wantName string
		statuses map[string]Status // by workload name
		wake     time.Time
		restarts int // InProgress
	}{
		"nothing stale and nothing running: nothing to do": {
			always, []Workload{{StaleWorkload: StaleWorkload{WorkloadRef: WorkloadRef{"Deployment", "shop", "a"}}}},
			ActionNone, "", map[string]Status{}, time.Time{}, 0,
		},
		"Always restarts the first stale workload": {
			always, []Workload{{StaleWorkload: stale("b", ProxyConfigChanged)}, {StaleWorkload: stale("a", Unstamped)}},
			ActionRestart, "a", map[string]Status{"a": StatusRestarting, "b": StatusQueued}, time.Time{}, 1,
		},
		"Never writes nothing": {
			Policy{}, []Workload{{StaleWorkload: stale("a", VersionChanged)}, {StaleWorkload: stale("b", VersionChanged), Annotations: restarted(t0.Add(-time.Minute), "default/1.31.0/cA"), GenerationObserved: true, RolloutComplete: true}},
			ActionNone, "", map[string]Status{"a": StatusNotRestarted, "b": StatusNotRestarted}, time.Time{}, 0,
		},
		"Never after a plan began: a restart still rolling is in progress": {
			Policy{}, []Workload{running(stale("a", VersionChanged), t0.Add(-time.Minute))},
			ActionNone, "", map[string]Status{"a": StatusRestarting}, t0.Add(9 * time.Minute), 1,
		},
		"OnUpgrade restarts a version change": {
			onUpgrade, []Workload{{StaleWorkload: stale("a", VersionChanged)}},
			ActionRestart, "a", map[string]Status{"a": StatusRestarting}, time.Time{}, 1,
		},
		"OnUpgrade restarts a revision change": {
			onUpgrade, []Workload{{StaleWorkload: stale("a", RevisionChanged)}},
			ActionRestart, "a", map[string]Status{"a": StatusRestarting}, time.Time{}, 1,
		},
		"OnUpgrade ignores proxy settings alone and missing stamps": {
			onUpgrade, []Workload{{StaleWorkload: stale("a", ProxyConfigChanged)}, {StaleWorkload: stale("b", Unstamped)}, {StaleWorkload: stale("c", UnreadableStatus)}},
			ActionNone, "", map[string]Status{"a": StatusNotRestarted, "b": StatusNotRestarted, "c": StatusNotRestarted}, time.Time{}, 0,
		},
		"an opted-out workload is reported, the next restarted": {
			always, []Workload{{StaleWorkload: stale("a", VersionChanged), Annotations: map[string]string{RestartAnnotation: "false"}}, {StaleWorkload: stale("b", VersionChanged)}},
			ActionRestart, "b", map[string]Status{"a": StatusOptedOut, "b": StatusRestarting}, time.Time{}, 1,
		},
		"a Job and a bare pod are reported only": {
			always, []Workload{{StaleWorkload: job}, {StaleWorkload: bare}},
			ActionNone, "", map[string]Status{"migrate": StatusNotRestartable, "debug": StatusNotRestartable}, time.Time{}, 0,
		},
		"a PodDisruptionBudget allowing nothing waits, the next goes on": {
			always, []Workload{{StaleWorkload: stale("a", VersionChanged), DisruptionBlocked: true}, {StaleWorkload: stale("b", VersionChanged)}},
			ActionRestart, "b", map[string]Status{"a": StatusWaitingForPDB, "b": StatusRestarting}, time.Time{}, 1,
		},
		"maxConcurrent reached: wait for the restart in progress, wake at its timeout": {
			always, []Workload{running(stale("a", VersionChanged), t0.Add(-time.Minute)), {StaleWorkload: stale("b", VersionChanged)}},
			ActionNone, "", map[string]Status{"a": StatusRestarting, "b": StatusQueued}, t0.Add(9 * time.Minute), 1,
		},
		"maxConcurrent 2, one in progress: restart another": {
			two, []Workload{running(stale("a", VersionChanged), t0.Add(-time.Minute)), {StaleWorkload: stale("b", VersionChanged)}, {StaleWorkload: stale("c", VersionChanged)}},
			ActionRestart, "b", map[string]Status{"a": StatusRestarting, "b": StatusRestarting, "c": StatusQueued}, t0.Add(9 * time.Minute), 2,
		},
		"a rollout seen complete frees its slot: the next restarts": {
			always, []Workload{{StaleWorkload: stale("b", VersionChanged)}, {StaleWorkload: StaleWorkload{WorkloadRef: WorkloadRef{"Deployment", "shop", "a"}}, Annotations: restarted(t0.Add(-time.Minute), target), GenerationObserved: true, RolloutComplete: true}},
			ActionRestart, "b", map[string]Status{"b": StatusRestarting}, time.Time{}, 1,
		},
		"a new restart waits pauseBetween after a completion seen now": {
			paused, []Workload{{StaleWorkload: stale("b", VersionChanged)}, {StaleWorkload: StaleWorkload{WorkloadRef: WorkloadRef{"Deployment", "shop", "a"}}, Annotations: restarted(t0.Add(-time.Minute), target), GenerationObserved: true, RolloutComplete: true}},
			ActionNone, "", map[string]Status{"b": StatusQueued}, t0.Add(5 * time.Minute), 0,
		},
		"a workload the caller cannot restart is reported, the next restarted": {
			always, []Workload{{StaleWorkload: stale("a", VersionChanged), CannotRestart: "its updateStrategy is OnDelete"}, {StaleWorkload: stale("b", VersionChanged)}},
			ActionRestart, "b", map[string]Status{"a": StatusNotRestartable, "b": StatusRestarting}, time.Time{}, 1,
		},
		"a rollout whose generation is not yet observed is not complete": {
			always, []Workload{{StaleWorkload: stale("a", VersionChanged), Annotations: restarted(t0, target), RolloutComplete: true}},
			ActionNone, "", map[string]Status{"a": StatusRestarting}, t0.Add(10 * time.Minute), 1,
		},
		"pauseBetween counts from the last completion": {
			paused, []Workload{{Annotations: restarted(t0.Add(-time.Hour), target), CompletedAt: t0.Add(-time.Minute), StaleWorkload: StaleWorkload{WorkloadRef: WorkloadRef{"Deployment", "shop", "a"}}}, {StaleWorkload: stale("b", VersionChanged)}},
			ActionNone, "", map[string]Status{"b": StatusQueued}, t0.Add(4 * time.Minute), 0,
		},
		"pauseBetween over: restart": {
			paused, []Workload{{Annotations: restarted(t0.Add(-time.Hour), target), CompletedAt: t0.Add(-5 * time.Minute), StaleWorkload: StaleWorkload{WorkloadRef: WorkloadRef{"Deployment", "shop", "a"}}}, {StaleWorkload: stale("b", VersionChanged)}},
			ActionRestart, "b", map[string]Status{"b": StatusRestarting}, time.Time{}, 1,
		},
		"pauseBetween counts from a timeout": {
			paused, []Workload{running(stale("a", VersionChanged), t0.Add(-12*time.Minute)), {StaleWorkload: stale("b", VersionChanged)}},
			ActionNone, "", map[string]Status{"a": StatusTimedOut, "b": StatusQueued}, t0.Add(3 * time.Minute), 0,
		},
		"a timed-out workload is skipped and the rest go on": {
			always, []Workload{running(stale("a", VersionChanged), t0.Add(-10*time.Minute)), {StaleWorkload: stale("b", VersionChanged)}},
			ActionRestart, "b", map[string]Status{"a": StatusTimedOut, "b": StatusRestarting}, time.Time{}, 1,
		},
		"a timed-out workload that completes at last, still stale, is not restarted again": {
			always, []Workload{{StaleWorkload: stale("a", VersionChanged), Annotations: restarted(t0.Add(-time.Hour), target), GenerationObserved: true, RolloutComplete: true}},
			ActionNone, "", map[string]Status{"a": StatusStaleAfterRestart}, time.Time{}, 0,
		},
		"still stale after its restart for the same target: not restarted again": {
			always, []Workload{{StaleWorkload: stale("a", ProxyConfigChanged), Annotations: restarted(t0.Add(-time.Hour), target), CompletedAt: t0.Add(-50 * time.Minute)}},
			ActionNone, "", map[string]Status{"a": StatusStaleAfterRestart}, time.Time{}, 0,
		},
		"restarted for an older target: restarted for the new one": {
			always, []Workload{{StaleWorkload: stale("a", VersionChanged), Annotations: restarted(t0.Add(-time.Hour), "default/1.31.0/cA"), CompletedAt: t0.Add(-50 * time.Minute)}},
			ActionRestart, "a", map[string]Status{"a": StatusRestarting}, time.Time{}, 1,
		},
		"timed out for an older target: the new target is a new attempt": {
			always, []Workload{{StaleWorkload: stale("a", VersionChanged), Annotations: restarted(t0.Add(-time.Hour), "default/1.31.0/cA")}},
			ActionRestart, "a", map[string]Status{"a": StatusRestarting}, time.Time{}, 1,
		},
		"an unreadable restart state is reported and left alone": {
			always, []Workload{{StaleWorkload: stale("a", VersionChanged), Annotations: map[string]string{RestartedAtAnnotation: "yesterday"}}},
			ActionNone, "", map[string]Status{"a": StatusInvalidState}, time.Time{}, 0,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			d := Decide(Inputs{Policy: tc.policy, Workloads: tc.workloads, Now: t0})
			if d.Action.Kind != tc.wantKind || d.Action.Workload.Name != tc.wantName {
				t.Errorf("action %+v, want kind %d on %q", d.Action, tc.wantKind, tc.wantName)
			}
			if d.Action.Kind == ActionRestart && (d.Action.For != target || !d.Action.At.Equal(t0)) {
				t.Errorf("restart %+v, want for %s at %s", d.Action, target, t0)
			}
			got := map[string]Status{}
			for _, it := range d.Items {
				got[it.Name] = it.Status
				if it.Message == "" {
					t.Errorf("item %s has no message", it.WorkloadRef)
				}
			}
			if !maps.Equal(got, tc.statuses) {
				t.Errorf("statuses %v, want %v", got, tc.statuses)
			}
			if !d.Wake.Equal(tc.wake) {
				t.Errorf("wake %s (%s), want %s", d.Wake, d.WakeReason, tc.wake)
			}
			if d.InProgress != tc.restarts {
				t.Errorf("%d restarts in progress, want %d", d.InProgress, tc.restarts)
			}
		})
	}
}

// TestRestartAnnotationsRoundTrip: what a write sets is what the next Decide reads back,
// to the second, and the pod template gets the same timestamp, which is the restart.
func TestRestartAnnotationsRoundTrip(t *testing.T) {
	at := t0.Add(1500 * time.Millisecond)
	d := Decide(Inputs{Policy: Policy{Restart: RestartAlways}, Workloads: []Workload{{StaleWorkload: stale("a", VersionChanged)}}, Now: at})
	meta, template := d.Action.Annotations()
	st, err := RestartStateOf(meta)
	if err != nil || !st.At.Equal(t0.Add(time.Second)) || st.For != target {
		t.Fatalf("restart state %+v, %v; want at %s for %s", st, err, t0.Add(time.Second), target)
	}
	if template[RestartedAtAnnotation] != meta[RestartedAtAnnotation] || len(template) != 1 {
		t.Errorf("pod template annotations %v, want only %s=%s", template, RestartedAtAnnotation, meta[RestartedAtAnnotation])
	}
}

// world is a cluster of workloads for the restart plan to run against: what persists is
// the annotations on each workload, as a cluster's; the completions the controller saw
// are its memory, lost in a crash.
type world struct {
	t         *testing.T
	now       time.Time
	policy    Policy
	loads     []*simLoad
	completed map[WorkloadRef]time.Time
	dropAt    int // the write lost to a crash just before it; -1 for none
	writes    int
	crashes   int
}

// simLoad is one workload: how it behaves when restarted, and what happened to it.
type simLoad struct {
	StaleWorkload
	annotations map[string]string
	rollout     time.Duration // how long a restart takes to be available; 0: never
	staysStale  bool          // its pods are still stale after a restart
	pdbUntil    time.Time     // a PDB allows no disruption before then
	restarts    []time.Time
}

// done says whether its last restart is complete and available, as its controller reports.
func (l *simLoad) done(now time.Time) bool {
	if len(l.restarts) == 0 {
		return true
	}
	end, ok := l.end()
	return ok && !now.Before(end)
}

// end is when its last restart becomes available, for the invariants.
func (l *simLoad) end() (time.Time, bool) {
	if l.rollout == 0 {
		return time.Time{}, false
	}
	return l.restarts[len(l.restarts)-1].Add(l.rollout), true
}

func (w *world) inputs() Inputs {
	in := Inputs{Policy: w.policy, Now: w.now}
	for _, l := range w.loads {
		wl := Workload{StaleWorkload: l.StaleWorkload, Annotations: maps.Clone(l.annotations), DisruptionBlocked: w.now.Before(l.pdbUntil), CompletedAt: w.completed[l.WorkloadRef]}
		if len(l.restarts) > 0 && l.done(w.now) && !l.staysStale {
			wl.Pods = 0
		}
		// The workload's controller observes a new generation within 10s; until then its
		// status still tells of the last rollout, complete.
		wl.GenerationObserved = len(l.restarts) == 0 || w.now.Sub(l.restarts[len(l.restarts)-1]) >= 10*time.Second
		wl.RolloutComplete = !wl.GenerationObserved || l.done(w.now)
		in.Workloads = append(in.Workloads, wl)
	}
	return in
}

// reconcile runs Decide until it has nothing to write, as one controller reconcile does;
// a crash loses one write and the controller's memory and ends the reconcile, and the
// operator comes back 20s later.
func (w *world) reconcile() Decision {
	for range 20 {
		d := Decide(w.inputs())
		for _, ref := range d.Completed {
			w.completed[ref] = w.now
		}
		if d.Action.Kind == ActionNone {
			return d
		}
		w.writes++
		if w.writes == w.dropAt {
			w.crashes++
			w.completed = map[WorkloadRef]time.Time{}
			w.now = w.now.Add(20 * time.Second)
			return d
		}
		w.apply(d.Action)
	}
	w.t.Fatal("a reconcile made 20 writes")
	return Decision{}
}

func (w *world) apply(a Action) {
	var l *simLoad
	for _, c := range w.loads {
		if c.WorkloadRef == a.Workload {
			l = c
		}
	}
	if l == nil || !l.Restartable() {
		w.t.Fatalf("a write to %s, which is not a restartable workload of the world", a.Workload)
	}
	meta, _ := a.Annotations()
	maps.Copy(l.annotations, meta)
	l.restarts = append(l.restarts, w.now)
	w.checkInvariants(l)
}

// checkInvariants holds every restart to the plan's guarantees, from what really happened.
func (w *world) checkInvariants(started *simLoad) {
	w.t.Helper()
	if len(started.restarts) > 1 {
		w.t.Fatalf("%s restarted twice for the same target, at %v", started.WorkloadRef, started.restarts)
	}
	if w.now.Before(started.pdbUntil) {
		w.t.Fatalf("%s restarted at %s while its PodDisruptionBudget allowed no disruption", started.WorkloadRef, w.now)
	}
	busy := 0
	for _, l := range w.loads {
		if len(l.restarts) == 0 {
			continue
		}
		at := l.restarts[len(l.restarts)-1]
		end, ok := l.end()
		timeout := at.Add(w.policy.Timeout)
		if (!ok || w.now.Before(end)) && w.now.Before(timeout) {
			busy++
		}
		// The last moment this restart ended, by completing or timing out, before now.
		switch {
		case l == started:
		case ok && !end.After(w.now) && !end.After(timeout):
			if w.now.Sub(end) < w.policy.PauseBetween {
				w.t.Fatalf("%s restarted at %s, %s after %s completed", started.WorkloadRef, w.now, w.now.Sub(end), l.WorkloadRef)
			}
		case !timeout.After(w.now):
			if w.now.Sub(timeout) < w.policy.PauseBetween {
				w.t.Fatalf("%s restarted at %s, %s after %s timed out", started.WorkloadRef, w.now, w.now.Sub(timeout), l.WorkloadRef)
			}
		}
	}
	if busy > w.policy.MaxConcurrent {
		w.t.Fatalf("%d restarts in progress at %s, maxConcurrent %d", busy, w.now, w.policy.MaxConcurrent)
	}
}

// run reconciles every 10s (as watches and wake-ups would) for span, and returns the last
// decision.
func (w *world) run(span time.Duration) Decision {
	var d Decision
	for end := w.now.Add(span); w.now.Before(end); w.now = w.now.Add(10 * time.Second) {
		d = w.reconcile()
	}
	return d
}

// newWorld is a mesh just upgraded: Deployments quick and slow, one behind a PDB for 30
// minutes, one that never becomes available (restarted first, so that its timeout is
// followed by more restarts), one opted out, a StatefulSet, a DaemonSet whose
// pods stay stale after a restart, a Job and a bare pod.
func newWorld(t *testing.T, p Policy) *world {
	load := func(kind, ns, name string, reason Reason) *simLoad {
		return &simLoad{StaleWorkload: StaleWorkload{WorkloadRef: WorkloadRef{kind, ns, name}, Pods: 2, Reason: reason, Target: target}, annotations: map[string]string{}}
	}
	quick, slow, stuck, optOut := load("Deployment", "shop", "a", VersionChanged), load("Deployment", "shop", "b", VersionChanged), load("Deployment", "db", "c", RevisionChanged), load("Deployment", "shop", "d", VersionChanged)
	sts, ds, settings := load("StatefulSet", "db", "e", VersionChanged), load("DaemonSet", "ops", "f", VersionChanged), load("Deployment", "shop", "i", ProxyConfigChanged)
	quick.rollout, slow.rollout, sts.rollout, ds.rollout, settings.rollout = 2*time.Minute, 3*time.Minute, 4*time.Minute, time.Minute, time.Minute
	slow.pdbUntil = t0.Add(30 * time.Minute)
	optOut.rollout, optOut.annotations[RestartAnnotation] = time.Minute, "false"
	ds.staysStale = true
	return &world{t: t, now: t0, policy: p, dropAt: -1, completed: map[WorkloadRef]time.Time{}, loads: []*simLoad{
		quick, slow, stuck, optOut, sts, ds, settings, load("Job", "ops", "g", VersionChanged), load("Pod", "ops", "h", VersionChanged),
	}}
}

// outcome is, for each workload, how often it was restarted and where it stands.
func outcome(w *world, d Decision) map[string]string {
	out := map[string]string{}
	for _, l := range w.loads {
		out[l.String()] = fmt.Sprintf("restarts %d", len(l.restarts))
	}
	for _, it := range d.Items {
		out[it.String()] += ", " + string(it.Status)
	}
	return out
}

// TestRestartPlanRunsToTheEnd: the whole plan, without a crash, ends with every
// restartable workload restarted once, the stuck one skipped, the rest reported.
func TestRestartPlanRunsToTheEnd(t *testing.T) {
	w := newWorld(t, Policy{Restart: RestartAlways, MaxConcurrent: 2, PauseBetween: time.Minute, Timeout: 10 * time.Minute})
	got := outcome(w, w.run(2*time.Hour))
	want := map[string]string{
		"Deployment shop/a": "restarts 1",
		"Deployment shop/b": "restarts 1",
		"Deployment db/c":   "restarts 1, " + string(StatusTimedOut),
		"Deployment shop/d": "restarts 0, " + string(StatusOptedOut),
		"StatefulSet db/e":  "restarts 1",
		"DaemonSet ops/f":   "restarts 1, " + string(StatusStaleAfterRestart),
		"Deployment shop/i": "restarts 1",
		"Job ops/g":         "restarts 0, " + string(StatusNotRestartable),
		"Pod ops/h":         "restarts 0, " + string(StatusNotRestartable),
	}
	if !maps.Equal(got, want) {
		t.Errorf("outcome\n%v\nwant\n%v", got, want)
	}
	if w.writes != 6 {
		t.Errorf("%d writes, want 6: one per restarted workload", w.writes)
	}
	onUpgrade := newWorld(t, Policy{Restart: RestartOnUpgrade, MaxConcurrent: 2, Timeout: 10 * time.Minute})
	if got := outcome(onUpgrade, onUpgrade.run(2*time.Hour))["Deployment shop/i"]; got != "restarts 0, "+string(StatusNotRestarted) {
		t.Errorf("under OnUpgrade, a workload stale for its proxy settings only: %s", got)
	}
	never := newWorld(t, Policy{Restart: RestartNever})
	if never.run(time.Hour); never.writes != 0 {
		t.Errorf("under Never, %d writes", never.writes)
	}
}

// TestCrashBetweenEveryTwoWrites loses each write of the whole plan in turn, as if the
// operator died just before it, and resumes from the workloads' annotations alone. Every run
// holds the invariants at every restart (checked as it goes: one restart per workload,
// maxConcurrent, pauseBetween) and ends as the run without a crash.
func TestCrashBetweenEveryTwoWrites(t *testing.T) {
	p := Policy{Restart: RestartAlways, MaxConcurrent: 2, PauseBetween: time.Minute, Timeout: 10 * time.Minute}
	ref := newWorld(t, p)
	want := outcome(ref, ref.run(2*time.Hour))
	for drop := 1; drop <= ref.writes; drop++ {
		t.Run(fmt.Sprintf("crash before write %d of %d", drop, ref.writes), func(t *testing.T) {
			w := newWorld(t, p)
			w.dropAt = drop
			got := outcome(w, w.run(2*time.Hour))
			if w.crashes != 1 {
				t.Fatalf("%d crashes, want 1", w.crashes)
			}
			if !maps.Equal(got, want) {
				t.Errorf("outcome\n%v\nwithout a crash\n%v", got, want)
			}
		})
	}
}

// TestDecideHolds: while the control plane cannot inject current sidecars, no restart
// starts; a restart in progress still counts.
func TestDecideHolds(t *testing.T) {
	in := Inputs{Policy: Policy{Restart: RestartAlways, MaxConcurrent: 2}, Now: t0, Hold: "the control plane is not Ready",
		Workloads: []Workload{{StaleWorkload: stale("a", VersionChanged), Annotations: restarted(t0.Add(-time.Minute), target), GenerationObserved: true}, {StaleWorkload: stale("b", VersionChanged)}}}
	d := Decide(in)
	if d.Action.Kind != ActionNone || d.InProgress != 1 {
		t.Fatalf("held: action %+v, %d in progress", d.Action, d.InProgress)
	}
	if it := d.Items[1]; it.Status != StatusQueued || !strings.Contains(it.Message, in.Hold) {
		t.Errorf("held workload: %+v", it)
	}
	in.Hold = ""
	if d := Decide(in); d.Action.Kind != ActionRestart || d.Action.Workload.Name != "b" {
		t.Errorf("released: action %+v", d.Action)
	}
}

// TestDecideReportsCompletionsOnce: a restart seen complete is reported in Completed once;
// remembered, it is not reported again and pauseBetween counts from then.
func TestDecideReportsCompletionsOnce(t *testing.T) {
	a := Workload{StaleWorkload: StaleWorkload{WorkloadRef: WorkloadRef{"Deployment", "shop", "a"}}, Annotations: restarted(t0.Add(-time.Minute), target), GenerationObserved: true, RolloutComplete: true}
	d := Decide(Inputs{Policy: Policy{Restart: RestartAlways}, Workloads: []Workload{a}, Now: t0})
	if len(d.Completed) != 1 || d.Completed[0] != a.WorkloadRef || d.InProgress != 0 {
		t.Fatalf("completed %v, %d in progress; want %s complete", d.Completed, d.InProgress, a.WorkloadRef)
	}
	a.CompletedAt = t0
	if d := Decide(Inputs{Policy: Policy{Restart: RestartAlways}, Workloads: []Workload{a}, Now: t0.Add(time.Minute)}); len(d.Completed) != 0 {
		t.Errorf("a remembered completion reported again: %v", d.Completed)
	}
	running := a
	running.RolloutComplete, running.CompletedAt = false, time.Time{}
	if d := Decide(Inputs{Policy: Policy{Restart: RestartAlways}, Workloads: []Workload{running}, Now: t0}); len(d.Completed) != 0 || d.InProgress != 1 {
		t.Errorf("a rollout not complete: completed %v, %d in progress", d.Completed, d.InProgress)
	}
}
