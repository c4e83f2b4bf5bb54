package ca

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Authority is CA material Capstan can hand istiod, with where it came from and, for a root
// Capstan made itself, the root's key, so that it can sign the next intermediate.
type Authority struct {
	Material *Material
	// RootKey is the key of Material.Roots[0]; nil unless Capstan generated the root.
	RootKey crypto.Signer
	// Source names where the material came from: SourceSelfSigned, or "Provided:<secret>",
	// "CertManager:<certificate>".
	Source string
}

// SourceSelfSigned is the Source of an Authority Capstan generated.
const SourceSelfSigned = "SelfSigned"

// SourceRecoveredPrefix begins the Source of an Authority rebuilt from istiod's cacerts
// Secret after the state Secret was lost ("Recovered:<namespace>/cacerts"). Such an
// authority has no root key: Capstan can neither renew its intermediate nor sign under its
// root, only rotate away from it.
const SourceRecoveredPrefix = "Recovered:"

// Recovered says whether a was rebuilt from cacerts after the state Secret was lost.
func (a *Authority) Recovered() bool {
	return a != nil && strings.HasPrefix(a.Source, SourceRecoveredPrefix)
}

// RootFingerprints are the SHA-256 fingerprints of a's roots, sorted.
func (a *Authority) RootFingerprints() []string {
	if a == nil || a.Material == nil {
		return nil
	}
	return Fingerprints(a.Material.Roots)
}

// Fingerprints are the SHA-256 fingerprints of certs, sorted and without repeats.
func Fingerprints(roots []*x509.Certificate) []string {
	fps := make([]string, 0, len(roots))
	for _, r := range roots {
		fps = append(fps, Fingerprint(r))
	}
	slices.Sort(fps)
	return slices.Compact(fps)
}

// State is the whole persisted state of the mesh CA: the active authority, the next one
// while a rotation is under way, and the rotation's record. It lives in one Secret, so that
// every change to it is a single atomic write: a crash leaves either the old or the new
// state, never a mix, and a second new root can never be generated for one rotation.
type State struct {
	Active *Authority
	// Next is the authority a rotation moves to; nil at rest.
	Next     *Authority
	Rotation Rotation
	// HandledRequest is the last spec.security.ca.rotation.requestedAt acted upon.
	HandledRequest time.Time
	// AbandonedRoots are the root fingerprints of a source whose rotation was rolled back:
	// that source does not start another rotation until it changes.
	AbandonedRoots []string
}

// StateAnnotation holds the JSON record of a State on its Secret; the key material is in
// the Secret's data.
const StateAnnotation = "capstan.dev/ca-state"

// NextPrefix prefixes the data keys of the next authority in the state Secret.
const NextPrefix = "next-"

// RootKeyName is the data key of a generated root's private key in the state Secret.
const RootKeyName = "root-key.pem"

type stateRecord struct {
	Rotation       Rotation  `json:"rotation"`
	ActiveSource   string    `json:"activeSource,omitempty"`
	NextSource     string    `json:"nextSource,omitempty"`
	HandledRequest time.Time `json:"handledRequest,omitzero"`
	AbandonedRoots []string  `json:"abandonedRoots,omitempty"`
}

// Encode is the Secret data and the StateAnnotation value that hold s.
func (s *State) Encode() (map[string][]byte, string, error) {
	if s.Active == nil {
		return nil, "", fmt.Errorf("encode CA state: no active authority")
	}
	data := map[string][]byte{}
	if err := encodeAuthority(data, "", s.Active); err != nil {
		return nil, "", err
	}
	rec := stateRecord{Rotation: s.Rotation, ActiveSource: s.Active.Source, HandledRequest: s.HandledRequest, AbandonedRoots: s.AbandonedRoots}
	if s.Next != nil {
		if err := encodeAuthority(data, NextPrefix, s.Next); err != nil {
			return nil, "", err
		}
		rec.NextSource = s.Next.Source
	}
	ann, err := json.Marshal(rec)
	if err != nil {
		return nil, "", fmt.Errorf("encode CA state: %w", err)
	}
	return data, string(ann), nil
}

func encodeAuthority(data map[string][]byte, prefix string, a *Authority) error {
	d, err := a.Material.SecretData()
	if err != nil {
		return fmt.Errorf("encode CA state: %w", err)
	}
	for k, v := range d {
		data[prefix+k] = v
	}
	if a.RootKey != nil {
		key, err := marshalKeyPEM(a.RootKey)
		if err != nil {
			return fmt.Errorf("encode CA state: root key: %w", err)
		}
		data[prefix+RootKeyName] = key
	}
	return nil
}

// DecodeState reads a State from its Secret's data and StateAnnotation value.
func DecodeState(data map[string][]byte, annotation string) (*State, error) {
	var rec stateRecord
	if err := json.Unmarshal([]byte(annotation), &rec); err != nil {
		return nil, fmt.Errorf("annotation %s: %w", StateAnnotation, err)
	}
	active, err := decodeAuthority(data, "", rec.ActiveSource)
	if err != nil {
		return nil, err
	}
	s := &State{Active: active, Rotation: rec.Rotation, HandledRequest: rec.HandledRequest, AbandonedRoots: rec.AbandonedRoots}
	if s.Rotation.Phase == "" {
		s.Rotation.Phase = PhaseIdle
	}
	if _, ok := data[NextPrefix+IstioKeys.Cert]; ok {
		if s.Next, err = decodeAuthority(data, NextPrefix, rec.NextSource); err != nil {
			return nil, err
		}
	}
	if s.Rotation.Phase.InProgress() && s.Next == nil {
		return nil, fmt.Errorf("the rotation is in phase %s but the next CA is missing", s.Rotation.Phase)
	}
	return s, nil
}

func decodeAuthority(data map[string][]byte, prefix, source string) (*Authority, error) {
	sub := map[string][]byte{}
	for _, k := range []string{IstioKeys.Cert, IstioKeys.Key, IstioKeys.Chain, IstioKeys.Roots} {
		if v, ok := data[prefix+k]; ok {
			sub[k] = v
		}
	}
	m, err := ParseSecretData(sub)
	if err != nil {
		return nil, fmt.Errorf("%sCA material: %w", prefix, err)
	}
	a := &Authority{Material: m, Source: source}
	if v, ok := data[prefix+RootKeyName]; ok {
		key, reason := parseKeyPEM(v)
		if reason != "" {
			return nil, fmt.Errorf("%s%s: %s", prefix, RootKeyName, reason)
		}
		a.RootKey = key
	}
	return a, nil
}

// Serve is what istiod's cacerts Secret must hold in the current phase: the signing CA
// with its chain, and the trust bundle.
func (s *State) Serve() *Material {
	sv := s.Rotation.Phase.Serving()
	if s.Next == nil {
		sv = Serving{TrustActive: true}
	}
	signer := s.Signing().Material
	var roots []*x509.Certificate
	if sv.TrustActive {
		roots = append(roots, s.Active.Material.Roots...)
	}
	if sv.TrustNext {
		roots = append(roots, s.Next.Material.Roots...)
	}
	return &Material{Intermediate: signer.Intermediate, Chain: signer.Chain, Roots: uniqueSorted(roots)}
}

// Signing is the authority whose intermediate istiod signs with in the current phase.
func (s *State) Signing() *Authority {
	if s.Next != nil && s.Rotation.Phase.Serving().SignWithNext {
		return s.Next
	}
	return s.Active
}

// TrustedRoots are the fingerprints of the roots Serve trusts.
func (s *State) TrustedRoots() []string {
	return Fingerprints(s.Serve().Roots)
}
