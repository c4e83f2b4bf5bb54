// Package mtls is the incremental move of a mesh from PERMISSIVE to STRICT mutual TLS as a
// pure state machine: each namespace goes Inherit → Permissive → Strict → Verified, one
// batch at a time and only once every gate is green, and back to Permissive, with the
// reason kept, when a gate turns red after its flip. Once every namespace is Verified the
// mesh-wide policy becomes STRICT and the per-namespace policies go; mode PERMISSIVE walks
// back.
//
// A namespace's state lives on the PeerAuthentication Capstan writes for it (one per
// namespace, changed in place, so there are never two of Capstan's in conflict). Gates are
// never persisted: a namespace is flipped only on gates evaluated by this process, so an
// operator restarted mid-migration checks again before it writes STRICT. Pure: no client,
// no clock, no logging.
package mtls

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Phase is where one namespace stands.
type Phase string

// The phases of a namespace.
const (
	// PhaseInherit: no PeerAuthentication of Capstan's; the mesh-wide policy applies.
	PhaseInherit Phase = "Inherit"
	// PhasePermissive: Capstan's namespace policy says PERMISSIVE; its gates are watched.
	PhasePermissive Phase = "Permissive"
	// PhaseStrict: Capstan's namespace policy says STRICT, soaking.
	PhaseStrict Phase = "Strict"
	// PhaseVerified: STRICT for soak without a gate turning red.
	PhaseVerified Phase = "Verified"
)

// Mode is a PeerAuthentication's mtls.mode as Capstan writes it; ModeNone is no policy.
type Mode string

// The modes Capstan writes.
const (
	ModeNone       Mode = ""
	ModePermissive Mode = "PERMISSIVE"
	ModeStrict     Mode = "STRICT"
)

// NamespaceState is what Capstan's PeerAuthentication of a namespace records.
type NamespaceState struct {
	Phase Phase
	// Since is when the namespace entered Phase.
	Since time.Time
	// Reason says why a namespace went back to Permissive, kept until it flips again.
	Reason string
}

// Gate is one check of whether a namespace can be STRICT.
type Gate struct {
	// Name is a CamelCase word the status shows, e.g. PlaintextTraffic, UnmeshedEndpoints.
	Name string
	// Green: the check passed. Unknown (Prometheus unreachable, a query error) is not green.
	Green bool
	// Evidence says what was seen, e.g. "3 plaintext requests/s from default/legacy-client".
	Evidence string
}

// Namespace is what is observed of one namespace.
type Namespace struct {
	State NamespaceState
	// Gates are this process's evaluation of the namespace's gates; nil when it has not
	// evaluated them since it started, which never counts as green.
	Gates []Gate
	// ErrorsRose: its error rate rose since its flip (what soak watches).
	ErrorsRose bool
}

// red are the gates that are not green.
func (n Namespace) red() []Gate {
	var out []Gate
	for _, g := range n.Gates {
		if !g.Green {
			out = append(out, g)
		}
	}
	return out
}

// Config is spec.security.mtls.
type Config struct {
	// Strict is the goal: mode STRICT. False walks back to PERMISSIVE.
	Strict bool
	// Immediate flips every namespace at once once its gates are green, without batches.
	Immediate bool
	// BatchSize is how many namespaces may be Strict (not yet Verified) at once; below 1 is 1.
	BatchSize int
	// Soak is how long a namespace stays Strict without a red gate to count as Verified.
	Soak time.Duration
}

// Observed is the mesh as seen now.
type Observed struct {
	Now time.Time
	// Namespaces are the namespaces in the migration (the meshed ones, minus exclusions).
	Namespaces map[string]Namespace
	// MeshMode is the mode of the mesh-wide policy in the root namespace.
	MeshMode Mode
}

// Write is one write Next asks for.
type Write struct {
	// Namespace is the namespace whose policy changes; "" for the mesh-wide policy.
	Namespace string
	// Mode is the mode to write; ModeNone removes Capstan's policy.
	Mode Mode
	// State is the state to record with it (namespace policies only).
	State NamespaceState
}

// Plan is what Next decides: the writes to make, in order, and where each namespace
// stands for status.
type Plan struct {
	Writes []Write
	// Blocked are the namespaces held Permissive by a red gate, by name, with the gates.
	Blocked map[string][]Gate
	// Wake is when time alone changes the plan (a soak ends); zero when only a change does.
	Wake time.Time
	// Done: the mesh is where the mode says (mesh-wide STRICT with no namespace policy of
	// Capstan's left, or PERMISSIVE with none).
	Done bool
}

// Next plans the next writes. Reverting a namespace whose gate turned red after its flip
// comes first; then namespaces enter Permissive; then green ones flip, at most BatchSize
// Strict and unverified at once; then soaks end; then, all Verified, the mesh-wide policy
// becomes STRICT and, only once it is, the namespace policies go.
func Next(cfg Config, obs Observed) Plan {
	if cfg.BatchSize < 1 {
		cfg.BatchSize = 1
	}
	if !cfg.Strict {
		return walkBack(obs)
	}
	p := Plan{Blocked: map[string][]Gate{}}
	names := sortedNames(obs.Namespaces)
	strict := 0
	for _, name := range names {
		if obs.Namespaces[name].State.Phase == PhaseStrict {
			strict++
		}
	}
	verified := 0
	for _, name := range names {
		ns := obs.Namespaces[name]
		switch ns.State.Phase {
		case PhaseStrict, PhaseVerified:
			red := ns.red()
			if ns.Gates != nil && (len(red) > 0 || ns.ErrorsRose) {
				reason := describe(red)
				if ns.ErrorsRose {
					reason = strings.TrimPrefix(reason+"; errors rose after the flip", "; ")
				}
				p.revert(name, obs.Now, reason)
				if ns.State.Phase == PhaseStrict {
					strict--
				}
				continue
			}
			if ns.State.Phase == PhaseVerified {
				verified++
				continue
			}
			if end := ns.State.Since.Add(cfg.Soak); ns.Gates != nil && !obs.Now.Before(end) {
				p.Writes = append(p.Writes, Write{Namespace: name, Mode: ModeStrict, State: NamespaceState{Phase: PhaseVerified, Since: obs.Now}})
				strict--
				verified++
			} else if end.After(obs.Now) {
				p.wakeAt(end)
			}
		}
	}
	for _, name := range names {
		ns := obs.Namespaces[name]
		switch ns.State.Phase {
		case PhaseInherit, "":
			if obs.MeshMode == ModeStrict {
				// Already STRICT mesh-wide and nothing of Capstan's here: a namespace that
				// joins a strict mesh has nothing to migrate.
				verified++
				continue
			}
			p.Writes = append(p.Writes, Write{Namespace: name, Mode: ModePermissive, State: NamespaceState{Phase: PhasePermissive, Since: obs.Now}})
		case PhasePermissive:
			if red := ns.red(); ns.Gates == nil || len(red) > 0 {
				if ns.Gates == nil {
					red = []Gate{{Name: "NotEvaluated", Evidence: "its gates have not been checked since the operator started"}}
				}
				p.Blocked[name] = red
				continue
			}
			if !cfg.Immediate && strict >= cfg.BatchSize {
				continue
			}
			p.Writes = append(p.Writes, Write{Namespace: name, Mode: ModeStrict, State: NamespaceState{Phase: PhaseStrict, Since: obs.Now}})
			strict++
		}
	}
	if verified == len(names) && len(p.Writes) == 0 {
		p.finish(obs)
	}
	return p
}

// walkBack plans the way back to PERMISSIVE: Capstan's mesh-wide policy goes first (STRICT
// namespace policies keep every namespace that was strict through it strict meanwhile, so
// none changes unseen), then each namespace policy goes, which leaves Istio's default,
// PERMISSIVE. Loosening needs no gate.
func walkBack(obs Observed) Plan {
	p := Plan{}
	if obs.MeshMode == ModeStrict {
		// Before the mesh-wide policy loosens, the namespaces that were strict through it
		// keep STRICT through their own policy, so none loosens unseen.
		for _, name := range sortedNames(obs.Namespaces) {
			if ph := obs.Namespaces[name].State.Phase; ph == PhaseInherit || ph == "" {
				p.Writes = append(p.Writes, Write{Namespace: name, Mode: ModeStrict, State: NamespaceState{Phase: PhaseVerified, Since: obs.Now}})
			}
		}
		p.Writes = append(p.Writes, Write{Mode: ModeNone})
		return p
	}
	p.removeNamespacePolicies(obs)
	return p
}

// finish makes the mesh-wide policy STRICT, and once it is removes the namespace policies
// it makes redundant.
func (p *Plan) finish(obs Observed) {
	if obs.MeshMode != ModeStrict {
		p.Writes = append(p.Writes, Write{Mode: ModeStrict})
		return
	}
	p.removeNamespacePolicies(obs)
}

// removeNamespacePolicies removes every namespace policy of Capstan's; the plan is done
// when none is left.
func (p *Plan) removeNamespacePolicies(obs Observed) {
	for _, name := range sortedNames(obs.Namespaces) {
		if ph := obs.Namespaces[name].State.Phase; ph != PhaseInherit && ph != "" {
			p.Writes = append(p.Writes, Write{Namespace: name, Mode: ModeNone, State: NamespaceState{Phase: PhaseInherit, Since: obs.Now}})
		}
	}
	p.Done = len(p.Writes) == 0
}

func (p *Plan) revert(name string, now time.Time, reason string) {
	p.Writes = append(p.Writes, Write{Namespace: name, Mode: ModePermissive, State: NamespaceState{Phase: PhasePermissive, Since: now, Reason: reason}})
}

func (p *Plan) wakeAt(t time.Time) {
	if p.Wake.IsZero() || t.Before(p.Wake) {
		p.Wake = t
	}
}

// describe lists red gates with their evidence.
func describe(gates []Gate) string {
	parts := make([]string, len(gates))
	for i, g := range gates {
		parts[i] = fmt.Sprintf("%s: %s", g.Name, g.Evidence)
	}
	return strings.Join(parts, "; ")
}

func sortedNames(m map[string]Namespace) []string { return slices.Sorted(maps.Keys(m)) }
