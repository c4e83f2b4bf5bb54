package mtls

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)

// mesh is the world the machine runs against: Capstan's policies (what persists), the
// traffic that makes gates red, and the operator's memory of gate evaluations, lost in a
// crash. It checks at every write that no namespace goes STRICT while a plaintext client
// sends to it, or on gates this process has not evaluated, and that Capstan never holds
// two policies for one namespace.
type mesh struct {
	t        *testing.T
	cfg      Config
	now      time.Time
	meshMode Mode
	policies map[string]NamespaceState // Capstan's namespace policies: one per namespace
	modes    map[string]Mode
	// plaintext are the namespaces a plaintext client sends to (a red gate), from when.
	plaintext map[string]time.Time
	// evaluated are the namespaces whose gates this process evaluated since it started.
	evaluated      map[string]bool
	writes, dropAt int
	crashes        int
	flips          map[string]int
}

func newMesh(t *testing.T, cfg Config, names ...string) *mesh {
	m := &mesh{t: t, cfg: cfg, now: t0, policies: map[string]NamespaceState{}, modes: map[string]Mode{},
		plaintext: map[string]time.Time{}, evaluated: map[string]bool{}, dropAt: -1, flips: map[string]int{}}
	for _, n := range names {
		m.policies[n] = NamespaceState{Phase: PhaseInherit}
	}
	return m
}

func (m *mesh) red(name string) bool {
	at, ok := m.plaintext[name]
	return ok && !m.now.Before(at)
}

func (m *mesh) observe() Observed {
	obs := Observed{Now: m.now, MeshMode: m.meshMode, Namespaces: map[string]Namespace{}}
	for name, st := range m.policies {
		ns := Namespace{State: st}
		if m.evaluated[name] {
			g := Gate{Name: "PlaintextTraffic", Green: !m.red(name), Evidence: "0 plaintext requests/s"}
			if !g.Green {
				g.Evidence = "3 plaintext requests/s from legacy/client"
			}
			ns.Gates = []Gate{g, {Name: "UnmeshedEndpoints", Green: true}}
		}
		obs.Namespaces[name] = ns
	}
	// Gates are evaluated after this observation, as a controller evaluates them in the
	// pass: a restarted process sees none on its first pass.
	for name := range m.policies {
		m.evaluated[name] = true
	}
	return obs
}

// reconcile is one pass: plan, then the writes in order; a crash loses one write, the
// rest of the pass and the gate evaluations, and the operator is back 15s later.
func (m *mesh) reconcile() Plan {
	p := Next(m.cfg, m.observe())
	for _, w := range p.Writes {
		m.writes++
		if m.writes == m.dropAt {
			m.crashes++
			m.evaluated = map[string]bool{}
			m.now = m.now.Add(15 * time.Second)
			return p
		}
		if w.Namespace == "" {
			m.meshMode = w.Mode
			continue
		}
		if w.Mode == ModeStrict && m.modes[w.Namespace] != ModeStrict {
			if m.red(w.Namespace) {
				m.t.Fatalf("%s made STRICT while a plaintext client sends to it", w.Namespace)
			}
			if !m.evaluated[w.Namespace] {
				m.t.Fatalf("%s made STRICT on gates this process never evaluated", w.Namespace)
			}
			m.flips[w.Namespace]++
		}
		m.modes[w.Namespace] = w.Mode
		m.policies[w.Namespace] = w.State
	}
	return p
}

func (m *mesh) run(span time.Duration) Plan {
	var p Plan
	for end := m.now.Add(span); m.now.Before(end); m.now = m.now.Add(5 * time.Second) {
		p = m.reconcile()
	}
	return p
}

func (m *mesh) outcome() string {
	var b strings.Builder
	fmt.Fprintf(&b, "mesh=%s", m.meshMode)
	for _, n := range slices.Sorted(maps.Keys(m.policies)) {
		fmt.Fprintf(&b, " %s=%s/%s", n, m.policies[n].Phase, m.modes[n])
	}
	return b.String()
}

var names = []string{"a", "b", "c", "d", "e"}

func progressive() Config {
	return Config{Strict: true, BatchSize: 2, Soak: time.Minute}
}

func TestEveryNamespaceVerifiedThenMeshWideStrict(t *testing.T) {
	m := newMesh(t, progressive(), names...)
	p := m.run(10 * time.Minute)
	if !p.Done {
		t.Fatalf("not done: %s", m.outcome())
	}
	if got, want := m.outcome(), "mesh=STRICT a=Inherit/ b=Inherit/ c=Inherit/ d=Inherit/ e=Inherit/"; got != want {
		t.Errorf("outcome %s, want %s", got, want)
	}
	for _, n := range names {
		if m.flips[n] != 1 {
			t.Errorf("%s flipped %d times, want once", n, m.flips[n])
		}
	}
}

func TestBatchSizeBoundsNamespacesSoaking(t *testing.T) {
	m := newMesh(t, progressive(), names...)
	for range 60 {
		m.reconcile()
		soaking := 0
		for _, st := range m.policies {
			if st.Phase == PhaseStrict {
				soaking++
			}
		}
		if soaking > 2 {
			t.Fatalf("%d namespaces Strict and unverified at once, batchSize 2", soaking)
		}
		m.now = m.now.Add(5 * time.Second)
	}
	immediate := newMesh(t, Config{Strict: true, Immediate: true, Soak: time.Minute}, names...)
	immediate.reconcile()
	immediate.now = immediate.now.Add(5 * time.Second)
	immediate.reconcile()
	for _, n := range names {
		if immediate.policies[n].Phase != PhaseStrict {
			t.Errorf("Immediate: %s is %s on the second pass", n, immediate.policies[n].Phase)
		}
	}
}

func TestPlaintextClientHoldsItsNamespacePermissive(t *testing.T) {
	m := newMesh(t, progressive(), names...)
	m.plaintext["c"] = t0
	p := m.run(10 * time.Minute)
	if p.Done {
		t.Fatal("done with a plaintext client")
	}
	if got, want := m.outcome(), "mesh= a=Verified/STRICT b=Verified/STRICT c=Permissive/PERMISSIVE d=Verified/STRICT e=Verified/STRICT"; got != want {
		t.Errorf("outcome %s, want %s", got, want)
	}
	if g := p.Blocked["c"]; len(g) != 1 || g[0].Name != "PlaintextTraffic" || !strings.Contains(g[0].Evidence, "legacy/client") {
		t.Errorf("blocked %v, want c held by PlaintextTraffic naming the client", p.Blocked)
	}
	// The client goes: c flips, and the mesh finishes.
	delete(m.plaintext, "c")
	if p := m.run(10 * time.Minute); !p.Done {
		t.Errorf("not done once the client left: %s", m.outcome())
	}
}

func TestRedGateAfterTheFlipRevertsWithTheReason(t *testing.T) {
	for name, at := range map[string]time.Duration{"while soaking": 20 * time.Second, "once verified": 3 * time.Minute} {
		t.Run(name, func(t *testing.T) {
			m := newMesh(t, progressive(), names...)
			m.plaintext["a"] = t0.Add(at)
			m.run(at + 10*time.Second)
			st := m.policies["a"]
			if st.Phase != PhasePermissive || m.modes["a"] != ModePermissive || !strings.Contains(st.Reason, "PlaintextTraffic: 3 plaintext requests/s from legacy/client") {
				t.Errorf("a: %+v, mode %s; want reverted to PERMISSIVE with the reason", st, m.modes["a"])
			}
		})
	}
	t.Run("errors rising during the soak", func(t *testing.T) {
		obs := Observed{Now: t0.Add(30 * time.Second), Namespaces: map[string]Namespace{
			"a": {State: NamespaceState{Phase: PhaseStrict, Since: t0}, Gates: []Gate{{Name: "PlaintextTraffic", Green: true}}, ErrorsRose: true},
		}}
		p := Next(progressive(), obs)
		if len(p.Writes) != 1 || p.Writes[0].Mode != ModePermissive || !strings.Contains(p.Writes[0].State.Reason, "errors rose") {
			t.Errorf("writes %+v", p.Writes)
		}
	})
}

func TestNoFlipOnGatesNotEvaluatedSinceRestart(t *testing.T) {
	obs := Observed{Now: t0, Namespaces: map[string]Namespace{
		"a": {State: NamespaceState{Phase: PhasePermissive, Since: t0.Add(-time.Hour)}},
		"b": {State: NamespaceState{Phase: PhaseStrict, Since: t0.Add(-time.Hour)}},
	}}
	p := Next(progressive(), obs)
	if len(p.Writes) != 0 {
		t.Errorf("writes %+v on gates never evaluated", p.Writes)
	}
	if g := p.Blocked["a"]; len(g) != 1 || g[0].Name != "NotEvaluated" {
		t.Errorf("blocked %v", p.Blocked)
	}
}

func TestPermissiveWalksBack(t *testing.T) {
	m := newMesh(t, progressive(), names...)
	if p := m.run(10 * time.Minute); !p.Done {
		t.Fatalf("not strict: %s", m.outcome())
	}
	m.cfg.Strict = false
	// The first pass keeps every namespace strict through its own policy before the mesh
	// policy goes.
	p := m.reconcile()
	if last := p.Writes[len(p.Writes)-1]; last.Namespace != "" || last.Mode != ModeNone || len(p.Writes) != len(names)+1 {
		t.Fatalf("writes %+v", p.Writes)
	}
	m.now = m.now.Add(5 * time.Second)
	if p := m.run(time.Minute); !p.Done {
		t.Fatalf("not walked back: %s", m.outcome())
	}
	if got, want := m.outcome(), "mesh= a=Inherit/ b=Inherit/ c=Inherit/ d=Inherit/ e=Inherit/"; got != want {
		t.Errorf("outcome %s, want %s", got, want)
	}
}

// TestCrashBetweenEveryTwoWrites loses each write of a whole migration in turn, with the
// process's gate evaluations: every run holds the invariants (no STRICT on unevaluated or
// red gates, one policy per namespace) and ends as the run without a crash.
func TestCrashBetweenEveryTwoWrites(t *testing.T) {
	for name, mutate := range map[string]func(*mesh){
		"clean":                  func(*mesh) {},
		"a client appears later": func(m *mesh) { m.plaintext["b"] = t0.Add(2 * time.Minute) },
	} {
		ref := newMesh(t, progressive(), names...)
		mutate(ref)
		ref.run(15 * time.Minute)
		want := ref.outcome()
		for drop := 1; drop <= ref.writes; drop++ {
			t.Run(fmt.Sprintf("%s: crash before write %d of %d", name, drop, ref.writes), func(t *testing.T) {
				m := newMesh(t, progressive(), names...)
				mutate(m)
				m.dropAt = drop
				m.run(15 * time.Minute)
				if m.crashes != 1 {
					t.Fatalf("%d crashes", m.crashes)
				}
				if got := m.outcome(); got != want {
					t.Errorf("outcome %s, without a crash %s", got, want)
				}
			})
		}
	}
}
