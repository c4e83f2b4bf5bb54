package controllers_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/capstan-mesh/capstan/controllers"
)

// The integration suite runs the MeshControlPlane controller against a real kube-apiserver
// and etcd (envtest, binaries from bin/). envtest runs no controller-manager, so nothing
// rolls out pods: where a test needs a Deployment to be available, it writes the status the
// Deployment controller would write, and says so.

var (
	cfg       *rest.Config
	k8sClient client.Client
	testEnv   *envtest.Environment
	cancel    context.CancelFunc
	// caClock is the CA controller's clock: CA tests move it to pass TTLs and soaks.
	caClock *clocktesting.FakeClock
)

func TestControllers(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "MeshControlPlane controller (envtest)")
}

var _ = BeforeSuite(func() {
	logf.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))
	testEnv = newTestEnv()
	var err error
	cfg, err = testEnv.Start()
	Expect(err).NotTo(HaveOccurred())

	scheme, err := controllers.NewTestScheme()
	Expect(err).NotTo(HaveOccurred())
	k8sClient, err = client.New(cfg, client.Options{Scheme: scheme})
	Expect(err).NotTo(HaveOccurred())

	opts := controllers.ManagerOptions(scheme)
	opts.Metrics = metricsserver.Options{BindAddress: "0"}
	opts.HealthProbeBindAddress = "0"
	mgr, err := ctrl.NewManager(cfg, opts)
	Expect(err).NotTo(HaveOccurred())
	sv, err := discovery.NewDiscoveryClientForConfigOrDie(cfg).ServerVersion()
	Expect(err).NotTo(HaveOccurred())
	Expect((&controllers.MeshControlPlaneReconciler{
		Client:      mgr.GetClient(),
		APIReader:   mgr.GetAPIReader(),
		Recorder:    mgr.GetEventRecorder("capstan"),
		KubeVersion: sv.GitVersion,
	}).SetupWithManager(mgr)).To(Succeed())
	caClock = clocktesting.NewFakeClock(time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC))
	rootCerts, err := controllers.NewRootCertCache(mgr)
	Expect(err).NotTo(HaveOccurred())
	Expect((&controllers.CAReconciler{
		Client:             mgr.GetClient(),
		APIReader:          mgr.GetAPIReader(),
		RootCerts:          rootCerts,
		Recorder:           mgr.GetEventRecorder("capstan"),
		Clock:              caClock,
		Propagation:        time.Minute,
		PollInterval:       300 * time.Millisecond,
		SourcePollInterval: 500 * time.Millisecond,
	}).SetupWithManager(mgr)).To(Succeed())
	Expect((&controllers.DataPlaneReconciler{Client: mgr.GetClient(), OperatorNamespace: operatorNamespace, Recorder: mgr.GetEventRecorder("capstan")}).SetupWithManager(mgr)).To(Succeed())

	var ctx context.Context
	ctx, cancel = context.WithCancel(context.Background())
	go func() {
		defer GinkgoRecover()
		Expect(mgr.Start(ctx)).To(Succeed())
	}()
	SetDefaultEventuallyTimeout(30 * time.Second)
	SetDefaultEventuallyPollingInterval(100 * time.Millisecond)
})

// newTestEnv is an envtest control plane for this package's tests, set up for the
// loopback-only network namespace `make test-integration` runs them in (DESIGN.md): with no
// default route the apiserver advertises 127.0.0.1, and Services get loopback ClusterIPs,
// so a webhook call to one of the Services Istio's charts render cannot leave the machine.
// webhooks are webhook manifests for envtest to install and serve.
func newTestEnv(webhooks ...string) *envtest.Environment {
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: filepath.Join("..", "bin"),
		WebhookInstallOptions: envtest.WebhookInstallOptions{Paths: webhooks},
	}
	env.ControlPlane.GetAPIServer().Configure().
		Set("advertise-address", "127.0.0.1").
		Set("endpoint-reconciler-type", "none"). // the default one refuses a loopback address
		Set("service-cluster-ip-range", "127.16.0.0/16")
	return env
}

var _ = AfterSuite(func() {
	if cancel != nil {
		cancel()
	}
	if testEnv != nil {
		Expect(testEnv.Stop()).To(Succeed())
	}
})
