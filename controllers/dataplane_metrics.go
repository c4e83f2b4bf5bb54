package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
)

// dataPlaneMetrics exports the data plane's counts as gauges, read from the counts at
// every scrape, so they are as current as the informers' last event and cost nothing
// between scrapes.
type dataPlaneMetrics struct {
	r                          *DataPlaneReconciler
	pods, namespaces, restarts *prometheus.Desc
}

// Metrics are the data plane's gauges, to be registered with the metrics registry:
// capstan_dataplane_pods by state (injected, uninjected, stale),
// capstan_dataplane_meshed_namespaces and capstan_dataplane_restarts_in_progress. Nothing is exported until the controller has read
// the MeshControlPlane, so a replica that does not lead exports no zeros.
func (r *DataPlaneReconciler) Metrics() prometheus.Collector {
	r.init()
	return &dataPlaneMetrics{
		r: r,
		pods: prometheus.NewDesc("capstan_dataplane_pods",
			"Pods of the data plane by state: injected (carrying a sidecar), uninjected (in a meshed namespace, without one), stale (a sidecar of another revision, version or proxy settings than the current ones).",
			[]string{"state"}, nil),
		namespaces: prometheus.NewDesc("capstan_dataplane_meshed_namespaces",
			"Namespaces whose labels ask for sidecar injection.", nil, nil),
		restarts: prometheus.NewDesc("capstan_dataplane_restarts_in_progress",
			"Workloads Capstan restarted whose rollout is not yet complete and available.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (m *dataPlaneMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.pods
	ch <- m.namespaces
	ch <- m.restarts
}

// Collect implements prometheus.Collector.
func (m *dataPlaneMetrics) Collect(ch chan<- prometheus.Metric) {
	m.r.mu.Lock()
	known := m.r.hasDesired
	sum := m.r.counts.Summary()
	restarts := m.r.restartsInProgress
	m.r.mu.Unlock()
	if !known {
		return
	}
	for state, n := range map[string]int{"injected": sum.InjectedPods, "uninjected": sum.UninjectedPods, "stale": sum.StalePods} {
		ch <- prometheus.MustNewConstMetric(m.pods, prometheus.GaugeValue, float64(n), state)
	}
	ch <- prometheus.MustNewConstMetric(m.namespaces, prometheus.GaugeValue, float64(sum.MeshedNamespaces))
	ch <- prometheus.MustNewConstMetric(m.restarts, prometheus.GaugeValue, float64(restarts))
}
