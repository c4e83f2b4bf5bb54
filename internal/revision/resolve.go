// Package revision knows which control-plane revision injects which pods, and which
// revisions are in use. It reads labels and annotations the way Istio's injection webhooks
// select (the istio-discovery chart's MutatingWebhookConfiguration), and it is pure: the
// data plane's status and, later, the pruning of old revisions both come from here, so
// they can never disagree.
package revision

import (
	"encoding/json"
	"maps"
	"slices"
)

// Labels and annotations Istio's injection reads and writes.
const (
	// InjectionLabel on a namespace: "enabled" selects the default revision, "disabled"
	// turns injection off whatever else says.
	InjectionLabel = "istio-injection"
	// RevLabel on a namespace or pod names a revision or a revision tag.
	RevLabel = "istio.io/rev"
	// InjectLabel on a pod: "false" always wins; "true" asks the default revision to
	// inject a pod in a namespace that selects none.
	InjectLabel = "sidecar.istio.io/inject"
	// StatusAnnotation is what the injector writes on every pod it injects: JSON whose
	// "revision" names the revision that injected it.
	StatusAnnotation = "sidecar.istio.io/status"
	// DefaultTag is the tag istio-injection=enabled (and a pod's inject=true) follows.
	DefaultTag = "default"
)

// Resolver resolves labels to revisions, given what the control plane runs.
type Resolver struct {
	// Revisions are the revisions whose istiod is installed. An in-place control plane
	// has the one revision "default".
	Revisions []string
	// Tags map a revision tag to the revision it points at. The tag "default", when set,
	// is what istio-injection=enabled follows; otherwise that is the revision "default".
	Tags map[string]string
}

// Via says which selector chose a pod's injector.
type Via string

// The selectors of Istio's injection webhooks, in the order they are tried.
const (
	ViaNone         Via = ""
	ViaNamespaceOff Via = "namespace istio-injection=disabled"
	ViaPodOff       Via = "pod sidecar.istio.io/inject=false"
	ViaNamespace    Via = "namespace istio-injection=enabled"
	ViaNamespaceRev Via = "namespace istio.io/rev"
	ViaPodRev       Via = "pod istio.io/rev"
	ViaPodInject    Via = "pod sidecar.istio.io/inject=true"
)

// Target is the revision that injects a new pod, and why.
type Target struct {
	// Revision is the revision whose webhook injects the pod, tags resolved; empty when no
	// webhook does.
	Revision string
	// Name is the revision or tag the labels name (equal to Revision without a tag).
	Name string
	Via  Via
	// Missing: the labels name a revision or tag that does not exist, so no webhook
	// selects the pod, though its owner asked for a sidecar.
	Missing bool
}

// Injects says whether a webhook injects the pod.
func (t Target) Injects() bool { return t.Revision != "" }

// Resolve is the revision Istio would inject a new pod with, in a namespace with
// nsLabels, with podLabels of its own. It follows the webhooks' selectors: a namespace's
// istio-injection label wins over its istio.io/rev label, a namespace's labels win over
// the pod's, and sidecar.istio.io/inject=false or istio-injection=disabled always wins.
func (r Resolver) Resolve(nsLabels, podLabels map[string]string) Target {
	if podLabels[InjectLabel] == "false" {
		return Target{Via: ViaPodOff}
	}
	injection, hasInjection := nsLabels[InjectionLabel]
	nsRev, hasNSRev := nsLabels[RevLabel]
	switch {
	case hasInjection && injection == "enabled":
		return r.target(DefaultTag, ViaNamespace)
	case hasInjection:
		// Any other value (disabled, or a typo) stops every webhook: they all require the
		// label to be absent or "enabled".
		return Target{Via: ViaNamespaceOff}
	case hasNSRev:
		return r.target(nsRev, ViaNamespaceRev)
	}
	if rev, ok := podLabels[RevLabel]; ok {
		return r.target(rev, ViaPodRev)
	}
	if podLabels[InjectLabel] == "true" {
		return r.target(DefaultTag, ViaPodInject)
	}
	return Target{}
}

// target resolves a revision or tag name selected via a selector.
func (r Resolver) target(name string, via Via) Target {
	t := Target{Name: name, Via: via}
	if rev, ok := r.Tags[name]; ok && slices.Contains(r.Revisions, rev) {
		t.Revision = rev
		return t
	}
	if slices.Contains(r.Revisions, name) {
		t.Revision = name
		return t
	}
	t.Missing = true
	return t
}

// InjectedBy is the revision that injected a pod, from its annotations; "" when it
// carries no sidecar. ok is false when the status annotation is there but cannot be read:
// the pod has a sidecar of an unknown revision.
func InjectedBy(annotations map[string]string) (rev string, ok bool) {
	raw, found := annotations[StatusAnnotation]
	if !found {
		return "", true
	}
	var st struct {
		Revision string `json:"revision"`
	}
	if err := json.Unmarshal([]byte(raw), &st); err != nil {
		return "", false
	}
	if st.Revision == "" {
		// Istio before revisions wrote no revision: only the default one injected then.
		return DefaultTag, true
	}
	return st.Revision, true
}

// Pod is what the resolver reads of a pod: its metadata and whether it has terminated.
type Pod struct {
	Namespace   string
	Labels      map[string]string
	Annotations map[string]string
	// Terminated: the pod's phase is Succeeded or Failed; it runs no proxy.
	Terminated bool
}

// Usage is how much one revision is in use.
type Usage struct {
	// Pods are the pods carrying the revision's sidecar that have not terminated.
	Pods int
	// Namespaces are the namespaces whose labels select the revision for new pods.
	Namespaces int
	// Tags are the revision tags pointing at the revision.
	Tags []string
}

// InUse says whether anything uses the revision.
func (u Usage) InUse() bool { return u.Pods > 0 || u.Namespaces > 0 || len(u.Tags) > 0 }

// Uses is the use of every revision. Unknown is set when some use cannot be told (a pod
// whose injection status cannot be read, or pods not known at all): then no revision may
// be taken for unused.
type Uses struct {
	ByRevision map[string]Usage
	Unknown    bool
	// UnknownReason says why, for status.
	UnknownReason string
}

// Unused says whether rev is known to be unused: false while any use is unknown.
func (u Uses) Unused(rev string) bool {
	return !u.Unknown && !u.ByRevision[rev].InUse()
}

// InUse counts, for every revision, the pods carrying its sidecar that have not
// terminated (a pending one is about to run it), the
// namespaces whose labels select it, and the tags pointing at it. Terminated pods keep no
// revision; pods injected through sidecar.istio.io/inject do. namespaces maps a
// namespace's name to its labels.
func (r Resolver) InUse(namespaces map[string]map[string]string, pods []Pod) Uses {
	u := Uses{ByRevision: map[string]Usage{}}
	for _, rev := range r.Revisions {
		u.ByRevision[rev] = Usage{}
	}
	for _, tag := range slices.Sorted(maps.Keys(r.Tags)) {
		use := u.ByRevision[r.Tags[tag]]
		use.Tags = append(use.Tags, tag)
		u.ByRevision[r.Tags[tag]] = use
	}
	for _, name := range slices.Sorted(maps.Keys(namespaces)) {
		if t := r.Resolve(namespaces[name], nil); t.Injects() && t.Via != ViaNone {
			use := u.ByRevision[t.Revision]
			use.Namespaces++
			u.ByRevision[t.Revision] = use
		}
	}
	for _, p := range pods {
		if p.Terminated {
			continue
		}
		rev, ok := InjectedBy(p.Annotations)
		if !ok {
			u.Unknown = true
			u.UnknownReason = "a pod in namespace " + p.Namespace + " has a " + StatusAnnotation + " annotation that cannot be read"
			continue
		}
		if rev == "" {
			continue
		}
		use := u.ByRevision[rev]
		use.Pods++
		u.ByRevision[rev] = use
	}
	return u
}
