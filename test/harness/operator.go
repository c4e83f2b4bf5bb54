package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
)

// Capstan's own objects in a harness cluster, as config/ deploys them.
const (
	OperatorNamespace      = "capstan-system"
	OperatorServiceAccount = "capstan"
	// OperatorUser is the name the apiserver (and its audit log) knows the operator by.
	OperatorUser = "system:serviceaccount:" + OperatorNamespace + ":" + OperatorServiceAccount
)

// InstallCapstan installs the MeshControlPlane CRD and the operator's RBAC from config/ (the
// same files `make deploy` uses) and waits until the CRD is served.
func InstallCapstan(ctx context.Context, c *Cluster) error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	if _, err := c.Kubectl(ctx, "create", "namespace", OperatorNamespace); err != nil {
		return err
	}
	for _, dir := range []string{"config/crd", "config/rbac"} {
		if _, err := c.Kubectl(ctx, "apply", "--server-side", "-k", filepath.Join(root, dir)); err != nil {
			return err
		}
	}
	_, err = c.Kubectl(ctx, "wait", "--for=condition=Established", "--timeout=60s", "crd/meshcontrolplanes.mesh.capstan.dev")
	return err
}

// OperatorOptions configure StartOperator.
type OperatorOptions struct {
	// WorkDir holds the operator's kubeconfig and log; default: the cluster's WorkDir.
	WorkDir string
	// LeaderElect runs leader election, as the deployed operator does.
	LeaderElect bool
	// Args are extra flags.
	Args []string
	// Env is added to the operator's environment (KEY=VALUE), such as what the Deployment
	// sets through the downward API (POD_NAMESPACE, GOMEMLIMIT).
	Env []string
}

// Operator is the Capstan binary running as a local process, with its ServiceAccount's
// identity and RBAC (so RBAC gaps fail tests instead of hiding behind an admin kubeconfig).
type Operator struct {
	*Process
	// Kubeconfig is the ServiceAccount kubeconfig the operator runs with.
	Kubeconfig string
	// ProbeAddr serves /healthz and /readyz.
	ProbeAddr string
}

// StartOperator runs bin/capstan against the cluster as the capstan ServiceAccount that
// InstallCapstan bound to config/rbac, and waits until it reports ready.
func StartOperator(ctx context.Context, c *Cluster, opts OperatorOptions) (*Operator, error) {
	dir := opts.WorkDir
	if dir == "" {
		dir = filepath.Join(c.WorkDir, "capstan")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	kubeconfig, err := serviceAccountKubeconfig(ctx, c, filepath.Join(dir, "kubeconfig"))
	if err != nil {
		return nil, err
	}
	probe, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	args := []string{"--kubeconfig", kubeconfig, "--health-probe-bind-address", probe, "--metrics-bind-address", "0", "--enable-webhooks=false", "--zap-devel"}
	if opts.LeaderElect {
		args = append(args, "--leader-elect", "--leader-election-namespace", OperatorNamespace)
	}
	p, err := StartProcess(ProcessOptions{
		Name:    "capstan",
		Path:    Bin("capstan"),
		Args:    append(args, opts.Args...),
		Env:     opts.Env,
		LogPath: filepath.Join(dir, "capstan.log"),
	})
	if err != nil {
		return nil, err
	}
	waitCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := WaitHTTPOK(waitCtx, "http://"+probe+"/readyz", p); err != nil {
		_ = p.Stop()
		return nil, fmt.Errorf("capstan did not become ready: %w\n%s", err, p.LogTail(30))
	}
	return &Operator{Process: p, Kubeconfig: kubeconfig, ProbeAddr: probe}, nil
}

// serviceAccountKubeconfig writes a kubeconfig that authenticates as the operator's
// ServiceAccount with a bound token.
func serviceAccountKubeconfig(ctx context.Context, c *Cluster, path string) (string, error) {
	tr, err := c.Clientset.CoreV1().ServiceAccounts(OperatorNamespace).CreateToken(ctx, OperatorServiceAccount,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](24 * 3600)}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for %s: %w", OperatorUser, err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["local"] = &clientcmdapi.Cluster{Server: c.RESTConfig.Host, CertificateAuthorityData: c.RESTConfig.CAData, InsecureSkipTLSVerify: c.RESTConfig.Insecure}
	if c.RESTConfig.CAFile != "" {
		cfg.Clusters["local"].CertificateAuthority = c.RESTConfig.CAFile
	}
	cfg.AuthInfos["capstan"] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	cfg.Contexts["capstan"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: "capstan"}
	cfg.CurrentContext = "capstan"
	return path, clientcmd.WriteToFile(*cfg, path)
}
