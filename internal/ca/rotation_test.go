package ca

import (
	"crypto/x509"
	"fmt"
	"slices"
	"testing"
	"time"
)

// The tests here drive Decide, the CA state machine, against a simulated cluster on a fake
// clock. What is simulated, and how:
//   - the state Secret and istiod's cacerts Secret are maps the simulation writes exactly
//     as the controller would (the state goes through Encode/DecodeState every time);
//   - istiod loads cacerts `lag` after it is written, as a kubelet-synced volume would reach
//     it, signs from what it loaded, and publishes the roots it loaded (the
//     istio-ca-root-cert ConfigMaps);
//   - a sidecar may hold any bundle istiod published during the last Propagation.
// Certificates and keys are real.

const (
	simTTL         = 10 * time.Minute // workload certificate TTL
	simPropagation = 2 * time.Minute
	simTick        = 30 * time.Second
	simLag         = 45 * time.Second // < simPropagation
)

// countingGen is the real generator, counting the roots it makes.
type countingGen struct{ roots int }

func (g *countingGen) NewRoot(o RootOptions) (*KeyPair, error) {
	g.roots++
	o.Key = nil
	return NewRoot(o)
}

func (g *countingGen) NewIntermediate(p *KeyPair, o IntermediateOptions) (*KeyPair, error) {
	return NewIntermediate(p, o)
}

// loaded is what istiod had loaded from cacerts from a moment on.
type loaded struct {
	at    time.Time
	data  map[string][]byte
	roots []string
}

// issued is a workload certificate istiod signed: the root it chains to, and its expiry.
type issued struct {
	root     string
	notAfter time.Time
}

type world struct {
	t      *testing.T
	now    time.Time
	policy Policy
	gen    *countingGen
	source *Material

	stateData map[string][]byte
	stateAnn  string
	cacerts   map[string][]byte
	writes    []time.Time // when each cacerts version was written
	versions  []map[string][]byte
	history   []loaded // what istiod loaded, oldest first
	certs     []issued
	istiodOK  bool

	// dropAt is the index of the write to lose as if the operator crashed just before it;
	// -1 drops none.
	dropAt, writesSeen int
	phases             []Phase
	// beforeDecide, when set, runs before every call of Decide, so that a test can act in a
	// phase that begins and ends within one reconcile.
	beforeDecide func(*world)
	nextRoots    map[string]bool // every next root ever persisted
	events       []Event         // the events of the writes made, oldest first
}

func newWorld(t *testing.T, p Policy) *world {
	t.Helper()
	if p.Timing == (Timing{}) {
		p.Timing = Timing{WorkloadCertTTL: simTTL, Propagation: simPropagation}
	}
	if p.Source == "" {
		p.Source = SourceSelfSigned
	}
	if p.RootTTL == 0 {
		p.RootTTL = 1000 * time.Hour
		p.IntermediateTTL = 500 * time.Hour
		p.RootRenewBefore = 100 * time.Hour
		p.IntermediateRenewBefore = 50 * time.Hour
	}
	return &world{t: t, now: now, policy: p, gen: &countingGen{}, istiodOK: true, dropAt: -1, nextRoots: map[string]bool{}}
}

func (w *world) state() *State {
	if w.stateData == nil {
		return nil
	}
	st, err := DecodeState(w.stateData, w.stateAnn)
	if err != nil {
		w.t.Fatalf("the persisted state does not decode: %v", err)
	}
	return st
}

// istiod is what istiod has loaded at w.now: the newest cacerts written at least simLag ago.
func (w *world) istiod() *loaded {
	for i := len(w.history) - 1; i >= 0; i-- {
		if !w.history[i].at.After(w.now) {
			return &w.history[i]
		}
	}
	return nil
}

// reconcile runs Decide until it has nothing to write, as one controller reconcile does.
func (w *world) reconcile() Action {
	w.t.Helper()
	for range 20 {
		if w.beforeDecide != nil {
			w.beforeDecide(w)
		}
		var published bool
		st := w.state()
		if l := w.istiod(); l != nil && st != nil {
			published = slices.Equal(l.roots, st.TrustedRoots())
		}
		a, err := Decide(Inputs{Policy: w.policy, State: st, Source: w.source, CACerts: w.cacerts,
			CACertsName: "istio-system/cacerts", StateName: "istio-system/capstan-ca",
			Published: published, IstiodReady: w.istiodOK, Now: w.now}, w.gen)
		if err != nil {
			w.t.Fatalf("Decide at %s: %v", w.now, err)
		}
		if a.Kind == ActionNone {
			return a
		}
		w.writesSeen++
		if w.writesSeen-1 == w.dropAt {
			// The operator dies before this write reaches the apiserver; a new process
			// starts from what is persisted. Decide keeps nothing between calls, so the
			// restart is the next call.
			continue
		}
		switch a.Kind {
		case ActionWriteState:
			data, ann, err := a.State.Encode()
			if err != nil {
				w.t.Fatalf("Encode: %v", err)
			}
			w.stateData, w.stateAnn = data, ann
			if a.State.Next != nil {
				w.nextRoots[a.State.Next.RootFingerprints()[0]] = true
			}
			if n := len(w.phases); n == 0 || w.phases[n-1] != a.State.Rotation.Phase {
				w.phases = append(w.phases, a.State.Rotation.Phase)
			}
		case ActionWriteCACerts:
			w.cacerts = a.CACerts
			m, err := ParseSecretData(a.CACerts)
			if err != nil {
				w.t.Fatalf("cacerts written by Decide does not parse: %v", err)
			}
			if err := Validate(m, ValidateOptions{Now: w.now, WorkloadCertTTL: simTTL}); err != nil {
				w.t.Fatalf("cacerts written by Decide is not valid for istiod: %v", err)
			}
			w.history = append(w.history, loaded{at: w.now.Add(simLag), data: a.CACerts, roots: Fingerprints(m.Roots)})
		}
		if a.Event != nil {
			w.events = append(w.events, *a.Event)
		}
	}
	w.t.Fatalf("Decide did not settle at %s", w.now)
	return Action{}
}

// issue has istiod sign a workload certificate from what it loaded, and checks the
// invariant: every certificate still valid chains to a root in every bundle a sidecar may
// hold now.
func (w *world) issueAndCheck() {
	w.t.Helper()
	l := w.istiod()
	if l == nil {
		return
	}
	m, _ := ParseSecretData(l.data)
	chain := m.Chain
	w.certs = append(w.certs, issued{root: Fingerprint(chain[len(chain)-1]), notAfter: w.now.Add(simTTL)})
	var bundles [][]string
	for _, h := range w.history {
		if !h.at.After(w.now) && !h.at.Before(w.now.Add(-simPropagation)) {
			bundles = append(bundles, h.roots)
		}
	}
	bundles = append(bundles, l.roots)
	for _, c := range w.certs {
		if !w.now.Before(c.notAfter) {
			continue
		}
		for _, b := range bundles {
			if !slices.Contains(b, c.root) {
				w.t.Fatalf("at %s (phases so far %v): a workload certificate valid until %s chains to root %.12s, which a bundle sidecars may hold (%v) does not contain",
					w.now.Format(time.TimeOnly), w.phases, c.notAfter.Format(time.TimeOnly), c.root, short(b))
			}
		}
	}
}

func short(fps []string) []string {
	out := make([]string, len(fps))
	for i, f := range fps {
		out[i] = f[:12]
	}
	return out
}

// run advances the clock tick by tick until the state rests (or a limit), reconciling and
// checking the invariant at every tick. hook runs before each tick's reconcile.
func (w *world) run(limit time.Duration, hook func(*world)) {
	w.t.Helper()
	end := w.now.Add(limit)
	for ; w.now.Before(end); w.now = w.now.Add(simTick) {
		if hook != nil {
			hook(w)
		}
		w.reconcile()
		w.issueAndCheck()
		if st := w.state(); st != nil && !st.Rotation.Phase.InProgress() && st.Rotation.Phase != PhaseIdle && w.istiod() != nil && sameData(w.istiod().data, w.cacerts) {
			return
		}
	}
}

// installed returns a world whose CA was issued and loaded by istiod, and its root.
func installed(t *testing.T, p Policy) (*world, string) {
	t.Helper()
	w := newWorld(t, p)
	w.reconcile()
	w.now = w.now.Add(simLag)
	w.reconcile()
	w.issueAndCheck()
	st := w.state()
	if st == nil || st.Rotation.Phase != PhaseIdle || st.Next != nil {
		t.Fatalf("after install the state is %+v, want Idle with no next CA", st)
	}
	return w, st.Active.RootFingerprints()[0]
}

func TestRotationRunsEveryPhaseInOrder(t *testing.T) {
	w, oldRoot := installed(t, Policy{})
	w.policy.RequestedAt = w.now
	start := w.now
	w.run(3*time.Hour, nil)

	want := []Phase{PhaseIdle, PhaseTrusting, PhaseSwitching, PhaseSoaking, PhaseFinalizing, PhaseDone}
	if !slices.Equal(w.phases, want) {
		t.Fatalf("phases %v, want %v", w.phases, want)
	}
	st := w.state()
	if st.Next != nil || st.Active.RootFingerprints()[0] == oldRoot {
		t.Fatalf("after the rotation the active root is still the old one or a next CA remains")
	}
	if got := st.TrustedRoots(); len(got) != 1 || got[0] == oldRoot {
		t.Fatalf("after the rotation cacerts trusts %v, want only the new root", short(got))
	}
	if took := w.now.Sub(start); took < simTTL+simPropagation {
		t.Fatalf("the rotation took %s, less than the workload TTL plus propagation: old certificates could still be live", took)
	}
	if w.gen.roots != 2 {
		t.Fatalf("generated %d roots, want 2 (install and rotation)", w.gen.roots)
	}
}

func TestPhasesWaitForTheirSignals(t *testing.T) {
	cases := map[string]struct {
		break_  func(*world)
		stuckIn Phase
	}{
		"istiod not ready holds Trusting": {func(w *world) { w.istiodOK = false }, PhaseTrusting},
		"bundle not published holds Trusting": {func(w *world) {
			w.history = w.history[:1] // istiod never loads the new cacerts
		}, PhaseTrusting},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			w, _ := installed(t, Policy{})
			w.policy.RequestedAt = w.now
			w.run(3*time.Hour, func(w *world) {
				if st := w.state(); st != nil && st.Rotation.Phase == tc.stuckIn {
					tc.break_(w)
				}
			})
			if got := w.state().Rotation.Phase; got != tc.stuckIn {
				t.Fatalf("phase %s, want it held in %s", got, tc.stuckIn)
			}
		})
	}
}

func TestAbortInEachPhase(t *testing.T) {
	cases := map[string]struct {
		abortIn Phase
		want    []Phase
	}{
		"Trusting goes straight back": {PhaseTrusting, []Phase{PhaseIdle, PhaseTrusting, PhaseRolledBack}},
		"Switching rolls back":        {PhaseSwitching, []Phase{PhaseIdle, PhaseTrusting, PhaseSwitching, PhaseRollingBack, PhaseRolledBack}},
		"Soaking rolls back":          {PhaseSoaking, []Phase{PhaseIdle, PhaseTrusting, PhaseSwitching, PhaseSoaking, PhaseRollingBack, PhaseRolledBack}},
		"Finalizing cannot abort":     {PhaseFinalizing, []Phase{PhaseIdle, PhaseTrusting, PhaseSwitching, PhaseSoaking, PhaseFinalizing, PhaseDone}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			w, oldRoot := installed(t, Policy{})
			w.policy.RequestedAt = w.now
			w.beforeDecide = abortHook(tc.abortIn)
			w.run(4*time.Hour, nil)
			if !slices.Equal(w.phases, tc.want) {
				t.Fatalf("phases %v, want %v", w.phases, tc.want)
			}
			st := w.state()
			rolledBack := tc.abortIn != PhaseFinalizing
			if got := st.Active.RootFingerprints()[0] == oldRoot; got != rolledBack {
				t.Fatalf("old root active after the run: %t, want %t", got, rolledBack)
			}
			// A rolled-back rotation must not restart while the abort stays in the spec.
			if rolledBack {
				w.run(2*time.Hour, nil)
				if p := w.state().Rotation.Phase; p != PhaseRolledBack {
					t.Fatalf("after the rollback the rotation restarted (phase %s)", p)
				}
			}
		})
	}
}

// TestCrashBetweenEveryTwoWrites loses each write of a whole rotation in turn, as if the
// operator died just before it, and restarts from what the cluster holds. Every run must end
// with the same outcome, hold the invariant at every tick, and persist one new root only.
func TestCrashBetweenEveryTwoWrites(t *testing.T) {
	for _, abortIn := range []Phase{"", PhaseSwitching, PhaseSoaking} {
		ref, _ := installed(t, Policy{})
		ref.writesSeen = 0
		ref.policy.RequestedAt = ref.now
		ref.beforeDecide = abortHook(abortIn)
		ref.run(4*time.Hour, nil)
		total := ref.writesSeen
		if total < 6 {
			t.Fatalf("a rotation took only %d writes", total)
		}
		for drop := 1; drop < total; drop++ {
			t.Run(fmt.Sprintf("abort in %q, crash before write %d of %d", abortIn, drop, total), func(t *testing.T) {
				w, oldRoot := installed(t, Policy{})
				w.writesSeen = 0
				w.dropAt = drop
				w.policy.RequestedAt = w.now
				w.beforeDecide = abortHook(abortIn)
				w.run(4*time.Hour, nil)
				st := w.state()
				if st.Rotation.Phase != ref.state().Rotation.Phase {
					t.Fatalf("ended in %s, without a crash %s", st.Rotation.Phase, ref.state().Rotation.Phase)
				}
				if len(w.nextRoots) != 1 {
					t.Fatalf("%d different new roots were persisted, want 1", len(w.nextRoots))
				}
				if abortIn == "" && st.Active.RootFingerprints()[0] == oldRoot {
					t.Fatal("the rotation did not complete")
				}
			})
		}
	}
}

func abortHook(in Phase) func(*world) {
	return func(w *world) {
		if st := w.state(); in != "" && st != nil && st.Rotation.Phase == in && w.policy.AbortRequestedAt.IsZero() {
			w.policy.AbortRequestedAt = w.now
		}
	}
}

func TestTriggers(t *testing.T) {
	cases := map[string]struct {
		install time.Time // RequestedAt already in the spec at install
		change  func(*world)
		after   time.Duration
		want    string // rotation reason, "" for none
	}{
		"request":                     {change: func(w *world) { w.policy.RequestedAt = w.now }, want: RotationRequested},
		"request older than the CA":   {install: now.Add(-time.Hour)},
		"root nearing expiry":         {after: 901 * time.Hour, want: RotationRootExpiring},
		"root nearing expiry, manual": {change: func(w *world) { w.policy.Automatic = false }, after: 901 * time.Hour},
		"key algorithm changed":       {change: func(w *world) { w.policy.KeyAlgorithm = ECDSAP384 }, want: RotationKeyAlgorithm},
		"nothing":                     {after: 10 * time.Hour},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			w, _ := installed(t, Policy{Automatic: true, KeyAlgorithm: ECDSAP256, RequestedAt: tc.install,
				RootTTL: 1000 * time.Hour, IntermediateTTL: 1000 * time.Hour, RootRenewBefore: 100 * time.Hour, IntermediateRenewBefore: 50 * time.Hour})
			if tc.change != nil {
				tc.change(w)
			}
			w.now = w.now.Add(tc.after)
			w.reconcile()
			st := w.state()
			if got := st.Rotation.Reason; got != tc.want {
				t.Fatalf("rotation reason %q (phase %s), want %q", got, st.Rotation.Phase, tc.want)
			}
		})
	}
}

func TestIntermediateRenewalKeepsTheRoot(t *testing.T) {
	w, root := installed(t, Policy{Automatic: true})
	before := w.state().Active.Material.Intermediate.Cert
	a := w.reconcile()
	if want := before.NotAfter.Add(-50 * time.Hour); !a.Wake.Equal(want) {
		t.Fatalf("next wake %s (%s), want the intermediate's renewal at %s", a.Wake, a.WakeReason, want)
	}
	w.now = a.Wake
	w.reconcile()
	st := w.state()
	after := st.Active.Material.Intermediate.Cert
	if after.Equal(before) || !after.NotAfter.After(before.NotAfter) {
		t.Fatal("the intermediate was not renewed")
	}
	if st.Rotation.Phase != PhaseIdle || st.Active.RootFingerprints()[0] != root {
		t.Fatalf("renewing the intermediate changed the root or started a rotation (phase %s)", st.Rotation.Phase)
	}
	if m, _ := ParseSecretData(w.cacerts); !m.Intermediate.Cert.Equal(after) {
		t.Fatal("cacerts does not carry the renewed intermediate")
	}
	// Near the root's expiry, a new intermediate could not outlive the old one: no loop of
	// renewals, only the root rotation (here manual, so nothing).
	w.policy.Automatic = true
	w.policy.RootRenewBefore = 0
	w.now = st.Active.Material.Roots[0].NotAfter.Add(-time.Hour)
	w.reconcile()
	renewed := w.state().Active.Material.Intermediate.Cert
	w.reconcile()
	if !w.state().Active.Material.Intermediate.Cert.Equal(renewed) {
		t.Fatal("the intermediate is renewed again and again near the root's expiry")
	}
}

func TestProvidedSource(t *testing.T) {
	mat := func(t *testing.T) *Material {
		root := mustRoot(t, RootOptions{Now: now, TTL: 1000 * time.Hour})
		inter := mustIntermediate(t, root, IntermediateOptions{Now: now, TTL: 500 * time.Hour})
		return &Material{Intermediate: inter, Chain: []*x509.Certificate{inter.Cert, root.Cert}, Roots: []*x509.Certificate{root.Cert}}
	}
	first := mat(t)
	w := newWorld(t, Policy{Source: "Provided:istio-system/my-ca"})
	w.source = first
	w.reconcile()
	w.now = w.now.Add(simLag)
	w.reconcile()
	if got := w.state().Active.RootFingerprints(); !slices.Equal(got, Fingerprints(first.Roots)) {
		t.Fatal("the provided root is not the active one")
	}

	// A request cannot rotate a provided root: only a new root in the Secret can.
	w.policy.RequestedAt = w.now
	w.reconcile()
	if p := w.state().Rotation.Phase; p != PhaseIdle {
		t.Fatalf("a request with an unchanged provided Secret started a rotation (%s)", p)
	}

	// A new root in the Secret starts a rotation to exactly that material; an abort
	// remembers it so that it does not start again until the Secret changes.
	second := mat(t)
	w.source = second
	w.beforeDecide = abortHook(PhaseSwitching)
	w.run(time.Hour, nil)
	w.beforeDecide = nil
	st := w.state()
	if st.Rotation.Phase != PhaseRolledBack || !slices.Equal(st.AbandonedRoots, Fingerprints(second.Roots)) {
		t.Fatalf("phase %s abandoned %v, want RolledBack remembering the new root", st.Rotation.Phase, st.AbandonedRoots)
	}
	w.policy.AbortRequestedAt = time.Time{}
	w.now = w.now.Add(time.Hour)
	w.reconcile()
	if p := w.state().Rotation.Phase; p != PhaseRolledBack {
		t.Fatalf("the abandoned Secret started a rotation again (%s)", p)
	}
	third := mat(t)
	w.source = third
	w.run(time.Hour, nil)
	if got := w.state().Active.RootFingerprints(); w.state().Rotation.Phase != PhaseDone || !slices.Equal(got, Fingerprints(third.Roots)) {
		t.Fatalf("a changed Secret did not rotate to its root (phase %s)", w.state().Rotation.Phase)
	}
}

func TestStateRoundTrip(t *testing.T) {
	w, _ := installed(t, Policy{})
	w.policy.RequestedAt = w.now
	w.reconcile()
	st := w.state()
	if st.Next == nil || st.Next.RootKey == nil || st.Active.RootKey == nil || st.Rotation.Phase != PhaseTrusting {
		t.Fatal("the decoded state lost the next CA, a root key or the phase")
	}
	data, ann, err := st.Encode()
	if err != nil {
		t.Fatal(err)
	}
	assertNoKeyMaterial(t, ann, st.Active.RootKey, st.Next.RootKey, st.Active.Material.Intermediate.Key)
	if _, err := DecodeState(data, "{not json"); err == nil {
		t.Fatal("a broken annotation decodes")
	}
	delete(data, NextPrefix+IstioKeys.Cert)
	if _, err := DecodeState(data, ann); err == nil {
		t.Fatal("a rotation whose next CA is missing decodes")
	}
}
