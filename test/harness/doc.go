// Package harness runs Capstan's end-to-end tests against a real, local Kubernetes cluster:
// a kwok cluster (etcd, kube-apiserver, kube-controller-manager, kube-scheduler and simulated
// nodes, all built from Go modules into bin/) plus, where a test needs it, the real istiod
// (bin/pilot-discovery) and the operator as local processes.
//
// Everything here refuses to start unless the test process is inside a network namespace that
// holds only loopback (see RequireLoopbackNetns): build the test binary first, then run it
// through hack/in-netns.sh, for example
//
//	go test -c -tags e2e -o bin/e2e.test ./test/e2e
//	hack/in-netns.sh bin/e2e.test -test.v
//
// The package is plain Go (no test framework, no build tag), so ginkgo suites and plain
// `testing` tests use it alike:
//
//	c, err := harness.StartCluster(ctx, harness.ClusterOptions{})
//	defer c.Stop()
//	// ... apply Istio's charts (render + server-side apply) ...
//	d, err := harness.StartIstiod(ctx, c, harness.IstiodOptions{})
//	defer d.Stop()
//	op, err := harness.StartProcess(harness.ProcessOptions{Path: harness.Bin("capstan"), ...})
//	defer op.Stop()
package harness
