package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// ServiceCIDR is the Service ClusterIP range of every harness cluster (hack/kwok/kwokctl.yaml):
// loopback, so that the apiserver's calls to webhooks and anything sent to a ClusterIP stay on
// this machine.
const ServiceCIDR = "127.16.0.0/16"

// ClusterOptions configure StartCluster. The zero value is a good default.
type ClusterOptions struct {
	// Name of the kwok cluster; default: "capstan-" and a random suffix, so parallel runs and
	// leftovers of earlier runs never collide.
	Name string
	// WorkDir is kwokctl's KWOK_WORKDIR (state, pki, logs of the cluster); default: a new
	// temporary directory, removed by Stop unless KeepWorkDir or $CAPSTAN_KEEP_WORKDIR=1.
	WorkDir string
	// KeepWorkDir keeps WorkDir after Stop, with the cluster's logs (audit log included)
	// copied to WorkDir/logs-<Name>/ first (deleting a kwok cluster deletes its own logs).
	KeepWorkDir bool
	// Nodes is the number of simulated nodes, all Ready before StartCluster returns; default 2.
	Nodes int
	// NoAudit starts the apiserver without its audit log (it is on by default: Metadata level,
	// one JSON line per request, at Cluster.AuditLogPath).
	NoAudit bool
	// DisableQPSLimits lifts the client rate limits of the controller-manager and the
	// scheduler (20 and 50 requests a second by default: 10,000 pods of Deployments would
	// take minutes to create) and the apiserver's in-flight limits, priority and fairness
	// included (kwokctl --disable-qps-limits).
	DisableQPSLimits bool
	// Timeout bounds the whole start; default 3 minutes.
	Timeout time.Duration
}

// Cluster is a running local kwok cluster (etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler, kwok-controller as local processes, started by hack/cluster.sh).
type Cluster struct {
	// Name is the kwok cluster name.
	Name string
	// WorkDir is kwokctl's KWOK_WORKDIR; the cluster's own files are in WorkDir/clusters/Name.
	WorkDir string
	// Kubeconfig is the path of an admin kubeconfig for the cluster.
	Kubeconfig string
	// AuditLogPath is the apiserver's audit log (JSON lines, audit.k8s.io/v1 Event at Metadata
	// level); "" when started with NoAudit. Read it before Stop, which deletes it.
	AuditLogPath string
	// RESTConfig is an admin client configuration (QPS limits raised for tests).
	RESTConfig *rest.Config
	// Clientset is a typed client built from RESTConfig.
	Clientset kubernetes.Interface

	keepWorkDir bool
	ownWorkDir  bool
}

// StartCluster creates a kwok cluster with hack/cluster.sh up (configuration
// hack/kwok/kwokctl.yaml, the binaries of bin/) and waits until opts.Nodes nodes are Ready.
// It takes a few seconds. It refuses to run outside a loopback-only network namespace.
// Call Stop when done, also when the test fails.
func StartCluster(ctx context.Context, opts ClusterOptions) (*Cluster, error) {
	if err := RequireLoopbackNetns(); err != nil {
		return nil, err
	}
	if err := RequireBins("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok", "kwokctl"); err != nil {
		return nil, err
	}
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	if opts.Nodes <= 0 {
		opts.Nodes = 2
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 3 * time.Minute
	}
	if opts.Name == "" {
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		opts.Name = "capstan-" + hex.EncodeToString(b)
	}
	c := &Cluster{Name: opts.Name, keepWorkDir: opts.KeepWorkDir || os.Getenv("CAPSTAN_KEEP_WORKDIR") == "1"}
	if opts.WorkDir == "" {
		d, err := os.MkdirTemp("", "capstan-kwok-")
		if err != nil {
			return nil, err
		}
		opts.WorkDir, c.ownWorkDir = d, true
	}
	if c.WorkDir, err = filepath.Abs(opts.WorkDir); err != nil {
		return nil, err
	}
	dir := filepath.Join(c.WorkDir, "clusters", c.Name)
	c.Kubeconfig = filepath.Join(dir, "kubeconfig.yaml")
	if !opts.NoAudit {
		c.AuditLogPath = filepath.Join(dir, "logs", "audit.log")
	}

	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	out, err := c.clusterSh(ctx, root, opts, "up")
	if err != nil {
		_ = c.Stop()
		return nil, fmt.Errorf("harness: hack/cluster.sh up %s: %w\n%s", c.Name, err, tail(out, 4000))
	}

	if c.RESTConfig, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig); err != nil {
		_ = c.Stop()
		return nil, err
	}
	c.RESTConfig.QPS, c.RESTConfig.Burst = 200, 400
	if c.Clientset, err = kubernetes.NewForConfig(c.RESTConfig); err != nil {
		_ = c.Stop()
		return nil, err
	}
	// cluster.sh already waited; check independently, so a start that lost nodes fails here.
	err = wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		nodes, err := c.Clientset.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		ready := 0
		for _, n := range nodes.Items {
			for _, cond := range n.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					ready++
				}
			}
		}
		return ready >= opts.Nodes, nil
	})
	if err != nil {
		_ = c.Stop()
		return nil, fmt.Errorf("harness: waiting for %d Ready nodes in cluster %s: %w", opts.Nodes, c.Name, err)
	}
	return c, nil
}

// clusterSh runs hack/cluster.sh CMD NAME for this cluster and returns its combined output.
func (c *Cluster) clusterSh(ctx context.Context, root string, opts ClusterOptions, cmd string) ([]byte, error) {
	sh := exec.CommandContext(ctx, filepath.Join(root, "hack", "cluster.sh"), cmd, c.Name)
	audit := "1"
	if opts.NoAudit {
		audit = "0"
	}
	qps := "0"
	if opts.DisableQPSLimits {
		qps = "1"
	}
	sh.Env = append(os.Environ(),
		"KWOK_WORKDIR="+c.WorkDir,
		"CAPSTAN_NODES="+strconv.Itoa(opts.Nodes),
		"CAPSTAN_AUDIT="+audit,
		"CAPSTAN_DISABLE_QPS_LIMITS="+qps,
	)
	sh.WaitDelay = 5 * time.Second
	return sh.CombinedOutput()
}

// Stop deletes the cluster (hack/cluster.sh down: all its processes end) and removes WorkDir
// if StartCluster created it and it is not to be kept. Safe to call more than once.
func (c *Cluster) Stop() error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	if _, statErr := os.Stat(filepath.Join(c.WorkDir, "clusters", c.Name)); statErr == nil {
		if c.keepWorkDir {
			logs := filepath.Join(c.WorkDir, "clusters", c.Name, "logs")
			if err := os.CopyFS(filepath.Join(c.WorkDir, "logs-"+c.Name), os.DirFS(logs)); err != nil {
				return fmt.Errorf("harness: keeping the logs of cluster %s: %w", c.Name, err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if out, err := c.clusterSh(ctx, root, ClusterOptions{}, "down"); err != nil {
			return fmt.Errorf("harness: hack/cluster.sh down %s: %w\n%s", c.Name, err, tail(out, 4000))
		}
	}
	if c.ownWorkDir && !c.keepWorkDir {
		return os.RemoveAll(c.WorkDir)
	}
	return nil
}

// LogPath is the log file of one of the cluster's components: "kube-apiserver", "etcd",
// "kube-controller-manager", "kube-scheduler", "kwok-controller" or "audit".
func (c *Cluster) LogPath(component string) string {
	return filepath.Join(c.WorkDir, "clusters", c.Name, "logs", component+".log")
}

// LogTail returns up to the last n bytes of a component's log (see LogPath).
func (c *Cluster) LogTail(component string, n int) string { return fileTail(c.LogPath(component), n) }

// Kubectl runs bin/kubectl with the cluster's kubeconfig and returns its combined output
// (stdout then stderr interleaved as written); the error carries the output too.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	return c.KubectlStdin(ctx, nil, args...)
}

// KubectlStdin is Kubectl with stdin (for `apply -f -`).
func (c *Cluster) KubectlStdin(ctx context.Context, stdin []byte, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, Bin("kubectl"), append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %v: %w: %s", args, err, tail(out, 2000))
	}
	return string(out), nil
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
