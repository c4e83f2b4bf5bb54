package render

import (
	"errors"
	"fmt"
	"strings"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	kjson "sigs.k8s.io/json"
)

// checkFields decodes a rendered object's JSON strictly into its Kubernetes type and
// reports every field the type does not have, and every field given twice. The operator
// does not use it: the apiserver judges fields on every apply (fieldValidation=Strict), by
// the schema it serves. Tests use it to show that Istio's charts, as they ship, render
// nothing the Kubernetes types do not know, so a strict server refuses only user input.
func checkFields(gvk schema.GroupVersionKind, js []byte) error {
	obj, ok := typedObject(gvk)
	if !ok {
		return nil
	}
	strict, err := kjson.UnmarshalStrict(js, obj, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return fmt.Errorf("not a valid %s: %w", gvk.Kind, err)
	}
	if len(strict) == 0 {
		return nil
	}
	msgs := make([]string, len(strict))
	for i, e := range strict {
		msgs[i] = e.Error() // `unknown field "spec.template.spec.affinity.nodeAfinity"`
	}
	return errors.New(strings.Join(msgs, "; "))
}

// typedObject is an empty typed object of a managed kind. client-go's scheme holds every
// built-in kind; Istio's CRDs are the one kind from outside it.
func typedObject(gvk schema.GroupVersionKind) (any, bool) {
	if _, managed := Lookup(gvk); !managed {
		return nil, false
	}
	if gvk == apiextensionsv1.SchemeGroupVersion.WithKind("CustomResourceDefinition") {
		return &apiextensionsv1.CustomResourceDefinition{}, true
	}
	obj, err := clientgoscheme.Scheme.New(gvk)
	if err != nil {
		return nil, false
	}
	return obj, true
}
