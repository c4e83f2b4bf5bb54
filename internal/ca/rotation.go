package ca

import (
	"time"
)

// Phase is where a root rotation stands. A rotation moves Trusting → Switching → Soaking →
// Finalizing → Done; an abort before Finalizing moves it to RollingBack (or straight to
// RolledBack from Trusting). Idle, Done and RolledBack are at rest.
type Phase string

// The phases of a root rotation.
const (
	// PhaseIdle: no rotation has happened yet.
	PhaseIdle Phase = "Idle"
	// PhaseTrusting: the old intermediate signs; old and new roots are trusted everywhere.
	PhaseTrusting Phase = "Trusting"
	// PhaseSwitching: the new intermediate is handed to istiod; both roots are trusted.
	PhaseSwitching Phase = "Switching"
	// PhaseSoaking: the new intermediate signs; both roots stay trusted until every workload
	// certificate issued under the old root has expired.
	PhaseSoaking Phase = "Soaking"
	// PhaseFinalizing: only the new root is trusted. There is no way back from here.
	PhaseFinalizing Phase = "Finalizing"
	// PhaseDone: the new root and intermediate are the active CA.
	PhaseDone Phase = "Done"
	// PhaseRollingBack: an aborted rotation; the old intermediate signs again and both roots
	// stay trusted until every certificate issued under the new root has expired.
	PhaseRollingBack Phase = "RollingBack"
	// PhaseRolledBack: the old root alone is trusted again; the new material is discarded.
	PhaseRolledBack Phase = "RolledBack"
)

// InProgress says whether a rotation is under way in p.
func (p Phase) InProgress() bool {
	switch p {
	case PhaseTrusting, PhaseSwitching, PhaseSoaking, PhaseFinalizing, PhaseRollingBack:
		return true
	}
	return false
}

// Abortable says whether a rotation in p can still go back to the old root.
func (p Phase) Abortable() bool {
	return p == PhaseTrusting || p == PhaseSwitching || p == PhaseSoaking
}

// Serving is what istiod is given in a phase: which CA signs, which roots are trusted.
type Serving struct {
	// SignWithNext: the new intermediate signs; otherwise the active one does.
	SignWithNext bool
	// TrustActive and TrustNext: the roots in the trust bundle.
	TrustActive, TrustNext bool
}

// Serving says what istiod must be given while a rotation is in p.
func (p Phase) Serving() Serving {
	switch p {
	case PhaseTrusting, PhaseRollingBack:
		return Serving{TrustActive: true, TrustNext: true}
	case PhaseSwitching, PhaseSoaking:
		return Serving{SignWithNext: true, TrustActive: true, TrustNext: true}
	case PhaseFinalizing:
		return Serving{SignWithNext: true, TrustNext: true}
	}
	return Serving{TrustActive: true}
}

// Rotation is the persisted record of a root rotation: enough, with the material it rotates,
// for any operator process to resume it.
type Rotation struct {
	Phase Phase `json:"phase"`
	// Reason says why the rotation started.
	Reason string `json:"reason,omitempty"`
	// StartedAt is when the rotation started; an abort request must be later.
	StartedAt time.Time `json:"startedAt,omitzero"`
	// PhaseSince is when the current phase began.
	PhaseSince time.Time `json:"phaseSince,omitzero"`
	// SettledAt is when the current phase's signals were first all observed; the phase
	// then dwells for the propagation allowance before it moves on.
	SettledAt time.Time `json:"settledAt,omitzero"`
	// SoakUntil is when Soaking or RollingBack may end.
	SoakUntil time.Time `json:"soakUntil,omitzero"`
}

// Signals are what the controller observed of the cluster, the only inputs that move a
// rotation along besides time.
type Signals struct {
	// CACertsCurrent: istiod's cacerts Secret holds exactly what the phase serves.
	CACertsCurrent bool
	// Published: every istio-ca-root-cert ConfigMap holds exactly the phase's trust bundle,
	// which proves istiod loaded it.
	Published bool
	// IstiodReady: the istiod Deployment has every replica ready.
	IstiodReady bool
	// AbortRequested: the user asked to abandon the rotation after it started.
	AbortRequested bool
}

// Timing are the durations a rotation waits for.
type Timing struct {
	// WorkloadCertTTL is the longest lifetime istiod grants a workload certificate.
	WorkloadCertTTL time.Duration
	// Propagation bounds how long a change of cacerts takes to reach istiod (kubelet's
	// Secret volume sync) and a changed trust bundle to reach every sidecar, plus clock skew.
	Propagation time.Duration
}

// Start begins a rotation at now for reason.
func Start(reason string, now time.Time) Rotation {
	return Rotation{Phase: PhaseTrusting, Reason: reason, StartedAt: now, PhaseSince: now}
}

// Step advances r by at most one phase given the observed signals. It returns the new record
// (equal to r when nothing moved) and, when only time can move it, when to look again. A phase
// moves on only when its signals hold:
//
//   - Trusting → Switching: cacerts holds both roots, istiod published them to every
//     namespace and is ready, and Propagation has passed since that was first seen, so
//     every sidecar trusts the new root before anything is signed under it.
//   - Switching → Soaking: cacerts holds the new intermediate and istiod is ready. The soak
//     runs until WorkloadCertTTL + Propagation after that observation: by then no
//     certificate istiod issued under the old root is still valid.
//   - Soaking → Finalizing: the soak is over.
//   - Finalizing → Done: cacerts holds the new root alone and istiod published it.
//   - an abort in Trusting goes straight to RolledBack (nothing was signed under the new
//     root); in Switching or Soaking it goes to RollingBack, which waits, once cacerts is
//     back on the old intermediate, WorkloadCertTTL + Propagation before RolledBack.
func (r Rotation) Step(s Signals, now time.Time, t Timing) (Rotation, time.Time) {
	if s.AbortRequested && r.Phase.Abortable() {
		if r.Phase == PhaseTrusting {
			return r.enter(PhaseRolledBack, now), time.Time{}
		}
		return r.enter(PhaseRollingBack, now), time.Time{}
	}
	switch r.Phase {
	case PhaseTrusting:
		if !(s.CACertsCurrent && s.Published && s.IstiodReady) {
			return r, time.Time{}
		}
		if r.SettledAt.IsZero() {
			r.SettledAt = now
			return r, now.Add(t.Propagation)
		}
		if ready := r.SettledAt.Add(t.Propagation); now.Before(ready) {
			return r, ready
		}
		return r.enter(PhaseSwitching, now), time.Time{}
	case PhaseSwitching:
		if !(s.CACertsCurrent && s.IstiodReady) {
			return r, time.Time{}
		}
		next := r.enter(PhaseSoaking, now)
		next.SoakUntil = now.Add(t.WorkloadCertTTL + t.Propagation)
		return next, next.SoakUntil
	case PhaseSoaking:
		if now.Before(r.SoakUntil) {
			return r, r.SoakUntil
		}
		return r.enter(PhaseFinalizing, now), time.Time{}
	case PhaseFinalizing:
		if !(s.CACertsCurrent && s.Published && s.IstiodReady) {
			return r, time.Time{}
		}
		return r.enter(PhaseDone, now), time.Time{}
	case PhaseRollingBack:
		if !s.CACertsCurrent {
			return r, time.Time{}
		}
		if r.SoakUntil.IsZero() {
			r.SoakUntil = now.Add(t.WorkloadCertTTL + t.Propagation)
			return r, r.SoakUntil
		}
		if now.Before(r.SoakUntil) {
			return r, r.SoakUntil
		}
		return r.enter(PhaseRolledBack, now), time.Time{}
	}
	return r, time.Time{}
}

// enter moves r into phase p at now, keeping why and when the rotation started.
func (r Rotation) enter(p Phase, now time.Time) Rotation {
	return Rotation{Phase: p, Reason: r.Reason, StartedAt: r.StartedAt, PhaseSince: now}
}
