// Package dataplane is the pure core of Capstan's data plane: which pods carry a sidecar,
// which sidecars are stale, how many of each (counted incrementally, one pod event at a
// time), and the plan that restarts stale workloads one by one, resumable from annotations
// on the workloads alone.
//
// Which revision injects a pod is internal/revision's answer; this package only adds the
// version and proxy settings that an in-place upgrade changes under an unchanged revision
// name. It is pure: no client, no clock (the current time is passed in), no logging.
package dataplane

import (
	"github.com/capstan-mesh/capstan/internal/revision"
)

// Annotations the injector stamps on every pod it injects: Capstan sets them in the
// istiod chart's sidecarInjectorWebhook.injectedAnnotations of each revision, so that a
// metadata-only pod watch tells a current sidecar from a stale one.
const (
	// ProxyVersionAnnotation is the Istio version of the revision that injected the pod.
	ProxyVersionAnnotation = "capstan.dev/proxy-version"
	// ProxyConfigAnnotation is a short hash of the proxy settings the pod was injected with.
	ProxyConfigAnnotation = "capstan.dev/proxy-config"
)

// Pod is what a metadata-only pod informer tells of a pod.
type Pod struct {
	Namespace, Name     string
	Labels, Annotations map[string]string
	// OwnerKind and OwnerName name the workload that owns the pod: its controller owner,
	// with a ReplicaSet already resolved to the Deployment that owns it. Empty for a pod no
	// controller owns.
	OwnerKind, OwnerName string
	// Terminated: the pod's phase is Succeeded or Failed; it runs no proxy.
	Terminated bool
}

// Stamp is what a revision's injector stamps on the pods it injects now.
type Stamp struct {
	Version     string
	ProxyConfig string
}

// Desired is the data plane as declared: which revision injects which pods, and what each
// installed revision stamps on them.
type Desired struct {
	Resolver revision.Resolver
	// Stamps hold, for each installed revision, its version and proxy-config hash. Each
	// revision has its own (during a canary the old one keeps its older version); a revision
	// with no entry is compared by revision name only.
	Stamps map[string]Stamp
}

// Reason says why a sidecar is stale.
type Reason string

// The reasons a sidecar is stale, most important first: that order ranks a workload whose
// pods are stale for several reasons, and the first two are the upgrades that the
// OnUpgrade policy restarts.
const (
	// RevisionChanged: another revision injected the pod than the one its labels select now.
	RevisionChanged Reason = "RevisionChanged"
	// VersionChanged: its revision now runs another Istio version (an in-place upgrade).
	VersionChanged Reason = "VersionChanged"
	// UnreadableStatus: its sidecar.istio.io/status annotation cannot be read, so nobody
	// can tell which revision injected it.
	UnreadableStatus Reason = "UnreadableStatus"
	// Unstamped: the pod carries no version or proxy-config stamp; it was injected before
	// Capstan configured the injector, so nothing tells that its sidecar is current. It is
	// counted stale, with this reason of its own; only the Always policy restarts it.
	Unstamped Reason = "Unstamped"
	// ProxyConfigChanged: same revision and version, other proxy settings.
	ProxyConfigChanged Reason = "ProxyConfigChanged"
)

// reasons lists every Reason, most important first.
var reasons = [...]Reason{RevisionChanged, VersionChanged, UnreadableStatus, Unstamped, ProxyConfigChanged}

// upgrade says whether r is a version or revision change: what OnUpgrade restarts.
func (r Reason) upgrade() bool { return r == RevisionChanged || r == VersionChanged }

// Stale says whether the pod's sidecar is stale, in a namespace with nsLabels, and why.
//
// A pod with no sidecar is never stale (it is uninjected), nor is a terminated pod. Nor
// is a sidecar when no webhook would inject a new pod of the same labels, whether the
// namespace left the mesh or names a revision that does not exist: a restart would take
// the sidecar away, which is not Capstan's to decide (the missing revision is reported on
// its namespace instead).
func Stale(p Pod, nsLabels map[string]string, d Desired) (bool, Reason) {
	st := d.evaluate(nsLabels, metaOf(p))
	return st.reason != "", st.reason
}

// podMeta is the part of a Pod the counts keep: only the labels and annotations that
// injection reads, so that memory stays small on clusters with many pods.
type podMeta struct {
	// selectors are the pod's istio.io/rev and sidecar.istio.io/inject labels; nil when it
	// has neither, as most pods.
	selectors             map[string]string
	injected              string // the revision that injected the pod; "" when it has no sidecar
	unreadable            bool   // it has a sidecar whose status cannot be read
	version, config       string
	hasVersion, hasConfig bool
	workload              WorkloadRef
	terminated            bool
}

func metaOf(p Pod) podMeta {
	m := podMeta{workload: WorkloadOf(p), terminated: p.Terminated, selectors: only(p.Labels, revision.RevLabel, revision.InjectLabel)}
	rev, ok := revision.InjectedBy(p.Annotations)
	m.injected, m.unreadable = rev, !ok
	m.version, m.hasVersion = p.Annotations[ProxyVersionAnnotation]
	m.config, m.hasConfig = p.Annotations[ProxyConfigAnnotation]
	return m
}

// sidecar says whether the pod carries a sidecar.
func (m podMeta) sidecar() bool { return m.injected != "" || m.unreadable }

// podState is what one pod that has not terminated adds to the counts.
type podState struct {
	counted    bool   // not terminated
	injectedBy string // the revision whose sidecar it runs, when readable
	sidecar    bool
	uninjected bool   // no sidecar in a meshed namespace, and not opted out
	reason     Reason // why it is stale; "" when it is not
	target     string // the revision a restart would inject it with
}

// evaluate is the state of one pod in a namespace with nsLabels.
func (d Desired) evaluate(nsLabels map[string]string, m podMeta) podState {
	if m.terminated {
		return podState{}
	}
	t := d.Resolver.Resolve(nsLabels, m.selectors)
	st := podState{counted: true, sidecar: m.sidecar(), target: t.Revision}
	if !m.unreadable {
		st.injectedBy = m.injected
	}
	switch {
	case !st.sidecar:
		st.uninjected = meshed(d.Resolver.Resolve(nsLabels, nil)) && t.Via != revision.ViaPodOff
	case !t.Injects():
	case m.unreadable:
		st.reason = UnreadableStatus
	case m.injected != t.Revision:
		st.reason = RevisionChanged
	default:
		st.reason = d.stampReason(t.Revision, m)
	}
	return st
}

// stampReason compares a pod injected by rev, rev's injector still selecting it, with
// what rev stamps now. Evidence of another version comes first; a missing stamp next.
func (d Desired) stampReason(rev string, m podMeta) Reason {
	want, ok := d.Stamps[rev]
	switch {
	case !ok:
		return ""
	case m.hasVersion && m.version != want.Version:
		return VersionChanged
	case !m.hasVersion || !m.hasConfig:
		return Unstamped
	case m.config != want.ProxyConfig:
		return ProxyConfigChanged
	}
	return ""
}

// meshed says whether a namespace's own labels ask for sidecars, whether or not the
// revision they name exists.
func meshed(nsTarget revision.Target) bool {
	return nsTarget.Via == revision.ViaNamespace || nsTarget.Via == revision.ViaNamespaceRev
}

// targetOf is what a restart for rev aims at, as the restart state records it:
// "revision/version/proxy-config".
func (d Desired) targetOf(rev string) string {
	s := d.Stamps[rev]
	return rev + "/" + s.Version + "/" + s.ProxyConfig
}

// only is the entries of m under keys; nil when there is none, as for most objects.
func only(m map[string]string, keys ...string) map[string]string {
	var out map[string]string
	for _, k := range keys {
		if v, ok := m[k]; ok {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = v
		}
	}
	return out
}
