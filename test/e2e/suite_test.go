//go:build e2e

// Package e2e runs whole Capstan flows on a local kwok cluster (real etcd, kube-apiserver,
// controller-manager and scheduler; simulated nodes and kubelets), with the operator binary
// running as a process under its own ServiceAccount and RBAC, and the real istiod running
// beside the simulated pods. It must run inside a loopback-only network namespace
// (`make test-e2e` does that with hack/in-netns.sh).
//
// What is simulated: kwok plays the kubelets, so pods "run" without containers (their
// images are never pulled) and become Ready on the simulated nodes. istiod is the real
// binary, started the way a kubelet would start the Deployment Capstan applied (same env,
// the chart's ConfigMaps mounted as files, bound to its Service's ClusterIP).
package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/controllers"
	"github.com/capstan-mesh/capstan/test/harness"
)

var (
	cluster  *harness.Cluster
	operator *harness.Operator
	k8s      client.Client
)

// inPlace is spec.upgrade for the Describes about an in-place control plane (the revision
// default, istiod named "istiod"); a new MeshControlPlane is RevisionBased otherwise.
var inPlace = &meshv1.UpgradeSpec{Strategy: meshv1.UpgradeInPlace}

func TestE2E(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Capstan on a local cluster")
}

var _ = BeforeSuite(func(ctx context.Context) {
	// The clients the specs make log through controller-runtime: into the spec's output.
	ctrllog.SetLogger(GinkgoLogr)
	var err error
	cluster, err = harness.StartCluster(ctx, harness.ClusterOptions{})
	Expect(err).NotTo(HaveOccurred())
	scheme, err := controllers.NewTestScheme()
	Expect(err).NotTo(HaveOccurred())
	k8s, err = client.New(cluster.RESTConfig, client.Options{Scheme: scheme})
	Expect(err).NotTo(HaveOccurred())
	Expect(harness.InstallCapstan(ctx, cluster)).To(Succeed())
	operator, err = harness.StartOperator(ctx, cluster, harness.OperatorOptions{LeaderElect: true})
	Expect(err).NotTo(HaveOccurred())
	SetDefaultEventuallyTimeout(90 * time.Second)
	SetDefaultEventuallyPollingInterval(250 * time.Millisecond)
}, NodeTimeout(5*time.Minute))

var _ = ReportAfterEach(func(r SpecReport) {
	if r.Failed() && operator != nil {
		AddReportEntry("capstan log", operator.LogTail(8000)) // bytes
	}
})

var _ = AfterSuite(func() {
	if operator != nil {
		Expect(operator.Stop()).To(Succeed(), "the operator must stop cleanly on SIGTERM")
	}
	if cluster != nil {
		Expect(cluster.Stop()).To(Succeed())
	}
})

// restoreSuiteOperator stops op, a Describe's own operator (nil when it started none), and
// gives the rest of the suite its operator back, as BeforeSuite started it.
func restoreSuiteOperator(ctx context.Context, op *harness.Operator) {
	GinkgoHelper()
	if op != nil {
		Expect(op.Stop()).To(Succeed())
	}
	var err error
	operator, err = harness.StartOperator(ctx, cluster, harness.OperatorOptions{LeaderElect: true})
	Expect(err).NotTo(HaveOccurred())
}

// startOwnOperator starts a Describe's own operator, with args, in a working directory of
// its own (<name>-<n>, n counting the starts), and makes it the operator whose log the
// suite reports when a spec fails. No leader election: it is the only operator while the
// Describe runs, and one started after a killed one would otherwise wait out the killed
// one's lease (15s) before acting.
func startOwnOperator(ctx context.Context, name string, starts *int, args ...string) *harness.Operator {
	GinkgoHelper()
	*starts++
	op, err := harness.StartOperator(ctx, cluster, harness.OperatorOptions{
		WorkDir: filepath.Join(cluster.WorkDir, fmt.Sprintf("%s-%d", name, *starts)),
		Args:    args,
	})
	Expect(err).NotTo(HaveOccurred())
	operator = op
	return op
}
