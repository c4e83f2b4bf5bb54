//go:build e2e

package e2e

import "k8s.io/apimachinery/pkg/runtime/schema"

func schemaGVK(g, v, k string) schema.GroupVersionKind {
	return schema.GroupVersionKind{Group: g, Version: v, Kind: k}
}
