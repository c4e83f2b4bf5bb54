// Package render turns Istio's charts and a set of values into Kubernetes objects with the
// Helm v4 SDK. It renders only: no release storage and no cluster access, so a chart or
// values error is found before anything is written.
package render

import (
	"bytes"
	"compress/flate"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"sync"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/loader/archive"
	chartv2 "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"
	"istio.io/istio/manifests"

	"github.com/capstan-mesh/capstan/internal/apply"
	"github.com/capstan-mesh/capstan/internal/version"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// Component is one of Istio's charts that Capstan installs.
type Component struct {
	// Name labels the component's objects in the inventory and names its Helm release.
	Name string
	// Chart is the chart's directory in istio.io/istio/manifests.
	Chart string
	// ValueKeys, when set, are the only top-level values the chart's templates read, so the
	// chart is rendered with those alone: a spec change elsewhere (istiod's replicas, say)
	// then finds the chart's render in the memo. A test keeps the list complete. Nil means
	// every value (the istiod chart writes all of them into a ConfigMap).
	ValueKeys []string
	// ReuseParsed keeps the parsed form of the chart's documents across renders (see
	// parsed): for a chart that re-renders on most spec changes, from mostly the same text.
	ReuseParsed bool
}

// The components whose charts Capstan installs; later issues add gateways and node agents.
var (
	Base = Component{Name: "base", Chart: "charts/base", ValueKeys: []string{
		"_internal_defaults_do_not_set", "base", "compatibilityVersion", "defaultRevision",
		"defaults", "experimental", "global", "platform", "profile",
	}}
	Istiod = Component{Name: "istiod", Chart: "charts/istio-control/istio-discovery", ReuseParsed: true}
)

// ChartSource is where the charts of one Istio minor release come from. Capstan embeds the
// charts of one minor (the istio.io/istio/manifests module it is built with); an image
// could carry more in a directory, each behind this interface.
type ChartSource interface {
	// Minor is the Istio minor release the charts belong to, such as "1.31".
	Minor() string
	// FS holds the charts, each in its Component.Chart directory.
	FS() fs.FS
}

// embedded is the chart source built into Capstan.
type embedded struct{}

func (embedded) Minor() string {
	major, minor, _, _ := version.Parse(version.Embedded)
	return fmt.Sprintf("%d.%d", major, minor)
}

func (embedded) FS() fs.FS { return manifests.BuiltinOrDir("") }

// SourceFor returns the charts that install Istio v (x.y.z): the embedded ones for every
// patch of the embedded minor release; an error naming the supported releases otherwise.
func SourceFor(v string) (ChartSource, error) {
	if err := version.Supported(v); err != nil {
		return nil, err
	}
	return embedded{}, nil
}

// Object is a rendered object and the component that rendered it.
//
// Of a CustomResourceDefinition only apiVersion, kind and metadata are decoded into
// Unstructured: Capstan judges a CRD's drift by its metadata alone (see
// apply.MetadataDrift), and decoding the schemas of Istio's CRDs, most of a render's
// bytes, for every reconcile cost more CPU and garbage than everything else the reconcile
// did. JSON gives the whole object, and Full decodes it.
type Object struct {
	Component string
	*unstructured.Unstructured
	// body is the whole object's JSON when Unstructured holds only its metadata.
	body []byte
}

// Partial says whether Unstructured holds only the object's apiVersion, kind and metadata.
func (o Object) Partial() bool { return o.body != nil }

// JSON is the whole object as JSON: what to apply.
func (o Object) JSON() ([]byte, error) {
	if o.body != nil {
		return o.body, nil
	}
	return o.MarshalJSON()
}

// Full is the whole object, decoded; the caller owns it.
func (o Object) Full() (*unstructured.Unstructured, error) {
	if o.body == nil {
		return o.DeepCopy(), nil
	}
	u := &unstructured.Unstructured{}
	return u, u.UnmarshalJSON(o.body)
}

// decodedAsMetadata says of which kinds a remembered render decodes only the metadata.
func decodedAsMetadata(gvk schema.GroupVersionKind) bool {
	return gvk.Group == "apiextensions.k8s.io" && gvk.Kind == "CustomResourceDefinition"
}

// Input is everything the render of one unit depends on.
type Input struct {
	// Component is the chart to render, from Source.
	Component Component
	// Source holds the charts of the unit's Istio version.
	Source    ChartSource
	Values    map[string]any
	Namespace string
	// KubeVersion is the server's version (for example v1.37.1), given to the charts as
	// .Capabilities.KubeVersion, as helm install would.
	KubeVersion string
	// Revision is the control-plane revision the objects are labelled with (see
	// apply.Stamp); empty for a unit every revision shares, such as base.
	Revision string
}

// memoName is the name a unit's renders are remembered under: one list per unit, so that
// the renders of one revision's istiod never evict another's, nor base's.
func (in Input) memoName() string {
	if in.Revision == "" {
		return in.Component.Name
	}
	return in.Component.Name + "/" + in.Revision
}

// loadChart reads a component's chart out of istio.io/istio/manifests. Charts are loaded
// for each render rather than kept: loading takes about a millisecond, renders are
// remembered (see memo), and a loaded chart holds over a megabyte for the operator's life.
func loadChart(c Component, src ChartSource) (*chartv2.Chart, error) {
	ch, err := load(src.FS(), c.Chart)
	if err != nil {
		return nil, fmt.Errorf("loading the Istio %s chart %s: %w", src.Minor(), c.Chart, err)
	}
	return ch, nil
}

// load reads one chart directory out of an fs.FS.
func load(fsys fs.FS, dir string) (*chartv2.Chart, error) {
	var files []*archive.BufferedFile
	err := fs.WalkDir(fsys, dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		files = append(files, &archive.BufferedFile{Name: strings.TrimPrefix(p, dir+"/"), Data: data})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return loader.LoadFiles(files)
}

// Render renders one unit's chart with in.Values and returns its objects in apply order,
// stamped with Capstan's inventory labels and configuration hash (apply.Stamp).
// Rendering Istio's charts costs a few hundred milliseconds of CPU (mostly YAML: the CRDs
// pass through the base chart's fromYaml), so each unit's renders of the last few inputs
// are kept: a reconcile of an unchanged spec, as every drift repair is, renders nothing,
// and a change to istiod's settings renders only the istiod chart. The caller owns the
// returned objects.
func Render(in Input) ([]Object, error) {
	if in.Source == nil {
		return nil, fmt.Errorf("chart %s: no chart source", in.Component.Name)
	}
	caps := common.DefaultCapabilities.Copy()
	if in.KubeVersion != "" {
		kv, err := common.ParseKubeVersion(in.KubeVersion)
		if err != nil {
			return nil, fmt.Errorf("server version %q: %w", in.KubeVersion, err)
		}
		caps.KubeVersion = *kv
	}
	c := in.Component
	in.Values = c.values(in.Values)
	name := in.memoName()
	key, err := in.key()
	if err != nil {
		return nil, err
	}
	objs, ok := memo.get(name, c.Name, key)
	if !ok {
		if objs, err = renderComponent(c, in, caps); err != nil {
			return nil, err
		}
		memo.put(name, key, objs)
		// Served from what was remembered, so that a fresh render and a remembered one
		// give the same objects (CRDs as metadata).
		if remembered, ok := memo.get(name, c.Name, key); ok {
			objs = remembered
		}
	}
	slices.SortStableFunc(objs, func(a, b Object) int { return applyRank(a) - applyRank(b) })
	return objs, nil
}

// renderComponent renders and stamps one chart. The objects are stamped before they are
// remembered: hashing every object is a good part of the cost of a render, and a
// remembered render is served many times.
func renderComponent(c Component, in Input, caps *common.Capabilities) ([]Object, error) {
	ch, err := loadChart(c, in.Source)
	if err != nil {
		return nil, err
	}
	objs, err := renderChart(ch, c, in, caps)
	if err != nil {
		return nil, err
	}
	inv := apply.Inventory{Component: c.Name, Revision: in.Revision, Writer: apply.WriterInstall}
	for _, o := range objs {
		apply.Stamp(o.Unstructured, inv)
	}
	return objs, nil
}

// values picks the values a component's chart reads.
func (c Component) values(all map[string]any) map[string]any {
	if c.ValueKeys == nil {
		return all
	}
	out := map[string]any{}
	for _, k := range c.ValueKeys {
		if v, ok := all[k]; ok {
			out[k] = v
		}
	}
	return out
}

func renderChart(ch *chartv2.Chart, c Component, in Input, caps *common.Capabilities) ([]Object, error) {
	opts := common.ReleaseOptions{Name: c.Name, Namespace: in.Namespace, Revision: 1, IsInstall: true}
	vals, err := renderValues(ch, copyValues(in.Values), opts, caps)
	if err != nil {
		return nil, fmt.Errorf("chart %s: values: %w", c.Name, err)
	}
	files, err := engine.Render(ch, vals)
	if err != nil {
		return nil, fmt.Errorf("chart %s: %w", c.Name, err)
	}
	names := make([]string, 0, len(files))
	for name := range files {
		if base := path.Base(name); strings.HasSuffix(base, ".txt") || strings.HasPrefix(base, "_") {
			continue
		}
		names = append(names, name)
	}
	slices.Sort(names)
	var out []Object
	for _, name := range names {
		docs := releaseutil.SplitManifests(files[name])
		keys := make([]string, 0, len(docs))
		for k := range docs {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, compareManifestKeys)
		for _, k := range keys {
			doc := bytes.TrimSpace([]byte(docs[k]))
			if len(doc) == 0 {
				continue
			}
			u, err := parseDoc(doc, c.ReuseParsed)
			if err != nil {
				return nil, fmt.Errorf("chart %s: %s: %w", c.Name, name, err)
			}
			if u == nil {
				continue // a template that rendered only comments
			}
			if u.GetKind() == "" || u.GetName() == "" {
				return nil, fmt.Errorf("chart %s: %s: object without kind or name", c.Name, name)
			}
			kind, ok := Lookup(u.GroupVersionKind())
			if !ok {
				return nil, fmt.Errorf("chart %s: %s renders %s %q, a kind Capstan does not manage", c.Name, name, u.GroupVersionKind(), u.GetName())
			}
			if kind.Namespaced && u.GetNamespace() == "" {
				u.SetNamespace(in.Namespace)
			}
			if !kind.Namespaced {
				u.SetNamespace("")
			}
			out = append(out, Object{Component: c.Name, Unstructured: u})
		}
	}
	return out, nil
}

// compareManifestKeys orders SplitManifests' "manifest-N" keys numerically, keeping the
// documents of one template in their written order.
func compareManifestKeys(a, b string) int {
	if len(a) != len(b) {
		return len(a) - len(b)
	}
	return strings.Compare(a, b)
}

func copyValues(v map[string]any) map[string]any {
	if v == nil {
		return map[string]any{}
	}
	// Helm merges chart defaults into the map it is given; render from a copy so the
	// caller's values stay as they were.
	return runtime.DeepCopyJSON(v)
}

// key identifies a unit's input: equal keys render equal objects.
func (in Input) key() (string, error) {
	b, err := json.Marshal(in.Values) // map keys marshal sorted, so this is canonical
	if err != nil {
		return "", fmt.Errorf("values: %w", err)
	}
	h := sha256.New()
	h.Write(b)
	fmt.Fprintf(h, "\x00%s\x00%s\x00%s\x00%s\x00%s", in.Component.Name, in.Source.Minor(), in.Namespace, in.KubeVersion, in.Revision)
	return string(h.Sum(nil)), nil
}

// memo keeps each unit's renders of the last few inputs, as compressed JSON: Istio's CRDs
// are a megabyte of JSON and a tenth of that compressed, and inflating and decoding cost
// far less than rendering. Each unit has its own list, so that renders of one unit
// (istiod's, on every spec change) never evict another's (base, whose CRDs take several
// times longer to render).
var memo = &renderMemo{}

// memoSize is how many renders of each unit are kept.
const memoSize = 2

type renderMemo struct {
	mu     sync.Mutex
	charts map[string][]memoEntry // by unit (Input.memoName), most recent last
}

// memoEntry is one render: its objects' JSON, one after another, compressed; ends[i] is
// where object i's JSON ends in the inflated text.
type memoEntry struct {
	key      string
	deflated []byte
	ends     []int
	// headOnly[i]: object i is served with only its head decoded (decodedAsMetadata).
	headOnly []bool
}

// get is the unit's remembered render for key, its objects labelled with component.
func (m *renderMemo) get(unit, component, key string) ([]Object, bool) {
	m.mu.Lock()
	var e memoEntry
	found := false
	for _, x := range m.charts[unit] {
		if x.key == key {
			e, found = x, true
		}
	}
	m.mu.Unlock()
	if !found {
		return nil, false
	}
	size := 0
	if len(e.ends) > 0 {
		size = e.ends[len(e.ends)-1]
	}
	// Room for all of it up front: ReadFrom would otherwise double the buffer a few times.
	var inflated bytes.Buffer
	inflated.Grow(size + bytes.MinRead)
	if _, err := inflated.ReadFrom(flate.NewReader(bytes.NewReader(e.deflated))); err != nil {
		return nil, false // it was compressed here, so this does not happen
	}
	text := inflated.Bytes()
	out := make([]Object, len(e.ends))
	start := 0
	for i, end := range e.ends {
		o, err := decodeObject(text[start:end:end], e.headOnly[i])
		if err != nil {
			return nil, false
		}
		o.Component = component
		out[i] = o
		start = end
	}
	return out, true
}

// objectHead is what is decoded of an object kept as its JSON body (see Object).
type objectHead struct {
	APIVersion string         `json:"apiVersion"`
	Kind       string         `json:"kind"`
	Metadata   map[string]any `json:"metadata"`
}

// decodeObject decodes one remembered object: all of it, or with headOnly only its head,
// keeping its JSON as the body.
func decodeObject(js []byte, headOnly bool) (Object, error) {
	if headOnly {
		var head objectHead
		// The head decodes the way unstructured objects do (integers stay int64); the
		// skipped fields cost a scan of their bytes, without allocating.
		if err := kjson.UnmarshalCaseSensitivePreserveInts(js, &head); err != nil {
			return Object{}, err
		}
		u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": head.APIVersion, "kind": head.Kind, "metadata": head.Metadata}}
		return Object{Unstructured: u, body: js}, nil
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(js); err != nil {
		return Object{}, err
	}
	return Object{Unstructured: u}, nil
}

// put remembers one unit's render.
func (m *renderMemo) put(unit, key string, objs []Object) {
	var text bytes.Buffer
	ends := make([]int, len(objs))
	headOnly := make([]bool, len(objs))
	for i, o := range objs {
		b, err := o.JSON()
		if err != nil {
			return
		}
		text.Write(b)
		ends[i] = text.Len()
		headOnly[i] = decodedAsMetadata(o.GroupVersionKind())
	}
	var deflated bytes.Buffer
	w, _ := flate.NewWriter(&deflated, flate.BestSpeed) // only an invalid level fails
	if _, err := w.Write(text.Bytes()); err != nil || w.Close() != nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.charts == nil {
		m.charts = map[string][]memoEntry{}
	}
	entries := m.charts[unit]
	for _, e := range entries {
		if e.key == key {
			return
		}
	}
	if len(entries) == memoSize {
		entries = slices.Delete(entries, 0, 1)
	}
	m.charts[unit] = append(entries, memoEntry{key: key, deflated: slices.Clip(deflated.Bytes()), ends: ends, headOnly: headOnly})
}

// parsed remembers the JSON of parsed documents by their YAML text. Most of the istiod
// chart's YAML is the same from one spec to the next (the injection templates above all),
// YAML parsing is most of a render's cost, and decoding JSON is several times cheaper.
var parsed = &docCache{}

// docCacheSize bounds the documents kept: a few renders' worth.
const docCacheSize = 64

type docCache struct {
	mu   sync.Mutex
	docs map[[sha256.Size]byte][]byte
}

// parseDoc turns one YAML document into an object the caller owns; nil for an empty
// document. With reuse, the JSON of a document seen before comes from parsed. Fields are
// not judged here: the apiserver does, strictly, on every apply (see the controller's
// applyOne), by the schema it serves rather than by the types Capstan was compiled with.
func parseDoc(doc []byte, reuse bool) (*unstructured.Unstructured, error) {
	var js []byte
	var key [sha256.Size]byte
	if reuse {
		key = sha256.Sum256(doc)
		js = parsed.get(key)
	}
	seen := js != nil
	if !seen {
		var err error
		if js, err = yaml.YAMLToJSON(doc); err != nil {
			return nil, err
		}
	}
	if string(js) == "null" || string(js) == "{}" {
		return nil, nil
	}
	// UnmarshalJSON keeps integers as int64, as the apiserver's own objects have them.
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(js); err != nil {
		return nil, err
	}
	if !seen && reuse {
		parsed.put(key, js)
	}
	return u, nil
}

// get is the JSON of the document whose YAML has the SHA-256 key; nil if not kept.
func (c *docCache) get(key [sha256.Size]byte) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.docs[key]
}

func (c *docCache) put(key [sha256.Size]byte, js []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.docs == nil || len(c.docs) >= docCacheSize {
		c.docs = map[[sha256.Size]byte][]byte{}
	}
	c.docs[key] = js
}
