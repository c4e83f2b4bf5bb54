package upgrade

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)

const (
	from = "1-31-0"
	to   = "1-31-1"
)

// cluster is the world the machine runs against: namespaces whose pods become Ready some
// time after they move (or never, or crash-loop, on a given revision), a new revision that
// becomes Ready after a while, and revision tags. What persists is the cluster and the
// State the controller last wrote, as in a real one.
type cluster struct {
	t       *testing.T
	cfg     Config
	now     time.Time
	toReady time.Time // when the new revision becomes Ready
	tags    string
	ns      map[string]*simNS
	// persisted is the State as last written; writes counts every write (State, then the
	// action) and dropAt loses that one write to a crash, once.
	persisted      State
	writes, dropAt int
	crashes        int
	// promoteAt and abortAt are when the user sets spec.upgrade.promote and .abort.
	promoteAt, abortAt time.Time
}

type simNS struct {
	rev     string
	movedAt time.Time
	pods    int
	// neverReadyOn and crashesOn make its pods never Ready, or crash-loop, on a revision.
	neverReadyOn, crashesOn string
	moves                   map[string]int // moves to each revision
}

func newCluster(t *testing.T, cfg Config, names ...string) *cluster {
	c := &cluster{t: t, cfg: cfg, now: t0, toReady: t0.Add(30 * time.Second), tags: from, ns: map[string]*simNS{}, dropAt: -1}
	for _, n := range names {
		c.ns[n] = &simNS{rev: from, pods: 3, moves: map[string]int{}}
	}
	c.persisted = Start(from, to, names, t0)
	return c
}

func (c *cluster) ready(rev string) bool { return rev == from || !c.now.Before(c.toReady) }

func (c *cluster) observe() Observed {
	obs := Observed{Now: c.now, ToReady: c.ready(to), FromReady: true, Tags: c.tags, Namespaces: map[string]Namespace{}}
	// A request is seen from the time it is made.
	if !c.now.Before(c.promoteAt) {
		obs.PromoteRequestedAt = c.promoteAt
	}
	if !c.now.Before(c.abortAt) {
		obs.AbortRequestedAt = c.abortAt
	}
	for name, n := range c.ns {
		o := Namespace{Revision: n.rev, Pods: n.pods}
		switch elapsed := c.now.Sub(n.movedAt); {
		case n.crashesOn == n.rev && elapsed >= 5*time.Second:
			o.Failing = []string{"Deployment " + name + "/web: CrashLoopBackOff"}
		case n.neverReadyOn == n.rev, n.crashesOn == n.rev:
		case n.movedAt.IsZero() || elapsed >= 20*time.Second:
			o.Ready = n.pods
		}
		obs.Namespaces[name] = o
	}
	return obs
}

// reconcile is one controller pass: Next, persist the State, make the action; a crash
// loses one write and the rest of the pass, and the operator is back 15s later.
func (c *cluster) reconcile() Step {
	s := Next(c.cfg, c.persisted, c.observe())
	if c.write() {
		return s
	}
	c.persisted = s.State
	if s.Action.Kind == ActionNone || c.write() {
		return s
	}
	switch s.Action.Kind {
	case ActionMove:
		for _, name := range s.Action.Namespaces {
			n := c.ns[name]
			if n.rev == s.Action.Revision {
				c.t.Fatalf("%s moved to %s, where it already is", name, n.rev)
			}
			n.rev, n.movedAt = s.Action.Revision, c.now
			n.moves[n.rev]++
			if n.moves[n.rev] > 1 {
				c.t.Fatalf("%s moved to %s twice: its workloads restarted twice", name, n.rev)
			}
		}
	case ActionMoveTags:
		if !c.ready(s.Action.Revision) {
			c.t.Fatalf("tags moved to %s before it is Ready", s.Action.Revision)
		}
		c.tags = s.Action.Revision
	}
	return s
}

// write counts a write and says whether a crash lost it.
func (c *cluster) write() (lost bool) {
	c.writes++
	if c.writes == c.dropAt {
		c.crashes++
		c.now = c.now.Add(15 * time.Second)
		return true
	}
	return false
}

// run reconciles every 5s (as events and wake-ups would) until the upgrade is over.
func (c *cluster) run() Step {
	var s Step
	for range 2000 {
		s = c.reconcile()
		if c.persisted.Phase.Final() {
			return s
		}
		c.now = c.now.Add(5 * time.Second)
	}
	c.t.Fatalf("not over after 2000 passes: %s (%s)", c.persisted.Phase, s.Message)
	return s
}

// outcome is where every namespace and the tags ended, and the phase.
func (c *cluster) outcome() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s tags=%s", c.persisted.Phase, c.tags)
	for _, name := range slices.Sorted(maps.Keys(c.ns)) {
		fmt.Fprintf(&b, " %s=%s", name, c.ns[name].rev)
	}
	return b.String()
}

var names = []string{"a", "b", "c", "d", "e", "f", "g"}

func canary() Config {
	return Config{BatchSize: 3, ReadinessTimeout: time.Minute, PauseBetweenBatches: 10 * time.Second, AutoPromote: true, RollbackOnFailure: true}
}

func TestUpgradeRunsToCompletion(t *testing.T) {
	c := newCluster(t, canary(), names...)
	s := c.run()
	t.Logf("complete at +%s after %d writes", c.now.Sub(t0), c.writes)
	if got, want := c.outcome(), "Complete tags=1-31-1 a=1-31-1 b=1-31-1 c=1-31-1 d=1-31-1 e=1-31-1 f=1-31-1 g=1-31-1"; got != want {
		t.Fatalf("outcome %s, want %s", got, want)
	}
	if !strings.Contains(s.Message, "upgraded from revision 1-31-0 to 1-31-1") {
		t.Errorf("message %q", s.Message)
	}
}

func TestFailedBatchIsRolledBackAndEarlierBatchesStay(t *testing.T) {
	for name, tc := range map[string]struct {
		mutate  func(*simNS)
		failure string
	}{
		"pods never Ready": {func(n *simNS) { n.neverReadyOn = to }, "namespace e (0 of 3 pods Ready) not Ready on revision 1-31-1 within readinessTimeout 1m0s"},
		"a crash loop":     {func(n *simNS) { n.crashesOn = to }, "namespace e: Deployment e/web: CrashLoopBackOff"},
	} {
		t.Run(name, func(t *testing.T) {
			c := newCluster(t, canary(), names...)
			tc.mutate(c.ns["e"])
			s := c.run()
			if got, want := c.outcome(), "Failed tags=1-31-0 a=1-31-1 b=1-31-1 c=1-31-1 d=1-31-0 e=1-31-0 f=1-31-0 g=1-31-0"; got != want {
				t.Fatalf("outcome %s, want %s", got, want)
			}
			if !strings.Contains(s.Message, "batch 2 of 3 failed: "+tc.failure) {
				t.Errorf("message %q does not name the failure %q", s.Message, tc.failure)
			}
			if c.ns["g"].moves[to] != 0 {
				t.Error("a batch after the failed one was moved")
			}
		})
	}
	t.Run("without rollbackOnFailure the failed batch stays", func(t *testing.T) {
		cfg := canary()
		cfg.RollbackOnFailure = false
		c := newCluster(t, cfg, names...)
		c.ns["e"].neverReadyOn = to
		c.run()
		if got, want := c.outcome(), "Failed tags=1-31-0 a=1-31-1 b=1-31-1 c=1-31-1 d=1-31-1 e=1-31-1 f=1-31-1 g=1-31-0"; got != want {
			t.Fatalf("outcome %s, want %s", got, want)
		}
	})
}

func TestAbortRollsBackEveryMigratedBatch(t *testing.T) {
	// The abort arrives in each phase of the upgrade (which completes at +115s): waiting
	// for the new revision, the first batch moving, the pause after it, the second and the
	// third batch, and once the tags moved. Each run ends Aborted with every namespace and
	// the tags on the old revision.
	for _, at := range []time.Duration{0, 40 * time.Second, 55 * time.Second, 70 * time.Second, 100 * time.Second, 112 * time.Second} {
		t.Run(fmt.Sprintf("abort at +%s", at), func(t *testing.T) {
			c := newCluster(t, canary(), names...)
			c.abortAt = t0.Add(at)
			for c.now.Before(c.abortAt) && !c.persisted.Phase.Final() {
				c.reconcile()
				c.now = c.now.Add(5 * time.Second)
			}
			if c.persisted.Phase.Final() {
				t.Fatalf("the upgrade ended %s before the abort at +%s", c.persisted.Phase, at)
			}
			t.Logf("abort in %s, batch %d, tags at %s", c.persisted.Phase, c.persisted.Batch, c.tags)
			c.run()
			if got, want := c.outcome(), "Aborted tags=1-31-0 a=1-31-0 b=1-31-0 c=1-31-0 d=1-31-0 e=1-31-0 f=1-31-0 g=1-31-0"; got != want {
				t.Fatalf("outcome %s, want %s", got, want)
			}
		})
	}
	t.Run("abort while awaiting promotion", func(t *testing.T) {
		cfg := canary()
		cfg.AutoPromote = false
		c := newCluster(t, cfg, names...)
		for i := 0; c.persisted.Phase != PhaseAwaitingPromotion; i++ {
			if i == 100 {
				t.Fatalf("never awaited promotion: %s", c.persisted.Phase)
			}
			c.reconcile()
			c.now = c.now.Add(5 * time.Second)
		}
		c.abortAt = c.now
		c.run()
		if got, want := c.outcome(), "Aborted tags=1-31-0 a=1-31-0 b=1-31-0 c=1-31-0 d=1-31-0 e=1-31-0 f=1-31-0 g=1-31-0"; got != want {
			t.Fatalf("outcome %s, want %s", got, want)
		}
	})
	t.Run("an abort once complete changes nothing", func(t *testing.T) {
		c := newCluster(t, canary(), names...)
		c.run()
		c.abortAt = c.now
		if s := c.reconcile(); s.State.Phase != PhaseComplete || s.Action.Kind != ActionNone {
			t.Errorf("after completion an abort gave %s, action %+v", s.State.Phase, s.Action)
		}
	})
	t.Run("an abort request older than the upgrade is not for it", func(t *testing.T) {
		c := newCluster(t, canary(), names...)
		c.abortAt = t0.Add(-time.Hour)
		c.run()
		if c.persisted.Phase != PhaseComplete {
			t.Errorf("ended %s", c.persisted.Phase)
		}
	})
}

func TestWaitsForPromotionAfterTheFirstBatch(t *testing.T) {
	cfg := canary()
	cfg.AutoPromote = false
	c := newCluster(t, cfg, names...)
	c.promoteAt = t0.Add(-time.Minute) // a request from before the upgrade does not count
	var s Step
	for range 100 {
		s = c.reconcile()
		c.now = c.now.Add(5 * time.Second)
	}
	if c.persisted.Phase != PhaseAwaitingPromotion || !strings.Contains(s.Message, "set spec.upgrade.promote") {
		t.Fatalf("after the first batch: %s (%s)", c.persisted.Phase, s.Message)
	}
	if got, want := c.outcome(), "AwaitingPromotion tags=1-31-0 a=1-31-1 b=1-31-1 c=1-31-1 d=1-31-0 e=1-31-0 f=1-31-0 g=1-31-0"; got != want {
		t.Fatalf("outcome %s, want %s", got, want)
	}
	c.promoteAt = c.now
	c.run()
	if c.persisted.Phase != PhaseComplete {
		t.Errorf("after the promotion: %s", c.persisted.Phase)
	}
}

func TestStep(t *testing.T) {
	cfg := canary()
	all := map[string]Namespace{}
	for _, n := range names {
		all[n] = Namespace{Revision: from, Pods: 3, Ready: 3}
	}
	started := Start(from, to, names, t0)
	t.Run("waits for the new revision, then for the checks", func(t *testing.T) {
		s := Next(cfg, started, Observed{Now: t0, Namespaces: all, Tags: from})
		if s.State.Phase != PhaseWaiting || s.Action.Kind != ActionNone || !strings.Contains(s.Message, "waiting for revision 1-31-1 to be Ready") {
			t.Errorf("%+v", s)
		}
		s = Next(cfg, started, Observed{Now: t0, ToReady: true, Blocked: "3 proxies run 1.29, two minors behind 1.31.1", Namespaces: all, Tags: from})
		if s.State.Phase != PhaseWaiting || s.Action.Kind != ActionNone || !strings.Contains(s.Message, "3 proxies run 1.29") {
			t.Errorf("%+v", s)
		}
	})
	t.Run("moves the first batch, in name order", func(t *testing.T) {
		s := Next(cfg, Start(from, to, []string{"g", "c", "a", "b"}, t0), Observed{Now: t0, ToReady: true, Namespaces: all, Tags: from})
		if s.Action.Kind != ActionMove || !slices.Equal(s.Action.Namespaces, []string{"a", "b", "c"}) || s.Action.Revision != to {
			t.Errorf("action %+v", s.Action)
		}
		done, total, current := Progress(cfg, s.State, 10)
		if done != 0 || total != 2 || !slices.Equal(current, []string{"a", "b", "c"}) {
			t.Errorf("progress %d/%d %v", done, total, current)
		}
	})
	t.Run("waits for pods Ready with a wake-up at the timeout", func(t *testing.T) {
		st := started
		st.Phase, st.BatchStartedAt = PhaseMigrating, t0
		moved := maps.Clone(all)
		moved["a"] = Namespace{Revision: to, Pods: 3, Ready: 1}
		moved["b"], moved["c"] = Namespace{Revision: to, Pods: 3, Ready: 3}, Namespace{Revision: to}
		s := Next(cfg, st, Observed{Now: t0.Add(10 * time.Second), ToReady: true, Namespaces: moved, Tags: from})
		if s.Action.Kind != ActionNone || !s.Wake.Equal(t0.Add(time.Minute)) || !strings.Contains(s.Message, "namespace a (1 of 3 pods Ready)") {
			t.Errorf("%+v", s)
		}
	})
	t.Run("never moves the tags to a revision that is not Ready", func(t *testing.T) {
		st := started
		st.Phase, st.Batch = PhasePromoting, 3
		if s := Next(cfg, st, Observed{Now: t0, ToReady: false, Namespaces: all, Tags: from}); s.Action.Kind != ActionNone {
			t.Errorf("tags moved to a revision not Ready: %+v", s.Action)
		}
		if s := Next(cfg, st, Observed{Now: t0, ToReady: true, Namespaces: all, Tags: from}); s.Action.Kind != ActionMoveTags || s.Action.Revision != to {
			t.Errorf("action %+v", s.Action)
		}
	})
	t.Run("an abort while promoting moves the tags back first", func(t *testing.T) {
		st := started
		st.Phase, st.Batch = PhasePromoting, 3
		moved := map[string]Namespace{}
		for _, n := range names {
			moved[n] = Namespace{Revision: to, Pods: 3, Ready: 3}
		}
		s := Next(cfg, st, Observed{Now: t0.Add(time.Hour), ToReady: true, FromReady: true, Namespaces: moved, Tags: to, AbortRequestedAt: t0.Add(time.Hour)})
		if s.State.Phase != PhaseRollingBack || s.Action.Kind != ActionMoveTags || s.Action.Revision != from || len(s.State.RollBack) != len(names) {
			t.Errorf("%+v", s)
		}
	})
	t.Run("a deleted namespace counts as done", func(t *testing.T) {
		st := started
		st.Phase, st.BatchStartedAt = PhaseMigrating, t0
		moved := maps.Clone(all)
		moved["a"], moved["b"] = Namespace{Revision: to, Pods: 3, Ready: 3}, Namespace{Revision: to, Pods: 3, Ready: 3}
		delete(moved, "c")
		s := Next(cfg, st, Observed{Now: t0.Add(time.Second), ToReady: true, Namespaces: moved, Tags: from})
		if s.State.Batch != 1 || s.Action.Kind != ActionNone || !s.Wake.Equal(t0.Add(11*time.Second)) {
			t.Errorf("%+v", s)
		}
	})
}

// TestCrashBetweenEveryTwoSteps loses each write of a whole upgrade in turn (a State or an
// action), as if the operator died just before it. Each run holds the invariants the
// cluster checks as it goes (no namespace moved twice to one revision, so no workload
// restarted twice; no tag moved to a revision not Ready) and ends as the run without a
// crash: complete, or failed with the same namespaces rolled back.
func TestCrashBetweenEveryTwoSteps(t *testing.T) {
	for name, mutate := range map[string]func(*cluster){
		"complete":          func(*cluster) {},
		"failed batch":      func(c *cluster) { c.ns["e"].crashesOn = to },
		"aborted mid-batch": func(c *cluster) { c.abortAt = t0.Add(110 * time.Second) },
	} {
		ref := newCluster(t, canary(), names...)
		mutate(ref)
		ref.run()
		want := ref.outcome()
		for drop := 1; drop <= ref.writes; drop++ {
			t.Run(fmt.Sprintf("%s: crash before write %d of %d", name, drop, ref.writes), func(t *testing.T) {
				c := newCluster(t, canary(), names...)
				mutate(c)
				c.dropAt = drop
				c.run()
				if c.crashes != 1 {
					t.Fatalf("%d crashes, want 1", c.crashes)
				}
				if got := c.outcome(); got != want {
					t.Errorf("outcome %s, without a crash %s", got, want)
				}
			})
		}
	}
}

// The labels follow the persisted State alone: which namespaces a State puts on which
// revision, in every phase.
func TestAssigned(t *testing.T) {
	cfg := canary() // batches of 3: a b c | d e f | g
	st := Start(from, to, names, t0)
	check := func(t *testing.T, st State, want map[string]string) {
		t.Helper()
		for _, n := range names {
			got, ok := Assigned(cfg, st, n)
			if w, assigned := want[n]; ok != assigned || got != w {
				t.Errorf("%s: %q %t, want %q %t", n, got, ok, w, assigned)
			}
		}
		if _, ok := Assigned(cfg, st, "not-the-upgrades"); ok {
			t.Error("a namespace the upgrade does not move was assigned")
		}
	}
	t.Run("waiting: none", func(t *testing.T) { check(t, st, nil) })
	st.Phase = PhaseMigrating
	t.Run("the first batch not begun: none", func(t *testing.T) { check(t, st, nil) })
	st.BatchStartedAt = t0
	t.Run("the first batch moving", func(t *testing.T) { check(t, st, map[string]string{"a": to, "b": to, "c": to}) })
	st.Batch, st.BatchStartedAt, st.Phase = 1, time.Time{}, PhaseAwaitingPromotion
	t.Run("awaiting promotion", func(t *testing.T) { check(t, st, map[string]string{"a": to, "b": to, "c": to}) })
	st.Phase, st.BatchStartedAt = PhaseRollingBack, t0
	st.RollBack = []string{"d", "e", "f"}
	t.Run("the second batch rolling back", func(t *testing.T) {
		check(t, st, map[string]string{"a": to, "b": to, "c": to, "d": from, "e": from, "f": from})
	})
	st.Phase = PhaseFailed
	t.Run("failed", func(t *testing.T) {
		check(t, st, map[string]string{"a": to, "b": to, "c": to, "d": from, "e": from, "f": from})
	})
	all := func(rev string) map[string]string {
		m := map[string]string{}
		for _, n := range names {
			m[n] = rev
		}
		return m
	}
	st.Phase, st.RollBack = PhasePromoting, nil
	t.Run("promoting: all on the new", func(t *testing.T) { check(t, st, all(to)) })
	st.Phase = PhaseComplete
	t.Run("complete: all on the new", func(t *testing.T) { check(t, st, all(to)) })
	st.Phase, st.Aborting = PhaseRollingBack, true
	t.Run("aborting: all on the old", func(t *testing.T) { check(t, st, all(from)) })
	st.Phase = PhaseAborted
	t.Run("aborted: all on the old", func(t *testing.T) { check(t, st, all(from)) })
}
