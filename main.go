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
	"github.com/capstan-mesh/capstan/internal/render"
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
		qps                    float64
		burst                  int
	)
	flag.StringVar(&metricsAddr, "metrics-bind-address", "0", "address the metrics endpoint binds to; 0 turns it off")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address the health and readiness probes bind to")
	flag.BoolVar(&leaderElect, "leader-elect", false, "elect a leader, so that only one of several replicas reconciles")
	flag.StringVar(&leaderNamespace, "leader-election-namespace", "", "namespace of the leader-election Lease (default: the pod's namespace)")
	// A control plane is about 35 objects; client-go's default budget (20/s, burst 30) would
	// spread one install over seconds. The apiserver's own flow control still applies.
	flag.Float64Var(&qps, "kube-api-qps", 50, "requests per second the operator may send to the apiserver")
	flag.IntVar(&burst, "kube-api-burst", 100, "requests the operator may send at once, above kube-api-qps")
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
	cfg.QPS, cfg.Burst = float32(qps), burst
	mopts := controllers.ManagerOptions(scheme)
	mopts.Metrics = metricsserver.Options{BindAddress: metricsAddr}
	mopts.HealthProbeBindAddress = probeAddr
	mopts.LeaderElection = leaderElect
	mopts.LeaderElectionID = "capstan.mesh.capstan.dev"
	mopts.LeaderElectionNamespace = leaderNamespace
	// Hand the lease over at once on a clean stop, so an upgrade of the operator does not
	// wait out the lease duration.
	mopts.LeaderElectionReleaseOnCancel = true
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
	// Load and render the embedded charts once before any MeshControlPlane arrives: this
	// proves they render, and the first install does not pay for parsing them.
	go func() {
		if err := render.Warm(sv.GitVersion); err != nil {
			ctrl.Log.WithName("setup").Error(err, "the embedded charts do not render with default values")
		}
	}()
	ctrl.Log.WithName("setup").Info("starting", "kubernetes", sv.GitVersion)
	return mgr.Start(ctrl.SetupSignalHandler())
}
