package controllers

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/capstan-mesh/capstan/internal/dataplane"
	"github.com/capstan-mesh/capstan/internal/revision"
)

// TestDataPlaneMetrics protects the data plane's gauges: the same counts as status, read at
// scrape time, and nothing at all before the controller knows the declared state (a
// replica that does not lead exports no misleading zeros).
func TestDataPlaneMetrics(t *testing.T) {
	r := &DataPlaneReconciler{}
	m := r.Metrics()
	if n := testutil.CollectAndCount(m); n != 0 {
		t.Fatalf("%d series before the declared state is known, want none", n)
	}
	stamp := dataplane.Stamp{Version: "1.31.1", ProxyConfig: "abc"}
	r.mu.Lock()
	r.counts.SetDesired(dataplane.Desired{Resolver: revision.Resolver{Revisions: []string{"default"}}, Stamps: map[string]dataplane.Stamp{"default": stamp}})
	r.hasDesired = true
	r.counts.SetNamespace("shop", map[string]string{revision.InjectionLabel: "enabled"})
	r.mu.Unlock()
	pod := func(name, version string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name}}
		if version != "" {
			p.Annotations = map[string]string{revision.StatusAnnotation: `{"revision":"default"}`,
				dataplane.ProxyVersionAnnotation: version, dataplane.ProxyConfigAnnotation: stamp.ProxyConfig}
		}
		return p
	}
	r.podChanged(nil, pod("current", "1.31.1"))
	r.podChanged(nil, pod("old", "1.31.0"))
	r.podChanged(nil, pod("bare", ""))
	r.mu.Lock()
	r.restartsInProgress = 2
	r.mu.Unlock()
	want := `
# HELP capstan_dataplane_meshed_namespaces Namespaces whose labels ask for sidecar injection.
# TYPE capstan_dataplane_meshed_namespaces gauge
capstan_dataplane_meshed_namespaces 1
# HELP capstan_dataplane_pods Pods of the data plane by state: injected (carrying a sidecar), uninjected (in a meshed namespace, without one), stale (a sidecar of another revision, version or proxy settings than the current ones).
# TYPE capstan_dataplane_pods gauge
capstan_dataplane_pods{state="injected"} 2
capstan_dataplane_pods{state="stale"} 1
capstan_dataplane_pods{state="uninjected"} 1
# HELP capstan_dataplane_restarts_in_progress Workloads Capstan restarted whose rollout is not yet complete and available.
# TYPE capstan_dataplane_restarts_in_progress gauge
capstan_dataplane_restarts_in_progress 2
`
	if err := testutil.CollectAndCompare(m, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}
