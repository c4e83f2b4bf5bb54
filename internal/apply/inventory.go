// Package apply writes rendered objects with server-side apply, keeps the inventory labels
// that say which objects Capstan owns, decides what has drifted, and what to prune.
package apply

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
)

// Labels and annotations every object Capstan writes carries.
const (
	FieldManager   = "capstan"
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedByValue = "capstan"
	ComponentLabel = "capstan.dev/component"
	RevisionLabel  = "capstan.dev/revision"
	// WriterLabel names the Capstan controller that wrote an object: prune and uninstall
	// of one controller never touch another's objects.
	WriterLabel        = "capstan.dev/writer"
	ConfigHashAnnot    = "capstan.dev/config-hash"
	DefaultRevision    = "default"
	NamespaceComponent = "namespace"
)

// Writers: the controllers that write objects, each pruning only its own.
const (
	// WriterInstall is the install controller: the charts' objects and the control-plane
	// namespace.
	WriterInstall = "install"
	// WriterCA is the mesh CA controller: the CA's Secrets and cert-manager Certificate.
	WriterCA = "ca"
)

// Ref names one object.
type Ref struct {
	GVK schema.GroupVersionKind
	types.NamespacedName
}

// RefOf returns the reference of an object.
func RefOf(u *unstructured.Unstructured) Ref {
	return Ref{GVK: u.GroupVersionKind(), NamespacedName: types.NamespacedName{Namespace: u.GetNamespace(), Name: u.GetName()}}
}

func (r Ref) String() string {
	if r.Namespace == "" {
		return r.GVK.Kind + " " + r.Name
	}
	return r.GVK.Kind + " " + r.Namespace + "/" + r.Name
}

// Stamp labels a rendered object as Capstan's, for its component and revision, and
// records a hash of what Capstan wants it to hold. It also drops fields that Istio's
// control plane fills in at run time, so that applying never takes them back.
func Stamp(u *unstructured.Unstructured, component, revision string) {
	dropRuntimeOwnedFields(u)
	labels := u.GetLabels()
	if labels == nil {
		labels = map[string]string{}
	}
	labels[ManagedByLabel] = ManagedByValue
	labels[ComponentLabel] = component
	labels[RevisionLabel] = revision
	u.SetLabels(labels)

	// The hash covers the object as it would be without its hash annotation (and without
	// an annotations map that holds nothing else), so stamping twice changes nothing.
	annotations := u.GetAnnotations()
	delete(annotations, ConfigHashAnnot)
	if len(annotations) == 0 {
		unstructured.RemoveNestedField(u.Object, "metadata", "annotations")
		annotations = map[string]string{}
	} else {
		u.SetAnnotations(annotations)
	}
	annotations[ConfigHashAnnot] = configHash(u)
	u.SetAnnotations(annotations)
}

// configHash digests an object. Hashes are compared with those of objects stamped by
// earlier versions of Capstan, so what is digested (the object's JSON, keys sorted) must
// not change: a test holds a known value.
func configHash(u *unstructured.Unstructured) string {
	b, _ := json.Marshal(u.Object) // the object came from JSON, so it marshals
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:12])
}

// dropRuntimeOwnedFields removes rendered fields whose live value istiod owns: the webhook
// CA bundles it patches in when the charts leave them empty.
func dropRuntimeOwnedFields(u *unstructured.Unstructured) {
	switch u.GetKind() {
	case "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration":
	default:
		return
	}
	hooks, _, _ := unstructured.NestedSlice(u.Object, "webhooks")
	for _, h := range hooks {
		hm, ok := h.(map[string]any)
		if !ok {
			continue
		}
		if cc, ok := hm["clientConfig"].(map[string]any); ok {
			if ca, _ := cc["caBundle"].(string); ca == "" {
				delete(cc, "caBundle")
			}
		}
	}
	_ = unstructured.SetNestedSlice(u.Object, hooks, "webhooks")
}

// Owned reports whether a live object carries Capstan's inventory labels.
func Owned(labels map[string]string) bool {
	return labels[ManagedByLabel] == ManagedByValue && labels[ComponentLabel] != ""
}
