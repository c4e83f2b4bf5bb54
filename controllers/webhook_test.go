package controllers_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1"
	"github.com/capstan-mesh/capstan/controllers"
	capstanwebhook "github.com/capstan-mesh/capstan/internal/webhook"
)

// TestWebhookAgainstAPIServer serves the validating webhook from a manager and lets a real
// kube-apiserver (envtest) call it, through the webhook configuration `make manifests`
// generates (envtest points it at the local server and gives both ends a CA). The operator
// here runs in capstan-system, as POD_NAMESPACE would say in its pod.
func TestWebhookAgainstAPIServer(t *testing.T) {
	env := newTestEnv(filepath.Join("..", "config", "webhook", "manifests.yaml"))
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = env.Stop() }()

	scheme, err := controllers.NewTestScheme()
	if err != nil {
		t.Fatal(err)
	}
	wo := env.WebhookInstallOptions
	opts := controllers.ManagerOptions(scheme)
	opts.Metrics = metricsserver.Options{BindAddress: "0"}
	opts.WebhookServer = webhook.NewServer(webhook.Options{Host: wo.LocalServingHost, Port: wo.LocalServingPort, CertDir: wo.LocalServingCertDir})
	mgr, err := ctrl.NewManager(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := capstanwebhook.SetupWithManager(mgr, capstanwebhook.Validator{OperatorNamespace: "capstan-system"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = mgr.Start(ctx) }()
	addr := net.JoinHostPort(wo.LocalServingHost, fmt.Sprint(wo.LocalServingPort))
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // only probing that it listens
		if err != nil {
			return false, nil
		}
		return true, conn.Close()
	}); err != nil {
		t.Fatalf("webhook server never listened on %s: %v", addr, err)
	}

	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	m := &meshv1.MeshControlPlane{ObjectMeta: metav1.ObjectMeta{Name: meshv1.SingletonName}, Spec: meshv1.MeshControlPlaneSpec{Version: "1.99.0"}}
	err = c.Create(ctx, m)
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.version") || !strings.Contains(err.Error(), "not supported by this Capstan") {
		t.Fatalf("creating with an unsupported version: %v; want the webhook's refusal naming spec.version", err)
	}

	m.Spec.Version = "1.31.1"
	m.Spec.Namespace = "capstan-system"
	err = c.Create(ctx, m)
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.namespace") || !strings.Contains(err.Error(), "operator's own namespace") {
		t.Fatalf("creating in the operator's namespace: %v; want the webhook's refusal naming spec.namespace", err)
	}

	m.Spec.Namespace = ""
	if err := c.Create(ctx, m); err != nil {
		t.Fatalf("creating with the embedded version: %v", err)
	}
	m.Status.Version = "1.31.1"
	if err := c.Status().Update(ctx, m); err != nil {
		t.Fatal(err)
	}

	m.Spec.Version = "1.99.0"
	if err := c.Update(ctx, m); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.version") {
		t.Fatalf("updating to an unsupported version: %v; want a refusal", err)
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(m), m); err != nil {
		t.Fatal(err)
	}
	m.Spec.Version = "1.31.4"
	if err := c.Update(ctx, m); err != nil {
		t.Fatalf("a patch upgrade was refused: %v", err)
	}
	if err := c.Delete(ctx, m); err != nil {
		t.Fatalf("deletion was refused: %v", err)
	}
}
