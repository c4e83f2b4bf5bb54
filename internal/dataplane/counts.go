package dataplane

import (
	"cmp"
	"fmt"
	"maps"
	"slices"

	"github.com/capstan-mesh/capstan/internal/revision"
)

// Counts keeps the data plane's numbers as pod and namespace events arrive, so that status
// never needs a list of all pods: a pod event costs O(1), a namespace's label change costs
// O(its pods), and only a change of the desired state re-evaluates every pod. It keeps of
// each pod only the few labels and annotations injection reads.
//
// Pods are keyed by namespace and name, as an informer's store keys them. Counts is not
// safe for concurrent use.
type Counts struct {
	desired    Desired
	namespaces map[string]*nsEntry
	workloads  map[WorkloadRef]*group
	sum        Summary
	// revPods and revNamespaces count, per revision, the pods carrying its sidecar
	// and the namespaces whose labels select it.
	revPods, revNamespaces map[string]int
	// versions counts the sidecars by the Istio version stamped on them.
	versions   map[string]int
	unreadable int
	// evaluations counts pod evaluations, for the tests that hold events to their cost.
	evaluations int
}

// Summary is the data plane at a glance, for status.injection.
type Summary struct {
	// MeshedNamespaces are the namespaces whose labels ask for sidecars, including those
	// naming a revision that does not exist (their pods then stay uninjected).
	MeshedNamespaces int
	// InjectedPods are the pods that carry a sidecar, in any namespace. Here and below,
	// a pod counts until it terminates: pending pods carry the sidecar they will run.
	InjectedPods int
	// UninjectedPods are the pods without a sidecar in meshed namespaces, except
	// those that opted out with sidecar.istio.io/inject=false.
	UninjectedPods int
	// StalePods are the pods whose sidecar is stale.
	StalePods int
}

// StaleWorkload is a workload with stale pods, as the restart plan takes it.
type StaleWorkload struct {
	WorkloadRef
	// Pods are its stale pods.
	Pods int
	// Reason is the most important reason among its pods.
	Reason Reason
	// Target is what a restart now aims at, "revision/version/proxy-config": a restart is
	// not repeated for the same target.
	Target string
}

// MissingRevision is a namespace whose labels name a revision or tag that does not exist:
// no webhook injects its new pods.
type MissingRevision struct {
	Namespace string
	// Name is the revision or tag its labels name.
	Name string
	// Pods are its pods without a sidecar.
	Pods int
}

type nsEntry struct {
	// labels are the namespace's injection labels (all the resolver reads of them); known
	// says the namespace was seen.
	labels map[string]string
	known  bool
	// target is what the namespace's own labels select.
	target     revision.Target
	uninjected int
	pods       map[string]*podEntry
}

type podEntry struct {
	meta podMeta
	st   podState
}

// group is what a workload's stale pods add up to.
type group struct {
	pods    int
	reasons [len(reasons)]int
	targets map[string]int // target revision ──► pods
}

// NewCounts is an empty Counts for the desired state d.
func NewCounts(d Desired) *Counts {
	return &Counts{
		desired:       d,
		namespaces:    map[string]*nsEntry{},
		workloads:     map[WorkloadRef]*group{},
		revPods:       map[string]int{},
		revNamespaces: map[string]int{},
		versions:      map[string]int{},
	}
}

// SetDesired changes the desired state (revisions, tags, stamps) and re-evaluates every
// namespace and pod: the one operation that costs O(all pods).
func (c *Counts) SetDesired(d Desired) {
	c.desired = d
	for _, e := range c.namespaces {
		c.relabel(e, e.labels, e.known)
	}
}

// SetNamespace records a namespace's labels, when it is added or they change; only its
// own pods are re-evaluated.
func (c *Counts) SetNamespace(name string, labels map[string]string) {
	c.relabel(c.namespace(name), only(labels, revision.InjectionLabel, revision.RevLabel), true)
}

// RemoveNamespace forgets a deleted namespace's labels; its pods count as in an unknown,
// unlabelled namespace until their own deletions arrive.
func (c *Counts) RemoveNamespace(name string) {
	if e, ok := c.namespaces[name]; ok {
		c.relabel(e, nil, false)
		c.dropIfEmpty(name, e)
	}
}

// Add records a pod, or replaces the pod of the same namespace and name.
func (c *Counts) Add(p Pod) {
	e := c.namespace(p.Namespace)
	if old, ok := e.pods[p.Name]; ok {
		c.apply(e, old, -1)
	}
	pe := &podEntry{meta: metaOf(p)}
	pe.st = c.evaluate(e, pe.meta)
	e.pods[p.Name] = pe
	c.apply(e, pe, 1)
}

// Update records a change of a pod.
func (c *Counts) Update(old, updated Pod) {
	if old.Namespace != updated.Namespace || old.Name != updated.Name {
		c.Remove(old)
	}
	c.Add(updated)
}

// Remove forgets a deleted pod; a pod it does not know is ignored.
func (c *Counts) Remove(p Pod) {
	e, ok := c.namespaces[p.Namespace]
	if !ok {
		return
	}
	if pe, ok := e.pods[p.Name]; ok {
		c.apply(e, pe, -1)
		delete(e.pods, p.Name)
		c.dropIfEmpty(p.Namespace, e)
	}
}

// Summary is the counts of status.injection.
func (c *Counts) Summary() Summary { return c.sum }

// Uses is every revision's use, as revision.Resolver.InUse counts it from a list of all
// namespaces and pods, without the list: what status.revisions and the pruning of old
// revisions read. Use is Unknown while any sidecar's revision cannot be read; the caller
// must also not trust it before its informers have synced.
func (c *Counts) Uses() revision.Uses {
	u := c.desired.Resolver.InUse(nil, nil) // the revisions and their tags
	for rev, n := range c.revNamespaces {
		use := u.ByRevision[rev]
		use.Namespaces = n
		u.ByRevision[rev] = use
	}
	for rev, n := range c.revPods {
		use := u.ByRevision[rev]
		use.Pods = n
		u.ByRevision[rev] = use
	}
	if c.unreadable > 0 {
		u.Unknown = true
		u.UnknownReason = fmt.Sprintf("%d pods have a %s annotation that cannot be read", c.unreadable, revision.StatusAnnotation)
	}
	return u
}

// StaleWorkloads are the workloads with stale pods, ordered by namespace, kind and name.
func (c *Counts) StaleWorkloads() []StaleWorkload {
	out := make([]StaleWorkload, 0, len(c.workloads))
	for ref, g := range c.workloads {
		w := StaleWorkload{WorkloadRef: ref, Pods: g.pods}
		for i, n := range g.reasons {
			if n > 0 {
				w.Reason = reasons[i]
				break
			}
		}
		// Pods of one workload share a target but in a moment of change: take the one most
		// of them have.
		best := ""
		for _, rev := range slices.Sorted(maps.Keys(g.targets)) {
			if best == "" || g.targets[rev] > g.targets[best] {
				best = rev
			}
		}
		w.Target = c.desired.targetOf(best)
		out = append(out, w)
	}
	slices.SortFunc(out, func(a, b StaleWorkload) int { return compareRefs(a.WorkloadRef, b.WorkloadRef) })
	return out
}

// Namespace is what the counts hold of one namespace: whether it exists (as far as its
// informer has told), the revision its labels select ("" when none), and its pods that
// should carry that revision's sidecar (running or pending, not opted out), of which
// current are those that do, current and not stale. It costs O(pods of the namespace).
func (c *Counts) Namespace(name string) (known bool, rev string, pods, current int) {
	e, ok := c.namespaces[name]
	if !ok {
		return false, "", 0, 0
	}
	for _, pe := range e.pods {
		st := pe.st
		if !st.counted || (!st.sidecar && !st.uninjected) {
			continue
		}
		pods++
		if st.sidecar && st.reason == "" {
			current++
		}
	}
	return e.known, e.target.Revision, pods, current
}

// ProxyVersions counts the running sidecars by the Istio version stamped on them (pods
// injected before Capstan stamped them are not counted).
func (c *Counts) ProxyVersions() map[string]int { return maps.Clone(c.versions) }

// MissingRevisions are the namespaces whose labels name a revision or tag that does not
// exist, ordered by name.
func (c *Counts) MissingRevisions() []MissingRevision {
	var out []MissingRevision
	for name, e := range c.namespaces {
		if e.known && e.target.Missing {
			out = append(out, MissingRevision{Namespace: name, Name: e.target.Name, Pods: e.uninjected})
		}
	}
	slices.SortFunc(out, func(a, b MissingRevision) int { return cmp.Compare(a.Namespace, b.Namespace) })
	return out
}

func (c *Counts) namespace(name string) *nsEntry {
	e, ok := c.namespaces[name]
	if !ok {
		e = &nsEntry{pods: map[string]*podEntry{}}
		c.namespaces[name] = e
	}
	return e
}

func (c *Counts) dropIfEmpty(name string, e *nsEntry) {
	if !e.known && len(e.pods) == 0 {
		delete(c.namespaces, name)
	}
}

// relabel gives a namespace new labels and re-evaluates its pods.
func (c *Counts) relabel(e *nsEntry, labels map[string]string, known bool) {
	c.applyNamespace(e, -1)
	for _, pe := range e.pods {
		c.apply(e, pe, -1)
	}
	e.labels, e.known = labels, known
	e.target = c.desired.Resolver.Resolve(labels, nil)
	c.applyNamespace(e, 1)
	for _, pe := range e.pods {
		pe.st = c.evaluate(e, pe.meta)
		c.apply(e, pe, 1)
	}
}

func (c *Counts) evaluate(e *nsEntry, m podMeta) podState {
	c.evaluations++
	return c.desired.evaluate(e.labels, m)
}

// applyNamespace adds (sign 1) or takes away (-1) what a namespace's labels count for.
func (c *Counts) applyNamespace(e *nsEntry, sign int) {
	if !e.known {
		return
	}
	if meshed(e.target) {
		c.sum.MeshedNamespaces += sign
	}
	if e.target.Injects() {
		add(c.revNamespaces, e.target.Revision, sign)
	}
}

// apply adds (sign 1) or takes away (-1) what one pod counts for.
func (c *Counts) apply(e *nsEntry, pe *podEntry, sign int) {
	st := pe.st
	if !st.counted {
		return
	}
	if st.sidecar {
		c.sum.InjectedPods += sign
		if pe.meta.hasVersion {
			add(c.versions, pe.meta.version, sign)
		}
	}
	if st.injectedBy != "" {
		add(c.revPods, st.injectedBy, sign)
	}
	if pe.meta.unreadable {
		c.unreadable += sign
	}
	if st.uninjected {
		c.sum.UninjectedPods += sign
		e.uninjected += sign
	}
	if st.reason == "" {
		return
	}
	c.sum.StalePods += sign
	g, ok := c.workloads[pe.meta.workload]
	if !ok {
		g = &group{targets: map[string]int{}}
		c.workloads[pe.meta.workload] = g
	}
	g.pods += sign
	g.reasons[slices.Index(reasons[:], st.reason)] += sign
	add(g.targets, st.target, sign)
	if g.pods == 0 {
		delete(c.workloads, pe.meta.workload)
	}
}

// add adds n to m[k], and forgets k at zero.
func add(m map[string]int, k string, n int) {
	if m[k] += n; m[k] == 0 {
		delete(m, k)
	}
}

// CompareRefs orders workloads by namespace, kind and name.
func CompareRefs(a, b WorkloadRef) int { return compareRefs(a, b) }

func compareRefs(a, b WorkloadRef) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Name, b.Name))
}

// TopReason is the most important reason among the workloads' stale pods, what the
// SidecarsCurrent condition names; "" when none is stale.
func TopReason(ws []StaleWorkload) Reason {
	top := len(reasons)
	for _, w := range ws {
		if i := slices.Index(reasons[:], w.Reason); i >= 0 && i < top {
			top = i
		}
	}
	if top == len(reasons) {
		return ""
	}
	return reasons[top]
}
