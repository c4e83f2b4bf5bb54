package ca

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"slices"
	"time"
)

// Policy is the declared CA, as the spec gives it.
type Policy struct {
	// Source names where material comes from: SourceSelfSigned, or the Source of the
	// provided or cert-manager material handed to Decide.
	Source          string
	KeyAlgorithm    KeyAlgorithm
	TrustDomain     string
	RootTTL         time.Duration
	IntermediateTTL time.Duration
	// Automatic renews the intermediate and rotates the root before they expire.
	Automatic               bool
	RootRenewBefore         time.Duration
	IntermediateRenewBefore time.Duration
	// RequestedAt and AbortRequestedAt are the user's requests; zero when unset.
	RequestedAt, AbortRequestedAt time.Time
	Timing                        Timing
}

// Inputs are everything Decide looks at: the persisted state and what was observed.
type Inputs struct {
	Policy Policy
	// State is the persisted CA state; nil before the first issuance.
	State *State
	// Source is the validated material of a Provided or CertManager CA; nil for SelfSigned.
	Source *Material
	// CACerts is the Data of istiod's cacerts Secret, which Capstan wrote; nil when it does
	// not exist.
	CACerts map[string][]byte
	// CACertsName and StateName are "namespace/name" of the cacerts Secret and of the state
	// Secret, for the Source of a recovered authority and for messages.
	CACertsName, StateName string
	// Published and IstiodReady are the rotation's signals (see Signals).
	Published, IstiodReady bool
	Now                    time.Time
}

// ActionKind says which single write a decision asks for.
type ActionKind int

// The actions Decide can ask for.
const (
	// ActionNone: nothing to write; look again at Action.Wake, or on the next change.
	ActionNone ActionKind = iota
	// ActionWriteState: persist Action.State (and only then act on it).
	ActionWriteState
	// ActionWriteCACerts: write Action.CACerts to istiod's cacerts Secret.
	ActionWriteCACerts
)

// Action is one decision: at most one write, so that a crash between any two writes leaves a
// state from which Decide picks up where it stopped.
type Action struct {
	Kind    ActionKind
	State   *State
	CACerts map[string][]byte
	// Event, when set, is worth telling the user once the write succeeded.
	Event *Event
	// Wake is when time alone next changes the decision; zero when only a change does.
	Wake time.Time
	// WakeReason says what happens at Wake.
	WakeReason string
}

// Event is something that happened to the CA, for an Event and the log.
type Event struct {
	Reason, Message string
}

// Warning says whether e is something the user should look into: an Event of type Warning.
func (e Event) Warning() bool {
	return e.Reason == EventStateLost
}

// Rotation reasons.
const (
	RotationRequested       = "Requested"
	RotationRootExpiring    = "RootExpiring"
	RotationSourceChanged   = "SourceChanged"
	RotationKeyAlgorithm    = "KeyAlgorithmChanged"
	RotationStateLost       = "StateLost" // the root key went with the state Secret
	EventIssued             = "CAIssued"
	EventIntermediateRenewd = "IntermediateRenewed"
	EventRotationStarted    = "RotationStarted"
	EventRotationPhase      = "RotationPhase"
	EventRotationDone       = "RotationDone"
	EventRolledBack         = "RotationRolledBack"
	EventStateLost          = "CAStateLost" // cacerts outlived the state Secret
)

// Generator makes new CA material. Tests count its calls to prove a rotation never makes a
// second root.
type Generator interface {
	NewRoot(RootOptions) (*KeyPair, error)
	NewIntermediate(*KeyPair, IntermediateOptions) (*KeyPair, error)
}

// X509Generator is the Generator that makes real keys and certificates.
type X509Generator struct{}

// NewRoot calls NewRoot.
func (X509Generator) NewRoot(o RootOptions) (*KeyPair, error) { return NewRoot(o) }

// NewIntermediate calls NewIntermediate.
func (X509Generator) NewIntermediate(p *KeyPair, o IntermediateOptions) (*KeyPair, error) {
	return NewIntermediate(p, o)
}

// Decide is the CA's state machine as a pure function: given the persisted state and what
// was observed, it returns the one write to make next. Calling it again after that write
// (or after a crash before it) continues the same course: every new root or intermediate is
// written to the state before it is used, so material is never generated twice for one
// purpose once it has been persisted.
func Decide(in Inputs, gen Generator) (Action, error) {
	p := in.Policy
	st := in.State
	if st == nil {
		if a, ok := recoverState(in); ok {
			return a, nil
		}
		a, err := firstAuthority(in, gen)
		if err != nil {
			return Action{}, err
		}
		// A request already in the spec is met by this brand-new CA.
		return Action{Kind: ActionWriteState, State: &State{Active: a, Rotation: Rotation{Phase: PhaseIdle}, HandledRequest: p.RequestedAt},
			Event: &Event{EventIssued, "issued the mesh CA from " + a.Source + ": " + describeAuthority(a)}}, nil
	}
	if st.Rotation.Phase.InProgress() {
		return rotate(in)
	}
	if a, err := atRest(in, gen); err != nil || a.Kind != ActionNone {
		return a, err
	}
	if want, err := st.Serve().SecretData(); err != nil {
		return Action{}, err
	} else if !sameData(want, in.CACerts) {
		return Action{Kind: ActionWriteCACerts, CACerts: want}, nil
	}
	wake, why := nextRenewal(st, p)
	return Action{Wake: wake, WakeReason: why}, nil
}

// firstAuthority is the material of the first issuance.
func firstAuthority(in Inputs, gen Generator) (*Authority, error) {
	if in.Policy.Source != SourceSelfSigned {
		if in.Source == nil {
			return nil, fmt.Errorf("no material from %s", in.Policy.Source)
		}
		return &Authority{Material: in.Source, Source: in.Policy.Source}, nil
	}
	return generate(in.Policy, gen, in.Now)
}

// generate makes a new root and an intermediate under it.
func generate(p Policy, gen Generator, now time.Time) (*Authority, error) {
	root, err := gen.NewRoot(RootOptions{Algorithm: p.KeyAlgorithm, TrustDomain: p.TrustDomain, TTL: p.RootTTL, Now: now})
	if err != nil {
		return nil, err
	}
	inter, err := gen.NewIntermediate(root, IntermediateOptions{Algorithm: p.KeyAlgorithm, TrustDomain: p.TrustDomain, TTL: p.IntermediateTTL, Now: now})
	if err != nil {
		return nil, err
	}
	return &Authority{
		Material: &Material{Intermediate: inter, Chain: []*x509.Certificate{inter.Cert, root.Cert}, Roots: []*x509.Certificate{root.Cert}},
		RootKey:  root.Key,
		Source:   SourceSelfSigned,
	}, nil
}

// atRest decides, with no rotation under way, whether one must start or the intermediate
// must be renewed.
func atRest(in Inputs, gen Generator) (Action, error) {
	p, st, now := in.Policy, in.State, in.Now
	start := func(reason string, next *Authority, handled time.Time) Action {
		s := *st
		s.Next = next
		s.Rotation = Start(reason, now)
		s.HandledRequest = handled
		s.AbandonedRoots = nil
		return Action{Kind: ActionWriteState, State: &s, Event: &Event{EventRotationStarted,
			fmt.Sprintf("root rotation started (%s): phase Trusting, towards %s", reason, describeAuthority(next))}}
	}
	handled := st.HandledRequest
	requested := !p.RequestedAt.IsZero() && p.RequestedAt.After(st.HandledRequest)
	if requested {
		handled = p.RequestedAt
	}

	if p.Source != SourceSelfSigned {
		src := &Authority{Material: in.Source, Source: p.Source}
		switch {
		case slices.Equal(src.RootFingerprints(), st.Active.RootFingerprints()):
			if Fingerprint(in.Source.Intermediate.Cert) != Fingerprint(st.Active.Material.Intermediate.Cert) {
				s := *st
				s.Active = src
				s.HandledRequest = handled
				return Action{Kind: ActionWriteState, State: &s, Event: &Event{EventIntermediateRenewd,
					"took the new intermediate from " + p.Source + " under the same root: " + describeAuthority(src)}}, nil
			}
		case slices.Equal(src.RootFingerprints(), st.AbandonedRoots):
			// The user rolled this source back; it waits until it changes.
		default:
			return start(RotationSourceChanged, src, handled), nil
		}
		if requested {
			// Only a new root in the source can be rotated to; remember the request as seen.
			s := *st
			s.HandledRequest = handled
			return Action{Kind: ActionWriteState, State: &s, Event: &Event{EventRotationStarted,
				"rotation request ignored: with a " + p.Source + " CA, put a new root in its Secret to rotate"}}, nil
		}
		return Action{}, nil
	}

	// After a rollback, and while the abort that caused it stays in the spec, only a new
	// request starts another rotation: otherwise the same trigger would start it at once.
	held := st.Rotation.Phase == PhaseRolledBack && abortRequested(p, st)
	var reason string
	switch {
	case requested:
		reason = RotationRequested
	case held:
	case st.Active.Recovered():
		// Without the root key the intermediate cannot be renewed: the only way on is a new
		// root, by a rotation, which keeps the recovered one trusted until nothing it signed
		// is still valid. Automatic rotation takes it at once; otherwise the user asks.
		if p.Automatic {
			reason = RotationStateLost
		}
	case st.Active.Source != SourceSelfSigned || st.Active.RootKey == nil:
		reason = RotationSourceChanged
	case p.Automatic && !now.Before(rootRenewAt(st, p)):
		reason = RotationRootExpiring
	case keyAlgorithmChanged(st.Active, p.KeyAlgorithm):
		reason = RotationKeyAlgorithm
	}
	if reason != "" {
		next, err := generate(p, gen, now)
		if err != nil {
			return Action{}, err
		}
		return start(reason, next, handled), nil
	}
	if p.Automatic && st.Active.RootKey != nil && !now.Before(intermediateRenewAt(st, p)) && intermediateWouldOutlast(st, p, now) {
		root := &KeyPair{Cert: st.Active.Material.Roots[0], Key: st.Active.RootKey}
		inter, err := gen.NewIntermediate(root, IntermediateOptions{Algorithm: p.KeyAlgorithm, TrustDomain: p.TrustDomain, TTL: p.IntermediateTTL, Now: now})
		if err != nil {
			return Action{}, err
		}
		s := *st
		a := *st.Active
		a.Material = &Material{Intermediate: inter, Chain: []*x509.Certificate{inter.Cert, root.Cert}, Roots: st.Active.Material.Roots}
		s.Active = &a
		return Action{Kind: ActionWriteState, State: &s, Event: &Event{EventIntermediateRenewd,
			"renewed the intermediate under the same root: " + describeAuthority(&a)}}, nil
	}
	return Action{}, nil
}

// rotate moves a rotation along. An abort request is acted on first, before cacerts is
// brought to the current phase, so that an abort never first pushes istiod one phase on.
// Otherwise cacerts must serve the phase before the signals may end it.
func rotate(in Inputs) (Action, error) {
	st, now, p := in.State, in.Now, in.Policy
	abort := abortRequested(p, st) && st.Rotation.Phase.Abortable()
	want, err := st.Serve().SecretData()
	if err != nil {
		return Action{}, err
	}
	current := sameData(want, in.CACerts)
	if !current && !abort {
		return Action{Kind: ActionWriteCACerts, CACerts: want}, nil
	}
	sig := Signals{CACertsCurrent: current, Published: in.Published, IstiodReady: in.IstiodReady, AbortRequested: abort}
	r, wake := st.Rotation.Step(sig, now, p.Timing)
	if r == st.Rotation {
		return Action{Wake: wake, WakeReason: waitingFor(st.Rotation.Phase, sig, wake)}, nil
	}
	s := *st
	s.Rotation = r
	var ev *Event
	switch {
	case r.Phase == PhaseDone:
		s.Active, s.Next = st.Next, nil
		ev = &Event{EventRotationDone, fmt.Sprintf("root rotation (%s) done: the mesh trusts only %s", r.Reason, describeAuthority(s.Active))}
	case r.Phase == PhaseRolledBack:
		if st.Next.Source != SourceSelfSigned {
			s.AbandonedRoots = st.Next.RootFingerprints()
		}
		s.Next = nil
		ev = &Event{EventRolledBack, fmt.Sprintf("root rotation (%s) rolled back at the user's request: the mesh trusts only %s again", r.Reason, describeAuthority(s.Active))}
	case r.Phase != st.Rotation.Phase:
		ev = &Event{EventRotationPhase, fmt.Sprintf("root rotation (%s): %s → %s", r.Reason, st.Rotation.Phase, r.Phase)}
	}
	return Action{Kind: ActionWriteState, State: &s, Event: ev, Wake: wake}, nil
}

// abortRequested says whether the user asked to abandon the rotation st records (the one
// under way, or the one that was last rolled back).
func abortRequested(p Policy, st *State) bool {
	return !p.AbortRequestedAt.IsZero() && !p.AbortRequestedAt.Before(st.Rotation.StartedAt)
}

// waitingFor says what a rotation in phase waits for.
func waitingFor(phase Phase, s Signals, wake time.Time) string {
	switch {
	case !s.CACertsCurrent:
		return "writing istiod's cacerts Secret"
	case !s.IstiodReady:
		return "waiting for istiod to be ready"
	case (phase == PhaseTrusting || phase == PhaseFinalizing) && !s.Published:
		return "waiting for istiod to publish the new trust bundle to every namespace"
	case phase == PhaseSoaking || phase == PhaseRollingBack:
		return "waiting for every workload certificate issued under the root being retired to expire"
	case !wake.IsZero():
		return "letting the new trust bundle reach every sidecar"
	}
	return "waiting"
}

// nextRenewal is when automatic renewal next acts, and what it will do.
func nextRenewal(st *State, p Policy) (time.Time, string) {
	if st.Active.Recovered() && p.Source == SourceSelfSigned {
		return time.Time{}, "nothing until a rotation is requested (spec.security.ca.rotation.requestedAt): the root key was lost with the CA state, so Capstan can neither renew the intermediate nor rotate the root by itself"
	}
	if !p.Automatic || p.Source != SourceSelfSigned || st.Active.RootKey == nil {
		return time.Time{}, ""
	}
	root, inter := rootRenewAt(st, p), intermediateRenewAt(st, p)
	if root.Before(inter) || root.Equal(inter) {
		return root, "root rotation, rotation.rootRenewBefore before the root expires"
	}
	return inter, "intermediate renewal, rotation.intermediateRenewBefore before it expires"
}

func rootRenewAt(st *State, p Policy) time.Time {
	return EarliestExpiry(st.Active.Material.Roots).Add(-p.RootRenewBefore)
}

func intermediateRenewAt(st *State, p Policy) time.Time {
	return st.Active.Material.Intermediate.Cert.NotAfter.Add(-p.IntermediateRenewBefore)
}

// intermediateWouldOutlast says whether a new intermediate, which cannot outlive the root,
// would expire later than the current one. Near the root's expiry it would not, and only a
// root rotation helps.
func intermediateWouldOutlast(st *State, p Policy, now time.Time) bool {
	end := now.Add(p.IntermediateTTL)
	if root := EarliestExpiry(st.Active.Material.Roots); root.Before(end) {
		end = root
	}
	return end.After(st.Active.Material.Intermediate.Cert.NotAfter)
}

// EarliestExpiry is the soonest NotAfter among certs; zero for none.
func EarliestExpiry(certs []*x509.Certificate) time.Time {
	var t time.Time
	for _, c := range certs {
		if t.IsZero() || c.NotAfter.Before(t) {
			t = c.NotAfter
		}
	}
	return t
}

func keyAlgorithmChanged(a *Authority, want KeyAlgorithm) bool {
	if want == "" || a.RootKey == nil {
		return false
	}
	got, err := AlgorithmOf(a.RootKey.Public())
	return err == nil && got != want
}

// sameData says whether a Secret's data equals want, key by key.
func sameData(want, got map[string][]byte) bool {
	if len(want) != len(got) {
		return false
	}
	for k, v := range want {
		if !bytes.Equal(v, got[k]) {
			return false
		}
	}
	return true
}

// describeAuthority names an authority's intermediate and roots, never its keys.
func describeAuthority(a *Authority) string {
	if a == nil || a.Material == nil {
		return "no CA"
	}
	return a.Material.String()
}
