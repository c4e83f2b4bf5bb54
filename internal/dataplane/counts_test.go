package dataplane

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/capstan-mesh/capstan/internal/revision"
)

// recount is what the counts must say, counted from scratch from every namespace and pod,
// and from definitions written independently of Counts' own.
type recount struct {
	sum       Summary
	workloads []StaleWorkload
	missing   []MissingRevision
	uses      revision.Uses
	// versions are the sidecars by stamped version; perNamespace what Counts.Namespace
	// says of each namespace: pods that should carry a sidecar, and the current ones.
	versions     map[string]int
	perNamespace map[string][2]int
}

func recountAll(d Desired, namespaces map[string]map[string]string, pods map[string]Pod) recount {
	r := recount{versions: map[string]int{}, perNamespace: map[string][2]int{}}
	meshedNS := func(l map[string]string) bool {
		v, ok := l[revision.InjectionLabel]
		_, rev := l[revision.RevLabel]
		return v == "enabled" || (!ok && rev)
	}
	for _, l := range namespaces {
		if meshedNS(l) {
			r.sum.MeshedNamespaces++
		}
	}
	type agg struct {
		pods    int
		top     int
		targets map[string]int
	}
	groups := map[WorkloadRef]*agg{}
	uninjectedIn := map[string]int{}
	var list []revision.Pod
	for _, p := range pods {
		list = append(list, revision.Pod{Namespace: p.Namespace, Labels: p.Labels, Annotations: p.Annotations, Terminated: p.Terminated})
		if p.Terminated {
			continue
		}
		nsl := namespaces[p.Namespace]
		stale, reason := Stale(p, nsl, d)
		n := r.perNamespace[p.Namespace]
		if _, ok := p.Annotations[revision.StatusAnnotation]; ok {
			r.sum.InjectedPods++
			if v, ok := p.Annotations[ProxyVersionAnnotation]; ok {
				r.versions[v]++
			}
			n[0]++
			if !stale {
				n[1]++
			}
		} else if meshedNS(nsl) && p.Labels[revision.InjectLabel] != "false" {
			r.sum.UninjectedPods++
			uninjectedIn[p.Namespace]++
			n[0]++
		}
		r.perNamespace[p.Namespace] = n
		if !stale {
			continue
		}
		r.sum.StalePods++
		g := groups[WorkloadOf(p)]
		if g == nil {
			g = &agg{top: len(reasons), targets: map[string]int{}}
			groups[WorkloadOf(p)] = g
		}
		g.pods++
		g.top = min(g.top, slices.Index(reasons[:], reason))
		g.targets[d.Resolver.Resolve(nsl, p.Labels).Revision]++
	}
	for ref, g := range groups {
		best := ""
		for _, rev := range slices.Sorted(maps.Keys(g.targets)) {
			if best == "" || g.targets[rev] > g.targets[best] {
				best = rev
			}
		}
		r.workloads = append(r.workloads, StaleWorkload{WorkloadRef: ref, Pods: g.pods, Reason: reasons[g.top], Target: d.targetOf(best)})
	}
	slices.SortFunc(r.workloads, func(a, b StaleWorkload) int { return compareRefs(a.WorkloadRef, b.WorkloadRef) })
	for _, name := range slices.Sorted(maps.Keys(namespaces)) {
		if t := d.Resolver.Resolve(namespaces[name], nil); t.Missing {
			r.missing = append(r.missing, MissingRevision{Namespace: name, Name: t.Name, Pods: uninjectedIn[name]})
		}
	}
	r.uses = d.Resolver.InUse(namespaces, list)
	return r
}

// check compares c with a recount and says what differs.
func check(c *Counts, want recount) error {
	if got := c.Summary(); got != want.sum {
		return fmt.Errorf("summary %+v, recount %+v", got, want.sum)
	}
	if got := c.StaleWorkloads(); !slices.Equal(got, want.workloads) {
		return fmt.Errorf("stale workloads %+v, recount %+v", got, want.workloads)
	}
	if got := c.MissingRevisions(); !slices.Equal(got, want.missing) {
		return fmt.Errorf("missing revisions %+v, recount %+v", got, want.missing)
	}
	got := c.Uses()
	if got.Unknown != want.uses.Unknown {
		return fmt.Errorf("uses unknown %t, recount %t", got.Unknown, want.uses.Unknown)
	}
	for _, rev := range slices.Sorted(maps.Keys(want.uses.ByRevision)) {
		g, w := got.ByRevision[rev], want.uses.ByRevision[rev]
		if g.Pods != w.Pods || g.Namespaces != w.Namespaces || !slices.Equal(g.Tags, w.Tags) {
			return fmt.Errorf("revision %s use %+v, recount %+v", rev, g, w)
		}
	}
	for rev, g := range got.ByRevision {
		if _, ok := want.uses.ByRevision[rev]; !ok && g.InUse() {
			return fmt.Errorf("revision %s use %+v, recount none", rev, g)
		}
	}
	if got := c.ProxyVersions(); !maps.Equal(got, want.versions) {
		return fmt.Errorf("proxy versions %v, recount %v", got, want.versions)
	}
	for ns, w := range want.perNamespace {
		if _, _, pods, current := c.Namespace(ns); pods != w[0] || current != w[1] {
			return fmt.Errorf("namespace %s: %d pods, %d current; recount %d, %d", ns, pods, current, w[0], w[1])
		}
	}
	return nil
}

// TestCountsMatchARecountAfterEveryEvent drives Counts with a long random sequence of pod,
// namespace and desired-state events (fixed seed) and, after every one, compares every
// number with a count from scratch: the incremental bookkeeping never drifts.
func TestCountsMatchARecountAfterEveryEvent(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 12))
	pick := func(n int) int { return rng.IntN(n) }
	promoted := canary
	promoted.Resolver.Tags = map[string]string{"default": "1-31-1", "stable": "1-31-1"}
	rotated := canary
	rotated.Stamps = map[string]Stamp{"1-31-0": {"1.31.0", "c0"}, "1-31-1": {"1.31.1", "c2"}}
	desireds := []Desired{canary, promoted, rotated, inPlace}
	nsLabels := []map[string]string{
		nil,
		labels(revision.InjectionLabel, "enabled"),
		labels(revision.InjectionLabel, "disabled"),
		labels(revision.InjectionLabel, "enabled", revision.RevLabel, "canary"),
		labels(revision.RevLabel, "canary"),
		labels(revision.RevLabel, "stable"),
		labels(revision.RevLabel, "1-31-1"),
		labels(revision.RevLabel, "1-30-9"),
		labels(revision.RevLabel, "default"),
	}
	podLabels := []map[string]string{nil, labels(revision.InjectLabel, "false"), labels(revision.InjectLabel, "true"), labels(revision.RevLabel, "canary"), labels("app", "cart")}
	annotations := []map[string]string{
		nil,
		sidecar("1-31-0", "1.31.0", "c0"),
		sidecar("1-31-1", "1.31.1", "c1"),
		sidecar("1-31-1", "1.31.1", "c2"),
		sidecar("1-31-0", "1.30.4", "c0"),
		sidecar("default", "1.31.1", "cA"),
		sidecar("default", "-", "-"),
		{revision.StatusAnnotation: `{"containers":["istio-proxy"]}`},
		{revision.StatusAnnotation: "{"},
	}
	owners := [][2]string{{"Deployment", "cart"}, {"Deployment", "web"}, {"StatefulSet", "db"}, {"Job", "migrate"}, {"", ""}}
	nsNames := []string{"shop", "db", "ops", "new"}
	randomPod := func(ns, name string) Pod {
		o := owners[pick(len(owners))]
		return Pod{Namespace: ns, Name: name, Labels: podLabels[pick(len(podLabels))], Annotations: annotations[pick(len(annotations))],
			OwnerKind: o[0], OwnerName: o[1], Terminated: pick(5) == 0}
	}

	d := canary
	c := NewCounts(d)
	namespaces := map[string]map[string]string{} // the known namespaces' labels
	pods := map[string]Pod{}                     // by namespace/name
	var seen [4]int
	for step := range 3000 {
		ns, name := nsNames[pick(len(nsNames))], fmt.Sprintf("p%d", pick(12))
		key := ns + "/" + name
		var op string
		switch k := pick(20); {
		case k < 8:
			op = "add " + key
			p := randomPod(ns, name)
			c.Add(p)
			pods[key] = p
		case k < 13:
			op = "update " + key
			old, ok := pods[key]
			if !ok {
				old = Pod{Namespace: ns, Name: name}
			}
			p := randomPod(ns, name)
			c.Update(old, p)
			pods[key] = p
		case k < 16:
			op = "remove " + key
			c.Remove(Pod{Namespace: ns, Name: name})
			delete(pods, key)
		case k < 18:
			l := nsLabels[pick(len(nsLabels))]
			op = fmt.Sprintf("label namespace %s %v", ns, l)
			c.SetNamespace(ns, l)
			namespaces[ns] = l
		case k < 19:
			op = "remove namespace " + ns
			c.RemoveNamespace(ns)
			delete(namespaces, ns)
		default:
			d = desireds[pick(len(desireds))]
			op = fmt.Sprintf("desire %v", d.Resolver)
			c.SetDesired(d)
		}
		want := recountAll(d, namespaces, pods)
		if err := check(c, want); err != nil {
			t.Fatalf("step %d (%s): %v", step, op, err)
		}
		seen[0] += min(want.sum.StalePods, 1)
		seen[1] += min(want.sum.UninjectedPods, 1)
		seen[2] += min(len(want.missing), 1)
		if want.uses.Unknown {
			seen[3]++
		}
	}
	if slices.Min(seen[:]) < 100 {
		t.Fatalf("steps with stale pods, uninjected pods, missing revisions, unknown use: %v; the sequence tests too little", seen)
	}
}

// TestEventsCostOnlyTheirPods holds events to their cost: a pod event evaluates that pod
// alone, a namespace's label change only the pods of that namespace.
func TestEventsCostOnlyTheirPods(t *testing.T) {
	c := NewCounts(canary)
	c.SetNamespace("big", labels(revision.InjectionLabel, "enabled"))
	for i := range 1000 {
		c.Add(Pod{Namespace: "big", Name: fmt.Sprint(i), Annotations: sidecar("1-31-0", "1.31.0", "c0"), OwnerKind: "Deployment", OwnerName: "web"})
	}
	c.Add(Pod{Namespace: "small", Name: "a", Annotations: sidecar("1-31-0", "1.31.0", "c0"), OwnerKind: "Deployment", OwnerName: "cart"})
	cost := func(name string, event func(), want int) {
		t.Helper()
		before := c.evaluations
		event()
		if got := c.evaluations - before; got != want {
			t.Errorf("%s evaluated %d pods, want %d", name, got, want)
		}
	}
	cost("adding a pod", func() { c.Add(Pod{Namespace: "big", Name: "new", Annotations: sidecar("1-31-1", "1.31.1", "c1")}) }, 1)
	cost("updating a pod", func() {
		c.Update(Pod{Namespace: "big", Name: "new"}, Pod{Namespace: "big", Name: "new", Annotations: sidecar("1-31-0", "1.31.0", "c0")})
	}, 1)
	cost("removing a pod", func() { c.Remove(Pod{Namespace: "big", Name: "new"}) }, 0)
	cost("relabelling the small namespace", func() { c.SetNamespace("small", labels(revision.RevLabel, "canary")) }, 1)
	if got := c.Summary().StalePods; got != 1 {
		t.Errorf("after moving namespace small to the canary, %d stale pods, want 1", got)
	}
	cost("changing the desired state", func() { c.SetDesired(canary) }, 1001)
}

// TestTerminatedPodsCountNowhere: a pod that has Succeeded or Failed runs no proxy, so it is
// neither injected, uninjected nor stale, and keeps no revision in use; when it is seen
// running again (an update), it counts again.
func TestTerminatedPodsCountNowhere(t *testing.T) {
	c := NewCounts(canary)
	c.SetNamespace("shop", labels(revision.RevLabel, "canary"))
	stale := Pod{Namespace: "shop", Name: "a", Annotations: sidecar("1-31-0", "1.31.0", "c0"), OwnerKind: "Job", OwnerName: "j", Terminated: true}
	bare := Pod{Namespace: "shop", Name: "b", Terminated: true}
	c.Add(stale)
	c.Add(bare)
	if got := c.Summary(); got != (Summary{MeshedNamespaces: 1}) {
		t.Errorf("terminated pods count: %+v", got)
	}
	if u := c.Uses(); u.ByRevision["1-31-0"].Pods != 0 || len(c.StaleWorkloads()) != 0 {
		t.Errorf("a terminated pod keeps revision 1-31-0 in use (%+v) or its Job stale", u.ByRevision["1-31-0"])
	}
	running := stale
	running.Terminated = false
	c.Update(stale, running)
	if got := c.Summary(); got.InjectedPods != 1 || got.StalePods != 1 {
		t.Errorf("the pod running again does not count: %+v", got)
	}
}

// TestCountsFollowTheDesiredState: a promotion (the default tag moved to the new revision)
// makes every pod of the old one stale, grouped by workload with the target a restart aims
// at; a namespace naming a missing revision is reported with its uninjected pods.
func TestCountsFollowTheDesiredState(t *testing.T) {
	c := NewCounts(canary)
	c.SetNamespace("shop", labels(revision.InjectionLabel, "enabled"))
	c.SetNamespace("typo", labels(revision.RevLabel, "1-30-9"))
	for i, owner := range [][2]string{{"Deployment", "cart"}, {"Deployment", "cart"}, {"Job", "migrate"}, {"", ""}} {
		c.Add(Pod{Namespace: "shop", Name: fmt.Sprint(i), Annotations: sidecar("1-31-0", "1.31.0", "c0"), OwnerKind: owner[0], OwnerName: owner[1]})
	}
	c.Add(Pod{Namespace: "shop", Name: "opted-out", Labels: labels(revision.InjectLabel, "false")})
	c.Add(Pod{Namespace: "typo", Name: "x"})
	if got := c.Summary(); got != (Summary{MeshedNamespaces: 2, InjectedPods: 4, UninjectedPods: 1}) {
		t.Fatalf("before the promotion: %+v", got)
	}
	if got, want := c.MissingRevisions(), []MissingRevision{{Namespace: "typo", Name: "1-30-9", Pods: 1}}; !slices.Equal(got, want) {
		t.Errorf("missing revisions %+v, want %+v", got, want)
	}

	promoted := canary
	promoted.Resolver.Tags = map[string]string{"default": "1-31-1"}
	c.SetDesired(promoted)
	want := []StaleWorkload{
		{WorkloadRef{"Deployment", "shop", "cart"}, 2, RevisionChanged, "1-31-1/1.31.1/c1"},
		{WorkloadRef{"Job", "shop", "migrate"}, 1, RevisionChanged, "1-31-1/1.31.1/c1"},
		{WorkloadRef{"Pod", "shop", "3"}, 1, RevisionChanged, "1-31-1/1.31.1/c1"},
	}
	if got := c.StaleWorkloads(); !slices.Equal(got, want) {
		t.Errorf("stale workloads after the promotion:\n%+v\nwant\n%+v", got, want)
	}
	if got := c.Summary().StalePods; got != 4 {
		t.Errorf("%d stale pods after the promotion, want 4", got)
	}
}

// TestTopReason protects the reason SidecarsCurrent names: the most important one present,
// whatever the order of the workloads.
func TestTopReason(t *testing.T) {
	w := func(r Reason) StaleWorkload { return StaleWorkload{Reason: r} }
	for name, tc := range map[string]struct {
		ws   []StaleWorkload
		want Reason
	}{
		"none":                     {nil, ""},
		"one":                      {[]StaleWorkload{w(ProxyConfigChanged)}, ProxyConfigChanged},
		"version before config":    {[]StaleWorkload{w(ProxyConfigChanged), w(VersionChanged), w(Unstamped)}, VersionChanged},
		"revision before anything": {[]StaleWorkload{w(UnreadableStatus), w(RevisionChanged)}, RevisionChanged},
	} {
		if got := TopReason(tc.ws); got != tc.want {
			t.Errorf("%s: TopReason = %q, want %q", name, got, tc.want)
		}
	}
}
