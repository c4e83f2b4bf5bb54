//go:build !e2e

package harness

import (
	"context"
	"strings"
	"testing"
)

// This test runs on the host, outside any network namespace (make test-unit); the e2e
// binary, which runs inside a loopback-only namespace, does not carry it.

func TestStartProcessRefusesHostNetwork(t *testing.T) {
	if RequireLoopbackNetns() == nil {
		t.Skip("running inside a loopback-only network namespace")
	}
	if _, err := StartProcess(ProcessOptions{Path: "/bin/true"}); err == nil || !strings.Contains(err.Error(), "REFUSING") {
		t.Fatalf("StartProcess outside a loopback-only namespace = %v, want a refusal", err)
	}
	if _, err := StartCluster(context.Background(), ClusterOptions{}); err == nil || !strings.Contains(err.Error(), "REFUSING") {
		t.Fatalf("StartCluster outside a loopback-only namespace = %v, want a refusal", err)
	}
}
