package values

import (
	"slices"
	"strings"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/utils/ptr"
)

// OwnedValue is a Helm value that spec.values may not set, because it decides the names
// or the placement of the objects Capstan installs, or hands some of them to another
// owner. Capstan prunes what a render no longer contains, so such a value does not just
// misconfigure Istio: spec.values {revision: canary} renames every istiod object, and the
// running istiod and its webhook are then pruned.
type OwnedValue struct {
	// Path is where Istio's charts read the value, dotted: global.istioNamespace.
	Path string
	// Type is the JSON type the charts read there (string, boolean, object, or array of
	// strings). The CRD declares the path with it, because CEL sees only the declared
	// fields of spec.values.
	Type string
	// Instead says what to do instead; the refusal is "spec.values.<Path>: <Instead>".
	Instead string
}

// Field is the value's spec field, as refusals name it.
func (o OwnedValue) Field() string { return "spec.values." + o.Path }

// Message is the refusal, at admission and in the Degraded condition alike.
func (o OwnedValue) Message() string { return o.Field() + ": " + o.Instead }

// OwnedValues are the values spec.values may not set, checked against the base and
// istio-control/istio-discovery charts of Istio 1.31 (istio.io/istio/manifests): re-check
// them whenever the embedded charts change. Refused are the values that
//
//   - rename objects: revision (istiod-<revision>, istio-sidecar-injector-<revision>, the
//     istio.io/rev labels and webhook selectors of every istiod object), revisionTags
//     (a MutatingWebhookConfiguration and a Service per tag, which take over injection
//     for namespaces labelled with the tag), defaultRevision (the base chart's
//     istiod-default-validator and the istiod Service it calls). Revisions are Capstan's:
//     canary revisions will come through spec.upgrade;
//   - relocate objects: global.istioNamespace (the namespace of istiod's ServiceAccount,
//     Role and RoleBinding, and of the Service every webhook calls), which spec.namespace
//     sets; istiodRemote (enabled drops istiod's Deployment, Service and RBAC for a
//     control plane in another cluster; injectionURL points the injector webhook
//     elsewhere), and profile and global.profile, whose "remote" profile sets
//     istiodRemote (spec.profile is the typed field for every other profile);
//   - hand objects or webhooks to another owner: global.operatorManageWebhooks (drops the
//     injector's MutatingWebhookConfigurations, for Istio's own operator to write),
//     global.resourceScope (cluster or namespace drops the other half of the objects, for
//     an installation split between two Helm releases), base.validationURL (Istio's
//     config validation webhooks call that URL instead of istiod).
//
// The istio-discovery chart copies everything under pilot over its top-level values
// (zzy_descope_legacy.yaml), so pilot.<path> is refused too for the paths that chart
// reads. The base chart is rendered without pilot (render.Base.ValueKeys).
//
// Considered and left alone: global.remotePilotAddress and global.configCluster take
// effect in these charts only together with istiodRemote, which is refused;
// global.externalIstiod only sets istiod's EXTERNAL_ISTIOD, which renames nothing here and
// spec.components.pilot.env can set as well; ownerName is a label value; global.caAddress
// points sidecars at another CA (cert-manager's istio-csr), meshConfig.rootNamespace moves
// where Istio reads mesh-wide policy, and configMap, global.configValidation and
// global.omitSidecarInjectorConfigMap drop one object on purpose: each is a setting, not
// a name or a place of Capstan's objects. base.excludedCRDs and base.enableCRDTemplates
// drop CRDs from the render, but prune keeps CRDs.
var OwnedValues = withPilotAliases([]ownedEntry{
	{OwnedValue{"revision", "string", "revisions are Capstan's: it names istiod's objects itself, and canary revisions will come through spec.upgrade; remove it"}, true},
	{OwnedValue{"revisionTags", "array", "revision tags are Capstan's and will come through spec.upgrade; remove it"}, true},
	{OwnedValue{"defaultRevision", "string", "Capstan's istiod is the default revision that validates Istio's configuration; remove it"}, false},
	{OwnedValue{"global.istioNamespace", "string", "Capstan sets it from spec.namespace; set spec.namespace instead"}, true},
	{OwnedValue{"istiodRemote", "object", "Capstan runs istiod in this cluster and serves its webhooks from there; a remote control plane is not supported, remove it"}, true},
	{OwnedValue{"profile", "string", "set spec.profile instead (the remote profile, which moves istiod out of the cluster, is not supported)"}, false},
	{OwnedValue{"global.profile", "string", "set spec.profile instead (the remote profile, which moves istiod out of the cluster, is not supported)"}, false},
	{OwnedValue{"global.operatorManageWebhooks", "boolean", "Capstan installs istiod's webhook configurations itself; remove it"}, true},
	{OwnedValue{"global.resourceScope", "string", "Capstan installs every object of the control plane, cluster-scoped and namespaced; remove it"}, true},
	{OwnedValue{"base.validationURL", "string", "Istio's configuration is validated by the istiod Capstan runs; remove it"}, true},
})

// ownedEntry is an OwnedValue and whether the istio-discovery chart reads it, so that
// pilot.<path> reaches it too.
type ownedEntry struct {
	OwnedValue
	discovery bool
}

func withPilotAliases(entries []ownedEntry) []OwnedValue {
	var out, aliases []OwnedValue
	for _, e := range entries {
		out = append(out, e.OwnedValue)
		if e.discovery {
			a := e.OwnedValue
			a.Path = "pilot." + a.Path
			aliases = append(aliases, a)
		}
	}
	return append(out, aliases...)
}

// checkOwned refuses the first owned value v sets. A null is not set: Helm drops it.
func checkOwned(v Values) error {
	for _, o := range OwnedValues {
		if nested(v, strings.Split(o.Path, ".")...) != nil {
			return &FieldError{Field: o.Field(), Detail: o.Instead}
		}
	}
	return nil
}

// OwnedSchema declares the owned values in values, the schema of spec.values, each with a
// CEL rule that refuses it. CEL sees no field that a preserve-unknown-fields object does
// not declare (has(self.values.revision) does not compile), so each owned path is
// declared, nullable, with the type the charts read, and the objects on the way (global,
// base, pilot) keep every other key. It is idempotent: make manifests applies it to the
// CRD controller-gen writes (hack/crdvalues), and a test checks the CRD is what it gives.
func OwnedSchema(values *apiextensionsv1.JSONSchemaProps) {
	rules := make([]apiextensionsv1.ValidationRule, 0, len(OwnedValues))
	for _, o := range OwnedValues {
		path := strings.Split(o.Path, ".")
		declare(values, path, leafSchema(o))
		rules = append(rules, apiextensionsv1.ValidationRule{
			Rule:      absent(path),
			Message:   o.Message(),
			FieldPath: "." + o.Path,
			Reason:    ptr.To(apiextensionsv1.FieldValueForbidden),
		})
	}
	values.XValidations = slices.DeleteFunc(values.XValidations, func(r apiextensionsv1.ValidationRule) bool {
		return slices.ContainsFunc(rules, func(o apiextensionsv1.ValidationRule) bool { return o.Rule == r.Rule })
	})
	values.XValidations = append(values.XValidations, rules...)
}

// declare puts leaf at path under node, declaring the objects on the way as objects that
// keep unknown keys.
func declare(node *apiextensionsv1.JSONSchemaProps, path []string, leaf apiextensionsv1.JSONSchemaProps) {
	if node.Properties == nil {
		node.Properties = map[string]apiextensionsv1.JSONSchemaProps{}
	}
	if len(path) == 1 {
		node.Properties[path[0]] = leaf
		return
	}
	child, ok := node.Properties[path[0]]
	if !ok {
		child = apiextensionsv1.JSONSchemaProps{
			Description:            "Helm values under " + path[0] + ", passed to Istio's charts like the rest of spec.values.",
			Type:                   "object",
			Nullable:               true,
			XPreserveUnknownFields: ptr.To(true),
		}
	}
	declare(&child, path[1:], leaf)
	node.Properties[path[0]] = child
}

// leafSchema is the declared schema of an owned value: the type the charts read, and null
// allowed, because a null in Helm values is no value at all.
func leafSchema(o OwnedValue) apiextensionsv1.JSONSchemaProps {
	s := apiextensionsv1.JSONSchemaProps{
		Description: "Refused: " + o.Instead + ".",
		Type:        o.Type,
		Nullable:    true,
	}
	switch o.Type {
	case "object":
		s.XPreserveUnknownFields = ptr.To(true)
	case "array":
		s.Items = &apiextensionsv1.JSONSchemaPropsOrArray{Schema: &apiextensionsv1.JSONSchemaProps{Type: "string"}}
	}
	return s
}

// absent is the CEL rule, on spec.values, that path is not set: has() on each step, since
// has() of a field of a missing object is an error, not false.
func absent(path []string) string {
	var terms []string
	for i := range path {
		terms = append(terms, "!has(self."+strings.Join(path[:i+1], ".")+")")
	}
	return strings.Join(terms, " || ")
}
