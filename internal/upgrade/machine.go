// Package upgrade is the canary upgrade's migration as a pure state machine: which
// namespaces move to the new revision in which batch, when a batch is done, when it has
// failed and is moved back, when the revision tags move, and what an abort undoes.
//
// The machine is level-based: Next looks at the persisted State and at what is observed
// of the cluster, and returns the next State and at most one action. Every action is
// idempotent and asked for again until the cluster shows it done, so the controller may
// persist the State first and act second, and a crash between any two steps resumes the
// same batch from the cluster and the State alone. It is pure: no client, no clock (the
// time is observed), no logging.
package upgrade

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Config is spec.upgrade.canary.
type Config struct {
	// BatchSize is how many namespaces move at once; below 1 is 1.
	BatchSize int
	// ReadinessTimeout is how long a batch's pods have to be Ready on the new revision.
	ReadinessTimeout time.Duration
	// PauseBetweenBatches is the least time between one batch being done and the next
	// starting.
	PauseBetweenBatches time.Duration
	// AutoPromote goes on after the first batch without waiting for a promote request.
	AutoPromote bool
	// RollbackOnFailure moves a failed batch back to the old revision.
	RollbackOnFailure bool
}

// Phase is where the migration stands.
type Phase string

// The phases. Complete, Failed and Aborted are final: the upgrade they end is over.
const (
	// PhaseWaiting: the new revision is being installed, or a pre-upgrade check fails.
	PhaseWaiting Phase = "WaitingForRevision"
	// PhaseMigrating: a batch is moving, or the next waits for pauseBetweenBatches.
	PhaseMigrating Phase = "Migrating"
	// PhaseAwaitingPromotion: the first batch is done; the rest wait for a promote request.
	PhaseAwaitingPromotion Phase = "AwaitingPromotion"
	// PhasePromoting: every batch is done; the revision tags move to the new revision.
	PhasePromoting Phase = "Promoting"
	// PhaseRollingBack: namespaces move back to the old revision, after a failure or an
	// abort.
	PhaseRollingBack Phase = "RollingBack"
	// PhaseComplete: every namespace and tag is on the new revision.
	PhaseComplete Phase = "Complete"
	// PhaseFailed: a batch failed; it was moved back (or left, without rollbackOnFailure),
	// and the old revision stays the active one.
	PhaseFailed Phase = "Failed"
	// PhaseAborted: an abort moved every migrated namespace back.
	PhaseAborted Phase = "Aborted"
)

// Final says whether p ends the upgrade.
func (p Phase) Final() bool {
	return p == PhaseComplete || p == PhaseFailed || p == PhaseAborted
}

// State is the persisted state of one upgrade.
type State struct {
	Phase Phase
	// From and To are the old and the new revision.
	From, To string
	// StartedAt is when the upgrade began; promote and abort requests older than it are
	// not for it.
	StartedAt time.Time
	// Namespaces are the namespaces to migrate, in batch order, fixed when the upgrade
	// began.
	Namespaces []string
	// Batch is the index of the batch in progress, or of the next one while none is.
	Batch int
	// BatchStartedAt is when batch Batch began moving; zero while it has not.
	BatchStartedAt time.Time
	// BatchDoneAt is when the last batch was done; pauseBetweenBatches counts from it.
	BatchDoneAt time.Time
	// RollBack are the namespaces a rollback moves back; Aborting says it is an abort's.
	RollBack []string
	Aborting bool
	// Failure says what failed, naming the namespace and the workload.
	Failure string
	// HandledPromote and HandledAbort are the last requests acted upon.
	HandledPromote, HandledAbort time.Time
}

// Start is the state of an upgrade from one revision to another that begins now, over the
// namespaces that select the old revision (sorted by name: the order the status shows).
func Start(from, to string, namespaces []string, now time.Time) State {
	ns := slices.Clone(namespaces)
	slices.Sort(ns)
	return State{Phase: PhaseWaiting, From: from, To: to, StartedAt: now, Namespaces: slices.Compact(ns)}
}

// Namespace is what is observed of one namespace of the upgrade.
type Namespace struct {
	// Revision is the revision the namespace's labels select now.
	Revision string
	// Pods are its running pods that should carry a sidecar, and Ready those of them that
	// are Ready with a current sidecar of Revision.
	Pods, Ready int
	// Waiting names its workloads not yet Ready on Revision (restarting, or queued), for
	// the message; Failing those that crash-loop or whose restart failed, with why.
	Waiting, Failing []string
}

// done says whether every pod of the namespace is Ready on rev.
func (n Namespace) done(rev string) bool {
	return n.Revision == rev && n.Ready == n.Pods && len(n.Failing) == 0
}

// Observed is what the controller sees of the cluster.
type Observed struct {
	Now time.Time
	// ToReady and FromReady: the revision's istiod is available, its injection webhook
	// answers and it has loaded the mesh CA.
	ToReady, FromReady bool
	// Blocked names a pre-upgrade check that fails (a proxy too old for the new version, the
	// CA not ready, another long operation under way); "" when every check passes.
	Blocked string
	// Tags is the revision the revision tags point at.
	Tags string
	// Namespaces holds every namespace of State.Namespaces; a missing one was deleted and
	// counts as done.
	Namespaces map[string]Namespace
	// PromoteRequestedAt and AbortRequestedAt are spec.upgrade's request fields.
	PromoteRequestedAt, AbortRequestedAt time.Time
}

// ActionKind is the kind of write an action asks for.
type ActionKind int

// The actions.
const (
	// ActionNone: nothing to write now.
	ActionNone ActionKind = iota
	// ActionMove: label Action.Namespaces for Action.Revision and restart their workloads
	// onto it (the data plane's restarts do, once the namespaces are labelled).
	ActionMove
	// ActionMoveTags: point the revision tags at Action.Revision.
	ActionMoveTags
)

// Action is at most one write.
type Action struct {
	Kind       ActionKind
	Namespaces []string
	Revision   string
}

// Step is what Next decides.
type Step struct {
	State  State
	Action Action
	// Wake is when time alone changes the decision; zero when only a change does.
	Wake time.Time
	// Message says where the upgrade stands, for status.
	Message string
}

// Next is the migration's one step from st, given what is observed.
func Next(cfg Config, st State, obs Observed) Step {
	if cfg.BatchSize < 1 {
		cfg.BatchSize = 1
	}
	m := machine{cfg: cfg, obs: obs, st: st}
	m.step()
	return Step{State: m.st, Action: m.action, Wake: m.wake, Message: m.msg}
}

type machine struct {
	cfg    Config
	obs    Observed
	st     State
	action Action
	wake   time.Time
	msg    string
}

// step runs the phases until one of them waits or asks for an action: each transition
// that needs no write is taken at once. Each phase's handler says whether the state moved
// on (run again) or waits.
func (m *machine) step() {
	for range 16 { // every phase moves forward; a bound against a mistake
		if m.abortRequested() {
			continue
		}
		var again bool
		switch m.st.Phase {
		case PhaseWaiting:
			again = m.waiting()
		case PhaseMigrating:
			again = m.migrating()
		case PhaseAwaitingPromotion:
			again = m.awaitingPromotion()
		case PhasePromoting:
			again = m.promoting()
		case PhaseRollingBack:
			again = m.rollingBack()
		default:
			m.msg = m.final()
			return
		}
		if !again || m.action.Kind != ActionNone {
			return
		}
	}
}

// abortRequested starts an abort when a new abort request arrived before the upgrade is
// over: every namespace that began moving goes back, and the tags too.
func (m *machine) abortRequested() bool {
	req := m.obs.AbortRequestedAt
	if m.st.Phase.Final() || req.IsZero() || !req.After(m.st.HandledAbort) || req.Before(m.st.StartedAt) {
		return false
	}
	m.st.HandledAbort = req
	m.st.RollBack = m.started()
	m.st.Aborting = true
	m.st.Failure = "aborted by spec.upgrade.abort at " + formatTime(req)
	m.st.Phase = PhaseRollingBack
	return true
}

// started are the namespaces of every batch that began moving.
func (m *machine) started() []string {
	end := m.st.Batch
	if !m.st.BatchStartedAt.IsZero() || m.st.Phase == PhasePromoting {
		end++
	}
	return m.namespacesOf(0, end)
}

func (m *machine) batches() int {
	return (len(m.st.Namespaces) + m.cfg.BatchSize - 1) / m.cfg.BatchSize
}

// namespacesOf are the namespaces of batches [from, to).
func (m *machine) namespacesOf(from, to int) []string {
	lo, hi := min(from*m.cfg.BatchSize, len(m.st.Namespaces)), min(to*m.cfg.BatchSize, len(m.st.Namespaces))
	return m.st.Namespaces[lo:hi]
}

func (m *machine) waiting() bool {
	switch {
	case !m.obs.ToReady:
		m.msg = fmt.Sprintf("waiting for revision %s to be Ready", m.st.To)
		return false
	case m.obs.Blocked != "":
		m.msg = "the upgrade waits: " + m.obs.Blocked
		return false
	}
	m.st.Phase, m.st.Batch = PhaseMigrating, 0
	return true
}

func (m *machine) migrating() bool {
	if m.st.Batch >= m.batches() {
		m.st.Phase = PhasePromoting
		return true
	}
	batch := m.namespacesOf(m.st.Batch, m.st.Batch+1)
	if m.st.BatchStartedAt.IsZero() {
		if m.st.Batch > 0 {
			if next := m.st.BatchDoneAt.Add(m.cfg.PauseBetweenBatches); m.obs.Now.Before(next) {
				m.msg = fmt.Sprintf("batch %d of %d starts at %s (pauseBetweenBatches)", m.st.Batch+1, m.batches(), formatTime(next))
				m.wake = next
				return false
			}
		}
		m.st.BatchStartedAt = m.obs.Now
	}
	if moving := m.notOn(batch, m.st.To); len(moving) > 0 {
		m.action = Action{Kind: ActionMove, Namespaces: moving, Revision: m.st.To}
		m.msg = fmt.Sprintf("batch %d of %d: moving %s to revision %s", m.st.Batch+1, m.batches(), strings.Join(moving, ", "), m.st.To)
		return false
	}
	waiting, failing := m.progress(batch, m.st.To)
	deadline := m.st.BatchStartedAt.Add(m.cfg.ReadinessTimeout)
	switch {
	case len(failing) > 0:
		m.fail(batch, strings.Join(failing, "; "))
	case len(waiting) > 0 && !m.obs.Now.Before(deadline):
		m.fail(batch, fmt.Sprintf("%s not Ready on revision %s within readinessTimeout %s", strings.Join(waiting, "; "), m.st.To, m.cfg.ReadinessTimeout))
	case len(waiting) > 0:
		m.msg = fmt.Sprintf("batch %d of %d: waiting for %s to be Ready on revision %s", m.st.Batch+1, m.batches(), strings.Join(waiting, "; "), m.st.To)
		m.wake = deadline
		return false
	default:
		m.st.BatchDoneAt, m.st.BatchStartedAt = m.obs.Now, time.Time{}
		m.st.Batch++
		switch {
		case m.st.Batch >= m.batches():
			m.st.Phase = PhasePromoting
		case m.st.Batch == 1 && !m.cfg.AutoPromote:
			m.st.Phase = PhaseAwaitingPromotion
		}
	}
	return true
}

// fail ends the batch in failure: moved back with rollbackOnFailure, left where it is
// without.
func (m *machine) fail(batch []string, why string) {
	m.st.Failure = fmt.Sprintf("batch %d of %d failed: %s", m.st.Batch+1, m.batches(), why)
	if m.cfg.RollbackOnFailure {
		m.st.RollBack, m.st.Phase = slices.Clone(batch), PhaseRollingBack
		return
	}
	m.st.Phase = PhaseFailed
}

func (m *machine) awaitingPromotion() bool {
	req := m.obs.PromoteRequestedAt
	if req.IsZero() || !req.After(m.st.HandledPromote) || req.Before(m.st.StartedAt) {
		m.msg = fmt.Sprintf("the first batch runs on revision %s; set spec.upgrade.promote to move the other %d batches", m.st.To, m.batches()-1)
		return false
	}
	m.st.HandledPromote = req
	// A promotion is the user's go-ahead: the pause is not waited for again.
	m.st.BatchDoneAt = time.Time{}
	m.st.Phase = PhaseMigrating
	return true
}

func (m *machine) promoting() bool {
	switch {
	case m.obs.Tags == m.st.To:
		m.st.Phase = PhaseComplete
		return true
	case !m.obs.ToReady:
		m.msg = fmt.Sprintf("every namespace runs on revision %s; the tags move once it is Ready", m.st.To)
	default:
		m.action = Action{Kind: ActionMoveTags, Revision: m.st.To}
		m.msg = fmt.Sprintf("moving the revision tags to %s", m.st.To)
	}
	return false
}

func (m *machine) rollingBack() bool {
	if m.obs.Tags != "" && m.obs.Tags != m.st.From {
		if !m.obs.FromReady {
			m.msg = fmt.Sprintf("rolling back: the tags move back once revision %s is Ready", m.st.From)
			return false
		}
		m.action = Action{Kind: ActionMoveTags, Revision: m.st.From}
		m.msg = "rolling back: moving the revision tags back to " + m.st.From
		return false
	}
	if moving := m.notOn(m.st.RollBack, m.st.From); len(moving) > 0 {
		m.action = Action{Kind: ActionMove, Namespaces: moving, Revision: m.st.From}
		m.msg = fmt.Sprintf("rolling back %s to revision %s", strings.Join(moving, ", "), m.st.From)
		return false
	}
	waiting, failing := m.progress(m.st.RollBack, m.st.From)
	if len(waiting)+len(failing) > 0 {
		m.msg = fmt.Sprintf("rolling back: waiting for %s to be Ready on revision %s", strings.Join(append(waiting, failing...), "; "), m.st.From)
		return false
	}
	m.st.Phase = PhaseFailed
	if m.st.Aborting {
		m.st.Phase = PhaseAborted
	}
	return true
}

// notOn are the namespaces of names whose labels do not select rev yet.
func (m *machine) notOn(names []string, rev string) []string {
	var out []string
	for _, n := range names {
		if ns, ok := m.obs.Namespaces[n]; ok && ns.Revision != rev {
			out = append(out, n)
		}
	}
	return out
}

// progress says which namespaces of names still wait for pods Ready on rev, and which
// have failing workloads, each with the evidence.
func (m *machine) progress(names []string, rev string) (waiting, failing []string) {
	for _, n := range names {
		ns, ok := m.obs.Namespaces[n]
		switch {
		case !ok || ns.done(rev):
		case len(ns.Failing) > 0:
			failing = append(failing, fmt.Sprintf("namespace %s: %s", n, strings.Join(ns.Failing, ", ")))
		case len(ns.Waiting) > 0:
			waiting = append(waiting, fmt.Sprintf("namespace %s (%d of %d pods Ready; waiting for %s)", n, ns.Ready, ns.Pods, strings.Join(ns.Waiting, ", ")))
		default:
			waiting = append(waiting, fmt.Sprintf("namespace %s (%d of %d pods Ready)", n, ns.Ready, ns.Pods))
		}
	}
	return waiting, failing
}

func (m *machine) final() string {
	switch m.st.Phase {
	case PhaseComplete:
		return fmt.Sprintf("upgraded from revision %s to %s", m.st.From, m.st.To)
	case PhaseFailed, PhaseAborted:
		return fmt.Sprintf("revision %s stays active: %s", m.st.From, m.st.Failure)
	}
	return "no upgrade"
}

// Progress is the upgrade in figures, for status: batches done of all, and the namespaces
// of the batch in progress (at most max of them).
func Progress(cfg Config, st State, max int) (done, total int, current []string) {
	if cfg.BatchSize < 1 {
		cfg.BatchSize = 1
	}
	m := machine{cfg: cfg, st: st}
	total = m.batches()
	done = min(st.Batch, total)
	if st.Phase == PhaseMigrating && !st.BatchStartedAt.IsZero() {
		current = m.namespacesOf(st.Batch, st.Batch+1)
	}
	if st.Phase == PhaseRollingBack {
		current = st.RollBack
	}
	return done, total, slices.Clone(current[:min(len(current), max)])
}

func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// Assigned is the revision the upgrade has put namespace ns on, and whether it has one
// for it: a namespace of a batch that began moving is on the new revision, one a rollback
// moved back (or every one, after an abort) on the old; false for a namespace that is not
// the upgrade's, or whose batch has not begun. The namespaces' labels are written from
// this alone, so that they follow the persisted State and nothing else.
func Assigned(cfg Config, st State, ns string) (string, bool) {
	if cfg.BatchSize < 1 {
		cfg.BatchSize = 1
	}
	i := slices.Index(st.Namespaces, ns)
	if i < 0 || st.Phase == PhaseWaiting || st.Phase == "" {
		return "", false
	}
	switch {
	case st.Phase == PhaseAborted, st.Phase == PhaseRollingBack && st.Aborting, slices.Contains(st.RollBack, ns):
		return st.From, true
	case st.Phase == PhasePromoting, st.Phase == PhaseComplete:
		return st.To, true
	}
	m := machine{cfg: cfg, st: st}
	if slices.Contains(m.started(), ns) {
		return st.To, true
	}
	return "", false
}
