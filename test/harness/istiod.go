package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// IstiodOptions configure StartIstiod. The zero value runs the default revision in
// istio-system.
type IstiodOptions struct {
	// Namespace is the control-plane namespace; default "istio-system".
	Namespace string
	// Revision is the control-plane revision; default "default". It picks the names the
	// istiod chart gives its objects: Service, Deployment "istiod" and ConfigMaps "istio",
	// "istio-sidecar-injector" for "default", and "istiod-REV", "istio-REV",
	// "istio-sidecar-injector-REV" for any other revision.
	Revision string
	// WorkDir is istiod's working directory: it reads ./etc/istio/config/, ./var/lib/istio/inject/
	// and ./etc/cacerts/ relative to it, and its log is WorkDir/istiod.log. Default:
	// <cluster WorkDir>/istiod-<revision>.
	WorkDir string
	// PodName is POD_NAME; default "istiod-local-<revision>".
	PodName string
	// CACertsSecret is the Secret mirrored into ./etc/cacerts/ (the chart mounts it as an
	// optional volume); default "cacerts". Set "-" to mirror none.
	CACertsSecret string
	// IgnoreDeploymentEnv skips copying the literal env of the chart's istiod Deployment (the
	// chart's defaults and whatever the MeshControlPlane set, e.g. pilot env or webhook names).
	IgnoreDeploymentEnv bool
	// Env is added last (KEY=VALUE), e.g. "ISTIO_MULTIROOT_MESH=true".
	Env []string
	// Args are added after the harness's own flags, e.g. "--log_output_level=default:debug".
	Args []string
	// OnSync, if set, is called after every write of a mirrored directory (for tests that wait
	// until istiod can have seen a change, e.g. of cacerts).
	OnSync func(MirrorSource)
	// Timeout bounds the start (files, process, /ready); default 2 minutes.
	Timeout time.Duration
}

// Istiod is a local istiod (bin/pilot-discovery) serving a cluster as the chart's Deployment
// would: its webhook listens on the istiod Service's ClusterIP (loopback, see ServiceCIDR)
// port 443, where the apiserver calls it; every other listener is on 127.0.0.1.
type Istiod struct {
	// Process is the running pilot-discovery (Kill it for crash tests; see also Restart).
	Process *Process
	// Namespace, Revision, PodName are as configured.
	Namespace, Revision, PodName string
	// WorkDir is the working directory; LogPath its log (appended across restarts).
	WorkDir, LogPath string
	// ServiceName and ServiceIP are the istiod Service and its ClusterIP.
	ServiceName, ServiceIP string
	// HTTPSAddr is the injection and validation webhook server: ServiceIP:443.
	HTTPSAddr string
	// SecureGRPCAddr serves XDS and the CA (IstioCertificateService) over TLS (Service port
	// 15012 in a real cluster); use server name ServiceName.Namespace.svc.
	SecureGRPCAddr string
	// GRPCAddr is plaintext XDS (15010), HTTPAddr the debug/readiness server (8080),
	// MonitoringAddr the Prometheus metrics (15014), CtrlzAddr the ControlZ page (9876).
	GRPCAddr, HTTPAddr, MonitoringAddr, CtrlzAddr string
	// Mirror keeps the configuration files in sync with the cluster.
	Mirror *Mirror

	cluster *Cluster
	args    []string
	env     []string
	timeout time.Duration
}

// StartIstiod runs the real istiod as a local process against c. The istiod chart's objects
// (Service, ConfigMaps, webhooks, RBAC; the Deployment is optional) must already be applied.
// It mirrors the chart's ConfigMaps into the files istiod reads (istio-sidecar-injector ->
// ./var/lib/istio/inject/, istio -> ./etc/istio/config/) and the cacerts Secret into
// ./etc/cacerts/, keeps them in sync while it runs, starts pilot-discovery and waits until it
// reports ready. Stop it with Stop.
func StartIstiod(ctx context.Context, c *Cluster, opts IstiodOptions) (*Istiod, error) {
	if err := RequireLoopbackNetns(); err != nil {
		return nil, err
	}
	if err := RequireBins("pilot-discovery"); err != nil {
		return nil, err
	}
	if opts.Namespace == "" {
		opts.Namespace = "istio-system"
	}
	if opts.Revision == "" {
		opts.Revision = "default"
	}
	if opts.PodName == "" {
		opts.PodName = "istiod-local-" + opts.Revision
	}
	if opts.WorkDir == "" {
		opts.WorkDir = filepath.Join(c.WorkDir, "istiod-"+opts.Revision)
	}
	if opts.CACertsSecret == "" {
		opts.CACertsSecret = "cacerts"
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Minute
	}
	wd, err := filepath.Abs(opts.WorkDir)
	if err != nil {
		return nil, err
	}
	suffix := ""
	if opts.Revision != "default" {
		suffix = "-" + opts.Revision
	}
	d := &Istiod{
		Namespace: opts.Namespace, Revision: opts.Revision, PodName: opts.PodName,
		WorkDir: wd, LogPath: filepath.Join(wd, "istiod.log"),
		ServiceName: "istiod" + suffix,
		cluster:     c,
		timeout:     opts.Timeout,
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()

	svc, err := c.Clientset.CoreV1().Services(opts.Namespace).Get(ctx, d.ServiceName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("harness: istiod Service (apply the istiod chart first): %w", err)
	}
	ip := net.ParseIP(svc.Spec.ClusterIP)
	if ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("harness: Service %s/%s has ClusterIP %q, not loopback: the cluster must use the service range %s",
			opts.Namespace, d.ServiceName, svc.Spec.ClusterIP, ServiceCIDR)
	}
	d.ServiceIP = svc.Spec.ClusterIP
	d.HTTPSAddr = net.JoinHostPort(d.ServiceIP, "443")
	for _, a := range []*string{&d.SecureGRPCAddr, &d.GRPCAddr, &d.HTTPAddr, &d.MonitoringAddr, &d.CtrlzAddr} {
		if *a, err = FreeAddr(); err != nil {
			return nil, err
		}
	}

	// The files a kubelet would mount into the istiod pod.
	injectSrc := MirrorSource{Namespace: opts.Namespace, Name: "istio-sidecar-injector" + suffix, Dir: filepath.Join(wd, "var/lib/istio/inject")}
	meshSrc := MirrorSource{Namespace: opts.Namespace, Name: "istio" + suffix, Dir: filepath.Join(wd, "etc/istio/config")}
	sources := []MirrorSource{injectSrc, meshSrc}
	if opts.CACertsSecret != "-" {
		sources = append(sources, MirrorSource{Secret: true, Namespace: opts.Namespace, Name: opts.CACertsSecret, Dir: filepath.Join(wd, "etc/cacerts")})
	}
	if d.Mirror, err = StartMirror(ctx, c.Clientset, opts.OnSync, sources...); err != nil {
		return nil, err
	}
	for _, f := range []string{filepath.Join(injectSrc.Dir, "config"), filepath.Join(injectSrc.Dir, "values"), filepath.Join(meshSrc.Dir, "mesh")} {
		if _, err := os.Stat(f); err != nil {
			d.Mirror.Stop()
			return nil, fmt.Errorf("harness: %s is missing: the ConfigMaps %s and %s must exist (apply the istiod chart first)",
				f, injectSrc.Name, meshSrc.Name)
		}
	}

	// The environment of the chart's container: its literal values, then the downward API.
	if !opts.IgnoreDeploymentEnv {
		dep, err := c.Clientset.AppsV1().Deployments(opts.Namespace).Get(ctx, d.ServiceName, metav1.GetOptions{})
		switch {
		case err == nil:
			d.env = append(d.env, deploymentEnv(dep)...)
		case !apierrors.IsNotFound(err):
			d.Mirror.Stop()
			return nil, err
		}
	}
	d.env = append(d.env,
		"POD_NAMESPACE="+opts.Namespace,
		"POD_NAME="+opts.PodName,
		"SERVICE_ACCOUNT=istiod"+suffix,
		"REVISION="+opts.Revision,
		"CLUSTER_ID=Kubernetes",
		"KUBECONFIG="+c.Kubeconfig,
	)
	d.env = append(d.env, opts.Env...)
	ctrlzHost, ctrlzPort, _ := net.SplitHostPort(d.CtrlzAddr)
	d.args = append([]string{
		"discovery",
		"--kubeconfig", c.Kubeconfig,
		"--httpsAddr", d.HTTPSAddr,
		"--secureGRPCAddr", d.SecureGRPCAddr,
		"--grpcAddr", d.GRPCAddr,
		"--httpAddr", d.HTTPAddr,
		"--monitoringAddr", d.MonitoringAddr,
		"--ctrlz_address", ctrlzHost,
		"--ctrlz_port", ctrlzPort,
		"--domain", "cluster.local",
	}, opts.Args...)

	if err := d.start(ctx); err != nil {
		d.Stop()
		return nil, err
	}
	return d, nil
}

// deploymentEnv returns the literal (value, not valueFrom) env of the Deployment's first
// container, without KUBECONFIG (the chart points it at a remote-cluster secret).
func deploymentEnv(dep *appsv1.Deployment) []string {
	var env []string
	if len(dep.Spec.Template.Spec.Containers) == 0 {
		return nil
	}
	for _, e := range dep.Spec.Template.Spec.Containers[0].Env {
		if e.ValueFrom != nil || e.Name == "KUBECONFIG" {
			continue
		}
		env = append(env, e.Name+"="+e.Value)
	}
	return env
}

// start launches pilot-discovery and waits for GET HTTPAddr/ready to answer 200.
func (d *Istiod) start(ctx context.Context) error {
	p, err := StartProcess(ProcessOptions{
		Name:    "istiod-" + d.Revision,
		Path:    Bin("pilot-discovery"),
		Args:    d.args,
		Env:     d.env,
		Dir:     d.WorkDir,
		LogPath: d.LogPath,
	})
	if err != nil {
		return err
	}
	d.Process = p
	if err := WaitHTTPOK(ctx, "http://"+d.HTTPAddr+"/ready", p); err != nil {
		return fmt.Errorf("harness: istiod %s not ready: %w\n--- %s (tail):\n%s", d.Revision, err, d.LogPath, p.LogTail(4000))
	}
	return nil
}

// Restart stops istiod (SIGTERM) and starts it again with the same addresses and files,
// waiting until it is ready: what a pod restart does (e.g. to pick up new ./etc/cacerts/).
func (d *Istiod) Restart(ctx context.Context) error {
	if err := d.Process.Stop(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	return d.start(ctx)
}

// Stop ends istiod and the file mirror. Safe to call more than once.
func (d *Istiod) Stop() error {
	var err error
	if d.Process != nil {
		err = d.Process.Stop()
	}
	if d.Mirror != nil {
		d.Mirror.Stop()
		err = errors.Join(err, d.Mirror.Err())
	}
	return err
}

// LogTail returns up to the last n bytes of istiod's log.
func (d *Istiod) LogTail(n int) string { return fileTail(d.LogPath, n) }
