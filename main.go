// Command capstan runs the Capstan operator: it reconciles the cluster's MeshControlPlane
// into a running Istio control plane.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"k8s.io/client-go/discovery"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/controllers"
	"github.com/capstan-mesh/capstan/internal/metricsauth"
	"github.com/capstan-mesh/capstan/internal/plan"
	capstanwebhook "github.com/capstan-mesh/capstan/internal/webhook"
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
		pprofAddr              string
		leaderElect            bool
		leaderNamespace        string
		qps                    float64
		burst                  int
		enableWebhooks         bool
		webhookCertDir         string
		enableHTTP2            bool
		secureMetrics          bool
		secretNamespaces       string
		caPropagation          time.Duration
	)
	flag.StringVar(&metricsAddr, "metrics-bind-address", "0", "address the metrics endpoint binds to (the Deployment uses :8443); 0 turns it off")
	flag.BoolVar(&secureMetrics, "metrics-secure", true, "serve metrics over HTTPS, only to clients the apiserver authenticates and authorizes for GET /metrics")
	flag.BoolVar(&enableWebhooks, "enable-webhooks", true, "serve the MeshControlPlane validating webhook on :9443")
	flag.StringVar(&webhookCertDir, "webhook-cert-dir", "/tmp/k8s-webhook-server/serving-certs", "directory holding the webhook's tls.crt and tls.key (OLM and the Helm chart mount them here)")
	flag.BoolVar(&enableHTTP2, "enable-http2", false, "serve HTTP/2 from the metrics and webhook servers; off because of the HTTP/2 Rapid Reset and Stream Cancellation attacks (CVE-2023-44487, CVE-2023-39325)")
	flag.StringVar(&pprofAddr, "pprof-bind-address", "0", "address Go's profiling endpoints (/debug/pprof/) bind to, for diagnosing memory and CPU; 0 turns them off. They are unauthenticated: bind them to 127.0.0.1")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "address the health and readiness probes bind to")
	flag.BoolVar(&leaderElect, "leader-elect", false, "elect a leader, so that only one of several replicas reconciles")
	flag.StringVar(&leaderNamespace, "leader-election-namespace", "", "namespace of the leader-election Lease (default: the pod's namespace)")
	// A control plane is about 35 objects; client-go's default budget (20/s, burst 30) would
	// spread one install over seconds. The apiserver's own flow control still applies.
	flag.Float64Var(&qps, "kube-api-qps", 50, "requests per second the operator may send to the apiserver")
	flag.IntVar(&burst, "kube-api-burst", 100, "requests the operator may send at once, above kube-api-qps")
	flag.StringVar(&secretNamespaces, "secret-namespaces", "istio-system", "comma-separated namespaces the operator is granted Secrets in (the mesh CA's cacerts lives in the control-plane namespace); empty means every namespace")
	flag.DurationVar(&caPropagation, "ca-propagation", controllers.DefaultCAPropagation, "how long a root rotation allows for a cacerts change to reach istiod (kubelet Secret sync) and a new trust bundle to reach every sidecar, clock skew included")
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
	// The operator talks to its own cluster's apiserver: compressing responses there saves
	// no bandwidth worth having, costs the apiserver CPU, and every watch stream would hold
	// a gzip reader (about 40 KB each, twenty-odd watches) for the operator's whole life.
	cfg.DisableCompression = true
	var tlsOpts []func(*tls.Config)
	if !enableHTTP2 {
		tlsOpts = append(tlsOpts, func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} })
	}
	var secretNS []string
	for _, ns := range strings.Split(secretNamespaces, ",") {
		if ns = strings.TrimSpace(ns); ns != "" {
			secretNS = append(secretNS, ns)
		}
	}
	mopts := controllers.ManagerOptions(scheme, secretNS...)
	mopts.Metrics = metricsserver.Options{BindAddress: metricsAddr, SecureServing: secureMetrics, TLSOpts: tlsOpts}
	if secureMetrics {
		mopts.Metrics.FilterProvider = metricsauth.FilterProvider
	}
	if enableWebhooks {
		mopts.WebhookServer = webhook.NewServer(webhook.Options{CertDir: webhookCertDir, TLSOpts: tlsOpts})
	}
	mopts.HealthProbeBindAddress = probeAddr
	mopts.PprofBindAddress = pprofAddr
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
		// The Deployment sets it through the downward API; empty when run by hand.
		OperatorNamespace: os.Getenv("POD_NAMESPACE"),
	}
	if err := r.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the MeshControlPlane controller: %w", err)
	}
	caMetrics := controllers.NewCAMetrics(time.Now)
	metrics.Registry.MustRegister(caMetrics)
	rootCerts, err := controllers.NewRootCertCache(mgr)
	if err != nil {
		return err
	}
	if err := (&controllers.CAReconciler{
		Client:           mgr.GetClient(),
		APIReader:        mgr.GetAPIReader(),
		RootCerts:        rootCerts,
		Recorder:         mgr.GetEventRecorder("capstan"),
		Propagation:      caPropagation,
		SecretNamespaces: secretNS,
		Metrics:          caMetrics,
	}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the mesh CA controller: %w", err)
	}
	dataPlane := &controllers.DataPlaneReconciler{Client: mgr.GetClient(), OperatorNamespace: os.Getenv("POD_NAMESPACE"), Recorder: mgr.GetEventRecorder("capstan")}
	if err := dataPlane.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the data-plane status controller: %w", err)
	}
	metrics.Registry.MustRegister(dataPlane.Metrics())
	ready := healthz.Ping
	if enableWebhooks {
		// The Deployment sets POD_NAMESPACE from the pod's own namespace (downward API);
		// run outside a pod, the operator's namespace is unknown and not checked.
		v := capstanwebhook.Validator{OperatorNamespace: os.Getenv("POD_NAMESPACE")}
		if err := capstanwebhook.SetupWithManager(mgr, v); err != nil {
			return fmt.Errorf("setting up the MeshControlPlane webhook: %w", err)
		}
		ready = mgr.GetWebhookServer().StartedChecker()
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", ready); err != nil {
		return err
	}
	// Load and render the embedded charts before the manager starts: this proves they
	// render (a binary whose charts do not is of no use, and says so), and the first
	// reconcile does not pay for parsing them. The spec rendered is the stored
	// MeshControlPlane's when there is one, else the defaults. It runs before the caches
	// fill, not beside them: the render's garbage and the caches' initial lists then never
	// add up to one peak of the heap, which on a large cluster set the process's memory
	// for good.
	stored := &meshv1.MeshControlPlane{}
	if err := mgr.GetAPIReader().Get(context.Background(), client.ObjectKey{Name: meshv1.SingletonName}, stored); err != nil {
		stored = nil
	}
	if err := plan.Warm(sv.GitVersion, stored); err != nil {
		return fmt.Errorf("the embedded charts do not render with default values: %w", err)
	}
	ctrl.Log.WithName("setup").Info("starting", "kubernetes", sv.GitVersion)
	return mgr.Start(ctrl.SetupSignalHandler())
}
