//go:build e2e

package e2e

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"path/filepath"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/capstan-mesh/capstan/test/harness"
)

var _ = Describe("the metrics endpoint", func() {
	// A second operator process, standing by for the leader election the first one holds:
	// its metrics server runs all the same, secured as the Deployment runs it.
	It("serves metrics over HTTPS only to callers allowed to GET /metrics", func(ctx SpecContext) {
		addr, err := harness.FreeAddr()
		Expect(err).NotTo(HaveOccurred())
		op, err := harness.StartOperator(ctx, cluster, harness.OperatorOptions{
			WorkDir:     filepath.Join(cluster.WorkDir, "capstan-metrics"),
			LeaderElect: true,
			Args:        []string{"--metrics-bind-address", addr},
		})
		Expect(err).NotTo(HaveOccurred())
		defer func() { Expect(op.Stop()).To(Succeed()) }()

		root, err := harness.RepoRoot()
		Expect(err).NotTo(HaveOccurred())
		_, err = cluster.Kubectl(ctx, "apply", "-f", filepath.Join(root, "config/metrics/reader_role.yaml"))
		Expect(err).NotTo(HaveOccurred())
		cs := cluster.Clientset
		for _, name := range []string{"prometheus", "stranger"} {
			_, err := cs.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
			Expect(err).NotTo(HaveOccurred())
		}
		_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "prometheus-reads-capstan"},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "capstan-metrics-reader"},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "default", Name: "prometheus"}},
		}, metav1.CreateOptions{})
		Expect(err).NotTo(HaveOccurred())

		get := func(ctx context.Context, token string) (int, string, string) {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/metrics", nil)
			Expect(err).NotTo(HaveOccurred())
			if token != "" {
				req.Header.Set("Authorization", "Bearer "+token)
			}
			// The server's certificate is self-signed when no certificate is given.
			c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // test client
			resp, err := c.Do(req)
			if err != nil {
				return 0, "", err.Error()
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, resp.Proto, string(body)
		}
		token := func(name string) string {
			tr, err := cs.CoreV1().ServiceAccounts("default").CreateToken(ctx, name, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
			Expect(err).NotTo(HaveOccurred())
			return tr.Status.Token
		}

		Eventually(func(g Gomega) {
			code, _, _ := get(ctx, "")
			g.Expect(code).To(Equal(http.StatusUnauthorized), "no token")
		}).Should(Succeed())
		code, _, _ := get(ctx, token("stranger"))
		Expect(code).To(Equal(http.StatusForbidden), "a caller without capstan-metrics-reader")
		Eventually(func(g Gomega) {
			code, proto, body := get(ctx, token("prometheus"))
			g.Expect(code).To(Equal(http.StatusOK), body)
			g.Expect(proto).To(Equal("HTTP/1.1"), "HTTP/2 is off by default")
			g.Expect(body).To(ContainSubstring("# TYPE controller_runtime_"), "the operator's own metrics registry")
		}).Should(Succeed())
	})
})
