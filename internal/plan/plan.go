// Package plan turns a MeshControlPlane spec into the units of its control plane: each a
// component at a revision, in a namespace, from the charts of one Istio version. Every
// unit is rendered on its own, and Capstan prunes only within a unit. It is pure: no
// client, no clock.
package plan

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"maps"
	"slices"
	"strings"

	"golang.org/x/sync/errgroup"
	"helm.sh/helm/v4/pkg/chart/v2/loader"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/internal/apply"
	"github.com/capstan-mesh/capstan/internal/dataplane"
	"github.com/capstan-mesh/capstan/internal/render"
	"github.com/capstan-mesh/capstan/internal/values"
	"github.com/capstan-mesh/capstan/internal/version"
)

// Unit is one part of the control plane that is rendered, applied and pruned on its own.
type Unit struct {
	// Component is the chart the unit renders.
	Component render.Component
	// Revision is the control-plane revision of a per-revision unit (istiod); empty for a
	// unit every revision shares (base).
	Revision string
	// Namespace is where the unit's namespaced objects go.
	Namespace string
	// Version is the Istio version (x.y.z) the unit installs, and Source its charts.
	Version string
	Source  render.ChartSource
	// Values are the chart values of the unit.
	Values values.Values
}

// Key is the unit's inventory identity: the component and revision its objects are
// labelled with.
func (u Unit) Key() apply.Unit {
	return apply.Unit{Component: u.Component.Name, Revision: u.Revision}
}

// Input is what the render of the unit needs besides the server's version.
func (u Unit) Input(kubeVersion string) render.Input {
	return render.Input{Component: u.Component, Source: u.Source, Values: u.Values, Namespace: u.Namespace, KubeVersion: kubeVersion, Revision: u.Revision}
}

// Plan is the control plane a spec declares.
type Plan struct {
	// Namespace is the control-plane namespace.
	Namespace string
	// Version is the declared Istio version.
	Version string
	// Revision is the active revision: the one namespaces are labelled for, and
	// apply.DefaultRevision for an in-place control plane.
	Revision string
	// Layout is the revisions the plan installs, and where the tags point.
	Layout Revisions
	// Units are the units, in the order they are installed: shared units first, then one
	// istiod per revision, sorted by revision.
	Units []Unit
	// Stamps are, for each revision, what its injector stamps on every pod it injects (the
	// Istio version and a hash of the proxy settings), so that a stale sidecar can be told
	// from a current one by the pod's metadata alone.
	Stamps map[string]dataplane.Stamp
}

// For plans the control plane spec declares, given what is installed (Installed{} for a
// new control plane). A spec whose values cannot be built (a version Capstan cannot
// install, raw values that are not an object, a key Capstan owns, a switch to InPlace with
// other revisions running) is a *values.FieldError naming the field.
func For(spec *meshv1.MeshControlPlaneSpec, in Installed) (Plan, error) {
	p := Plan{Namespace: values.Namespace(spec), Version: spec.Version}
	if p.Version == "" {
		p.Version = version.Embedded
	}
	if _, err := values.For(spec); err != nil {
		return Plan{}, err
	}
	l, err := LayoutFor(spec, in)
	if err != nil {
		return Plan{}, err
	}
	p.Layout, p.Revision = l, l.Active
	p.Stamps = map[string]dataplane.Stamp{}
	var newest string
	var istiods []Unit
	for _, rev := range slices.Sorted(maps.Keys(l.Versions)) {
		v := l.Versions[rev]
		shared, src, err := sharedValues(spec, v)
		if err != nil {
			return Plan{}, err
		}
		stamp := dataplane.Stamp{Version: v, ProxyConfig: proxyConfigHash(shared)}
		p.Stamps[rev] = stamp
		vals := stamped(revisionValues(shared, rev), stamp)
		if tags := l.Tags[rev]; len(tags) > 0 {
			list := make([]any, len(tags)) // values are JSON: a list is []any
			for i, t := range tags {
				list[i] = t
			}
			vals["revisionTags"] = list
		}
		istiods = append(istiods, Unit{Component: render.Istiod, Revision: rev, Namespace: p.Namespace, Version: v, Source: src, Values: vals})
		if newest == "" || version.Less(newest, v) {
			newest = v
		}
	}
	// Base (the CRDs and the default validator) is shared: rendered once, from the newest
	// charts installed, whose CRDs every older revision of the same minor reads, with the
	// default validator pointing at the active revision.
	shared, src, err := sharedValues(spec, newest)
	if err != nil {
		return Plan{}, err
	}
	if l.Active != apply.DefaultRevision {
		shared = maps.Clone(shared)
		shared["defaultRevision"] = l.Active
	}
	p.Units = append([]Unit{{Component: render.Base, Namespace: p.Namespace, Version: newest, Source: src, Values: shared}}, istiods...)
	return p, nil
}

// sharedValues are the values of spec with the Istio version v, and the charts of v.
func sharedValues(spec *meshv1.MeshControlPlaneSpec, v string) (values.Values, render.ChartSource, error) {
	at := *spec
	at.Version = v
	shared, err := values.For(&at)
	if err != nil {
		return nil, nil, err
	}
	src, err := render.SourceFor(v)
	if err != nil {
		return nil, nil, &values.FieldError{Field: "spec.version", Detail: err.Error()}
	}
	return shared, src, nil
}

// stamped are istiod's values with the injector told to stamp stamp on every pod it
// injects (sidecarInjectorWebhook.injectedAnnotations); annotations the user asks for
// there in spec.values stay, beside Capstan's.
func stamped(v values.Values, stamp dataplane.Stamp) values.Values {
	return loader.MergeMaps(v, values.Values{"sidecarInjectorWebhook": values.Values{"injectedAnnotations": values.Values{
		dataplane.ProxyVersionAnnotation: stamp.Version,
		dataplane.ProxyConfigAnnotation:  stamp.ProxyConfig,
	}}})
}

// proxyValues are the values the injection template reads to build a pod's proxy: a
// change to any of them changes the sidecar that new pods get.
var proxyValues = [][]string{
	{"global", "proxy"}, {"global", "proxy_init"}, {"global", "hub"}, {"global", "tag"},
	{"global", "variant"}, {"global", "imagePullPolicy"}, {"global", "imagePullSecrets"},
	{"global", "logging"}, {"global", "logAsJson"}, {"global", "sds"},
	{"meshConfig", "defaultConfig"}, {"sidecarInjectorWebhook"},
	{"pilot", "env", "ENABLE_NATIVE_SIDECARS"},
}

// proxyConfigHash digests the proxy settings of v (proxyValues), for the proxy-config
// stamp. Capstan's own stamp is left out, or the hash would depend on itself.
func proxyConfigHash(v values.Values) string {
	picked := map[string]any{}
	for _, path := range proxyValues {
		cur := any(v)
		for _, k := range path {
			m, _ := cur.(map[string]any)
			cur = m[k]
		}
		if m, ok := cur.(map[string]any); ok && path[0] == "sidecarInjectorWebhook" {
			m = maps.Clone(m)
			if ann, ok := m["injectedAnnotations"].(map[string]any); ok {
				ann = maps.Clone(ann)
				delete(ann, dataplane.ProxyVersionAnnotation)
				delete(ann, dataplane.ProxyConfigAnnotation)
				m["injectedAnnotations"] = ann
			}
			cur = m
		}
		if cur != nil {
			picked[strings.Join(path, ".")] = cur
		}
	}
	b, _ := json.Marshal(picked) // values came from JSON; map keys marshal sorted
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6])
}

// revisionValues are the values of a unit at revision: the istiod chart names its objects
// after the `revision` value, which only Capstan sets (spec.values may not), and which is
// empty for the default revision.
func revisionValues(shared values.Values, revision string) values.Values {
	if revision == "" || revision == apply.DefaultRevision {
		return shared
	}
	v := maps.Clone(shared)
	v["revision"] = revision
	return v
}

// Render renders every unit, side by side (the charts are independent), and returns all
// their objects in one apply order: objects of one rank go together, whatever their unit.
// Nothing is returned unless every unit renders.
func (p Plan) Render(kubeVersion string) ([]render.Object, error) {
	rendered := make([][]render.Object, len(p.Units))
	var g errgroup.Group
	for i, u := range p.Units {
		g.Go(func() (err error) {
			rendered[i], err = render.Render(u.Input(kubeVersion))
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	var out []render.Object
	for _, objs := range rendered {
		out = append(out, objs...)
	}
	slices.SortStableFunc(out, func(a, b render.Object) int {
		return render.Rank(a.GroupVersionKind()) - render.Rank(b.GroupVersionKind())
	})
	return out, nil
}

// Warm renders the units of the stored MeshControlPlane (nil when there is none), which
// render's memo then holds: the charts are loaded and proved to render before the first
// reconcile, which finds its renders ready. A spec that does not render (the
// controller reports why) is replaced by the empty spec, so the proof stands. A server
// version of "" renders as Helm's default.
func Warm(kubeVersion string, mcp *meshv1.MeshControlPlane) error {
	if mcp != nil {
		if p, err := For(&mcp.Spec, InstalledFrom(&mcp.Status)); err == nil {
			if _, err := p.Render(kubeVersion); err == nil {
				return nil
			}
		}
	}
	p, err := For(&meshv1.MeshControlPlaneSpec{}, Installed{})
	if err != nil {
		return err
	}
	_, err = p.Render(kubeVersion)
	return err
}
