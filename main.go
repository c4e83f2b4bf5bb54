// Command capstan runs the Capstan operator: it reconciles the cluster's MeshControlPlane
// into a running Istio control plane.
package main

import (
	"flag"
	"fmt"
	"os"

	"k8s.io/client-go/discovery"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/capstan-mesh/capstan/controllers"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "capstan:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		metricsAddr, probeAddr string
		leaderElect            bool
		leaderNamespace        string
	)
	flag.StringVar(&metricsAddr, "metrics-bind-address", "0", "address the metrics endpoint binds to; 0 turns it off")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address the health and readiness probes bind to")
	flag.BoolVar(&leaderElect, "leader-elect", false, "elect a leader, so that only one of several replicas reconciles")
	flag.StringVar(&leaderNamespace, "leader-election-namespace", "", "namespace of the leader-election Lease (default: the pod's namespace)")
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))

	scheme, err := controllers.NewScheme()
	if err != nil {
		return err
	}

	cfg, err := ctrl.GetConfig()
	if err != nil {
		return err
	}
	mopts := controllers.ManagerOptions(scheme)
	mopts.Metrics = metricsserver.Options{BindAddress: metricsAddr}
	mopts.HealthProbeBindAddress = probeAddr
	mopts.LeaderElection = leaderElect
	mopts.LeaderElectionID = "capstan.mesh.capstan.dev"
	mopts.LeaderElectionNamespace = leaderNamespace
	mgr, err := ctrl.NewManager(cfg, mopts)
	if err != nil {
		return fmt.Errorf("creating manager: %w", err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return err
	}
	sv, err := dc.ServerVersion()
	if err != nil {
		return fmt.Errorf("reading the server version: %w", err)
	}
	r := &controllers.MeshControlPlaneReconciler{
		Client:      mgr.GetClient(),
		APIReader:   mgr.GetAPIReader(),
		Recorder:    mgr.GetEventRecorder("capstan"),
		KubeVersion: sv.GitVersion,
	}
	if err := r.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the MeshControlPlane controller: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return err
	}
	ctrl.Log.WithName("setup").Info("starting", "kubernetes", sv.GitVersion)
	return mgr.Start(ctrl.SetupSignalHandler())
}
