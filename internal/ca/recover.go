package ca

import (
	"fmt"
	"slices"
	"time"
)

// recoverState decides what to do when the state Secret is gone but istiod's cacerts Secret
// (Capstan's own) still holds a CA istiod can sign with. That CA is what every workload
// certificate in the mesh chains to: issuing a new one in its place would swap the root
// under them, and istiod refuses a trust bundle that neither adds to nor takes from the one
// it has. So the state is rebuilt from cacerts instead, as the active authority, without the
// root key (that was only in the state Secret), and the mesh is moved off it, if at all, by
// an ordinary root rotation that trusts the new root beside it first.
//
// A Provided or CertManager source whose roots are those of cacerts is simply taken again.
//
// It reports false when cacerts is missing or istiod could not be signing with it (it does
// not parse, does not chain to its roots, or has expired): then nothing in the mesh depends
// on it, and the caller issues a CA as the first time.
func recoverState(in Inputs) (Action, bool) {
	if in.CACerts == nil {
		return Action{}, false
	}
	m, err := ParseSecretData(in.CACerts)
	if err != nil {
		return Action{}, false
	}
	// Valid now is enough: material that expires within a workload certificate's lifetime
	// is still what istiod signs with and what live certificates chain to. A TTL of one
	// second makes Validate's lifetime check an expiry check; no shorter, for certificates
	// hold whole seconds, and Validate's probe certificate, ending a shorter TTL after a now
	// between two seconds, would have expired at now.
	if Validate(m, ValidateOptions{Now: in.Now, WorkloadCertTTL: time.Second, TrustDomain: in.Policy.TrustDomain}) != nil {
		return Action{}, false
	}
	m.Keys = KeyNames{}
	p := in.Policy
	stateName, cacertsName := orName(in.StateName, "the CA state Secret"), orName(in.CACertsName, "cacerts")
	lost := "secret " + stateName + ", which held the CA's state, was lost while " + cacertsName + " still holds a valid CA"

	recovered := &Authority{Material: m, Source: SourceRecoveredPrefix + orName(in.CACertsName, "cacerts")}
	a := recovered
	var next string
	switch {
	case p.Source != SourceSelfSigned && in.Source != nil && slices.Equal(Fingerprints(in.Source.Roots), recovered.RootFingerprints()):
		a = &Authority{Material: in.Source, Source: p.Source}
		next = "took the CA from " + p.Source + " again: its roots are those istiod trusts"
	case p.Source != SourceSelfSigned:
		next = "istiod keeps signing with it; a root rotation moves the mesh to " + p.Source + "'s roots, trusting them beside the current ones first"
	case p.Automatic:
		next = "istiod keeps signing with it; its root key is lost, so a root rotation moves the mesh to a new root, trusting it beside the current one first"
	default:
		next = "istiod keeps signing with it; its root key is lost, and automatic rotation is off: set spec.security.ca.rotation.requestedAt to move the mesh to a new root, or restore " + stateName + " from a backup"
	}
	// A request already in the spec was made before the state was lost and was acted on
	// then; only a later one is a new request.
	st := &State{Active: a, Rotation: Rotation{Phase: PhaseIdle}, HandledRequest: p.RequestedAt}
	return Action{Kind: ActionWriteState, State: st, Event: &Event{Reason: EventStateLost,
		Message: fmt.Sprintf("%s (%s): %s", lost, describeAuthority(recovered), next)}}, true
}

func orName(name, def string) string {
	if name == "" {
		return def
	}
	return name
}
