package ca

import (
	"crypto/x509"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

// The tests here lose the CA's state Secret in the simulated cluster of rotation_test.go
// (the persisted state becomes nil, as when someone deletes the Secret) while istiod's
// cacerts Secret stays, and check that the mesh's trust never breaks: what istiod signs
// with is kept, and the mesh moves to a new root, if at all, only by a rotation.

// loseState deletes the state Secret and returns what cacerts held at that moment. The
// records of phases, events and writes start again from there.
func (w *world) loseState() map[string][]byte {
	w.stateData, w.stateAnn = nil, ""
	w.phases, w.events, w.writesSeen = nil, nil, 0
	return maps.Clone(w.cacerts)
}

// runUntil ticks until the persisted rotation is in phase, or fails after limit.
func (w *world) runUntil(phase Phase, limit time.Duration) {
	w.t.Helper()
	for end := w.now.Add(limit); w.now.Before(end); w.now = w.now.Add(simTick) {
		w.reconcile()
		w.issueAndCheck()
		if st := w.state(); st != nil && st.Rotation.Phase == phase {
			return
		}
	}
	w.t.Fatalf("the rotation did not reach %s (phases %v)", phase, w.phases)
}

// assertNoSwap fails when a cacerts write replaced the trust bundle by one that neither
// holds the one before nor is held by it: istiod refuses such a change, and a workload
// trusting the old bundle rejects every certificate under the new root.
func (w *world) assertNoSwap() {
	w.t.Helper()
	for i := 1; i < len(w.history); i++ {
		before, after := w.history[i-1].roots, w.history[i].roots
		superset := !slices.ContainsFunc(before, func(fp string) bool { return !slices.Contains(after, fp) })
		subset := !slices.ContainsFunc(after, func(fp string) bool { return !slices.Contains(before, fp) })
		if !superset && !subset {
			w.t.Fatalf("cacerts write %d swapped the trust bundle %v for %v", i, short(before), short(after))
		}
	}
}

// decideOnce is the decision the world would take now, without making it.
func (w *world) decideOnce() Action {
	w.t.Helper()
	a, err := Decide(Inputs{Policy: w.policy, State: w.state(), Source: w.source, CACerts: w.cacerts,
		CACertsName: "istio-system/cacerts", StateName: "istio-system/capstan-ca", IstiodReady: w.istiodOK, Now: w.now}, w.gen)
	if err != nil {
		w.t.Fatalf("Decide: %v", err)
	}
	return a
}

// wantRecovery checks that a decision with the state lost rebuilds it from cacerts as it
// is: one state write, an active authority without a root key holding cacerts' material
// (so cacerts is not written again), and a CAStateLost warning naming both Secrets.
func wantRecovery(t *testing.T, a Action, cacerts map[string][]byte, source string, wantInMessage string) {
	t.Helper()
	if a.Kind != ActionWriteState || a.State == nil {
		t.Fatalf("the first decision is %v, want a state write", a.Kind)
	}
	act := a.State.Active
	if act.Source != source || a.State.Rotation.Phase != PhaseIdle || a.State.Next != nil {
		t.Fatalf("recovered source %q phase %s next %v, want source %q, Idle and no next CA", act.Source, a.State.Rotation.Phase, a.State.Next, source)
	}
	if act.Recovered() && act.RootKey != nil {
		t.Fatal("a recovered authority claims a root key")
	}
	if got, err := a.State.Serve().SecretData(); err != nil || !sameData(got, cacerts) {
		t.Fatalf("the recovered state does not serve exactly what cacerts holds (err %v)", err)
	}
	ev := a.Event
	if ev == nil || ev.Reason != EventStateLost || !ev.Warning() {
		t.Fatalf("event %+v, want a %s warning", ev, EventStateLost)
	}
	for _, want := range []string{"istio-system/capstan-ca", "istio-system/cacerts", wantInMessage} {
		if !strings.Contains(ev.Message, want) {
			t.Errorf("the event %q does not say %q", ev.Message, want)
		}
	}
	assertNoKeyMaterial(t, ev.Message, act.Material.Intermediate.Key)
}

// TestLostStateKeepsTheCAIstiodSignsWith protects the mesh's trust when the state Secret,
// which holds the root key, is lost while cacerts still holds a valid CA: that CA is kept,
// and with automatic rotation the mesh moves to a new root through every phase of a
// rotation, never by a swap of roots.
func TestLostStateKeepsTheCAIstiodSignsWith(t *testing.T) {
	cases := map[string]struct {
		// before runs after the install, before the state is lost.
		before func(*world)
		// kept are the phases of the rotation under way when the state is lost, whose
		// roots are all still trusted after the loss.
		kept int
	}{
		"at rest": {},
		// Certificates hold whole seconds: the checks must not take a CA that expires later
		// for expired because now is not a whole second.
		"at rest, between two seconds": {before: func(w *world) { w.now = w.now.Add(437 * time.Millisecond) }},
		"in the middle of a rotation, in Soaking": {before: func(w *world) {
			w.policy.RequestedAt = w.now
			w.runUntil(PhaseSoaking, time.Hour)
		}, kept: 2},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			w, _ := installed(t, Policy{Automatic: true})
			if tc.before != nil {
				tc.before(w)
			}
			lostRoots := slices.Clone(w.history[len(w.history)-1].roots)
			if want := max(tc.kept, 1); len(lostRoots) != want {
				t.Fatalf("cacerts trusts %d roots when the state is lost, want %d", len(lostRoots), want)
			}
			roots := w.gen.roots
			cacerts := w.loseState()

			wantRecovery(t, w.decideOnce(), cacerts, "Recovered:istio-system/cacerts", "a root rotation moves the mesh to a new root")
			w.run(4*time.Hour, nil)
			w.assertNoSwap()
			want := []Phase{PhaseIdle, PhaseTrusting, PhaseSwitching, PhaseSoaking, PhaseFinalizing, PhaseDone}
			if !slices.Equal(w.phases, want) {
				t.Fatalf("phases after the loss %v, want %v", w.phases, want)
			}
			st := w.state()
			if st.Rotation.Reason != RotationStateLost {
				t.Errorf("rotation reason %q, want %q", st.Rotation.Reason, RotationStateLost)
			}
			if st.Active.Source != SourceSelfSigned || st.Active.RootKey == nil {
				t.Fatalf("after the rotation the active CA is %q with a root key: %t, want a SelfSigned one with its key", st.Active.Source, st.Active.RootKey != nil)
			}
			if got := st.TrustedRoots(); len(got) != 1 || slices.Contains(lostRoots, got[0]) {
				t.Fatalf("after the rotation cacerts trusts %v, want one new root only", short(got))
			}
			if w.gen.roots != roots+1 {
				t.Fatalf("generated %d roots after the loss, want 1", w.gen.roots-roots)
			}
		})
	}
}

// TestLostStateWithManualRotationWaitsForARequest protects a CA whose automatic rotation is
// off: after the state is lost, cacerts stays as it is and nothing is generated until the
// user asks for a rotation (a request from before the loss is not a new one); then a
// normal rotation runs.
func TestLostStateWithManualRotationWaitsForARequest(t *testing.T) {
	w, oldRoot := installed(t, Policy{RequestedAt: now.Add(-time.Hour)})
	roots := w.gen.roots
	cacerts := w.loseState()
	wantRecovery(t, w.decideOnce(), cacerts, "Recovered:istio-system/cacerts", "set spec.security.ca.rotation.requestedAt")

	w.run(3*time.Hour, nil)
	if !sameData(w.cacerts, cacerts) || len(w.history) != 1 {
		t.Fatal("cacerts was written while the rotation waits for a request")
	}
	st := w.state()
	if !st.Active.Recovered() || st.Rotation.Phase != PhaseIdle || w.gen.roots != roots {
		t.Fatalf("active %q phase %s, %d roots generated: want the recovered CA at rest and none", st.Active.Source, st.Rotation.Phase, w.gen.roots-roots)
	}
	if a := w.reconcile(); !a.Wake.IsZero() || !strings.Contains(a.WakeReason, "spec.security.ca.rotation.requestedAt") {
		t.Fatalf("next action %s %q, want none until a request, saying so", a.Wake, a.WakeReason)
	}

	w.policy.RequestedAt = w.now
	w.run(4*time.Hour, nil)
	w.assertNoSwap()
	st = w.state()
	if st.Rotation.Phase != PhaseDone || st.Rotation.Reason != RotationRequested || st.Active.RootFingerprints()[0] == oldRoot || st.Active.RootKey == nil {
		t.Fatalf("after the request: phase %s reason %s, want a requested rotation to a new root, done", st.Rotation.Phase, st.Rotation.Reason)
	}
}

// TestLostStateWithoutAServingCAIssuesANewOne protects the first issuance when nothing in
// the mesh can depend on cacerts: it is gone, or istiod could not be signing with it.
func TestLostStateWithoutAServingCAIssuesANewOne(t *testing.T) {
	expired := func(t *testing.T) map[string][]byte {
		root := mustRoot(t, RootOptions{Now: now.Add(-2000 * time.Hour), TTL: 5000 * time.Hour})
		inter := mustIntermediate(t, root, IntermediateOptions{Now: now.Add(-2000 * time.Hour), TTL: 100 * time.Hour})
		d, err := (&Material{Intermediate: inter, Chain: []*x509.Certificate{inter.Cert, root.Cert}, Roots: []*x509.Certificate{root.Cert}}).SecretData()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	cases := map[string]func(t *testing.T, cacerts map[string][]byte) map[string][]byte{
		"cacerts is gone too": func(*testing.T, map[string][]byte) map[string][]byte { return nil },
		"cacerts does not parse": func(_ *testing.T, d map[string][]byte) map[string][]byte {
			d[IstioKeys.Key] = []byte("not a key")
			return d
		},
		"cacerts does not chain to its roots": func(t *testing.T, d map[string][]byte) map[string][]byte {
			d[IstioKeys.Roots] = TrustBundle(mustRoot(t, RootOptions{TTL: 1000 * time.Hour}).Cert)
			return d
		},
		"cacerts has expired": func(t *testing.T, _ map[string][]byte) map[string][]byte { return expired(t) },
	}
	for name, breakCACerts := range cases {
		t.Run(name, func(t *testing.T) {
			w, oldRoot := installed(t, Policy{})
			w.cacerts = breakCACerts(t, w.loseState())
			a := w.decideOnce()
			if a.Kind != ActionWriteState || a.Event == nil || a.Event.Reason != EventIssued {
				t.Fatalf("decision %v with event %+v, want a new CA issued", a.Kind, a.Event)
			}
			act := a.State.Active
			if act.Source != SourceSelfSigned || act.RootKey == nil || act.RootFingerprints()[0] == oldRoot {
				t.Fatalf("issued %q (root key: %t), want a new SelfSigned CA with its key", act.Source, act.RootKey != nil)
			}
		})
	}
}

// TestLostStateWithAProvidedCA protects Provided (and, the same way, CertManager) CAs: the
// source is taken again when its roots are those cacerts trusts, and otherwise the mesh
// rotates from cacerts' roots to the source's, trusting them side by side first.
func TestLostStateWithAProvidedCA(t *testing.T) {
	const source = "Provided:istio-system/my-ca"
	mat := func(t *testing.T) *Material {
		root := mustRoot(t, RootOptions{Now: now, TTL: 1000 * time.Hour})
		inter := mustIntermediate(t, root, IntermediateOptions{Now: now, TTL: 500 * time.Hour})
		return &Material{Intermediate: inter, Chain: []*x509.Certificate{inter.Cert, root.Cert}, Roots: []*x509.Certificate{root.Cert}}
	}
	install := func(t *testing.T) (*world, *Material) {
		first := mat(t)
		w := newWorld(t, Policy{Source: source})
		w.source = first
		w.reconcile()
		w.now = w.now.Add(simLag)
		w.reconcile()
		return w, first
	}

	t.Run("same root: the source is taken again", func(t *testing.T) {
		w, first := install(t)
		cacerts := w.loseState()
		wantRecovery(t, w.decideOnce(), cacerts, source, "took the CA from "+source+" again")
		w.run(time.Hour, nil)
		if st := w.state(); st.Rotation.Phase != PhaseIdle || !slices.Equal(st.Active.RootFingerprints(), Fingerprints(first.Roots)) || len(w.history) != 1 {
			t.Fatalf("phase %s, %d cacerts writes: want the provided CA at rest and cacerts untouched", st.Rotation.Phase, len(w.history)-1)
		}
	})

	t.Run("another root: a rotation from cacerts' root to the source's", func(t *testing.T) {
		w, _ := install(t)
		cacerts := w.loseState()
		second := mat(t)
		w.source = second // the user replaced the Secret's root while the state was lost
		wantRecovery(t, w.decideOnce(), cacerts, "Recovered:istio-system/cacerts", "a root rotation moves the mesh to "+source+"'s roots")
		w.run(time.Hour, nil)
		w.assertNoSwap()
		want := []Phase{PhaseIdle, PhaseTrusting, PhaseSwitching, PhaseSoaking, PhaseFinalizing, PhaseDone}
		if !slices.Equal(w.phases, want) {
			t.Fatalf("phases %v, want %v", w.phases, want)
		}
		st := w.state()
		if st.Rotation.Reason != RotationSourceChanged || st.Active.Source != source || !slices.Equal(st.Active.RootFingerprints(), Fingerprints(second.Roots)) {
			t.Fatalf("after the rotation (%s) the active CA is %q, want the provided Secret's new root", st.Rotation.Reason, st.Active.Source)
		}
	})
}

// TestCrashBetweenEveryTwoWritesOfARecovery loses each write of a recovery (the rebuilt
// state, then the whole rotation it starts) in turn, as if the operator died just before
// it, and restarts from what the cluster holds. Every run must recover the same CA, end
// on one new root, and never swap roots or break a handshake on the way.
func TestCrashBetweenEveryTwoWritesOfARecovery(t *testing.T) {
	ref, _ := installed(t, Policy{Automatic: true})
	ref.loseState()
	ref.run(4*time.Hour, nil)
	total := ref.writesSeen
	if total < 7 {
		t.Fatalf("a recovery and its rotation took only %d writes", total)
	}
	for drop := 0; drop < total; drop++ {
		t.Run(fmt.Sprintf("crash before write %d of %d", drop, total), func(t *testing.T) {
			w, oldRoot := installed(t, Policy{Automatic: true})
			w.loseState()
			w.dropAt = drop
			w.run(4*time.Hour, nil)
			w.assertNoSwap()
			st := w.state()
			if st.Rotation.Phase != PhaseDone || st.Rotation.Reason != RotationStateLost {
				t.Fatalf("ended in %s (%s), want the recovery's rotation done", st.Rotation.Phase, st.Rotation.Reason)
			}
			if st.Active.RootFingerprints()[0] == oldRoot || st.Active.RootKey == nil {
				t.Fatal("the mesh did not move to a new root Capstan holds the key of")
			}
			if len(w.nextRoots) != 1 {
				t.Fatalf("%d different new roots were persisted, want 1", len(w.nextRoots))
			}
		})
	}
}
