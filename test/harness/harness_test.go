package harness

// Unit tests of the parts that need no cluster (and open no sockets); they run with a plain
// `go test ./...` anywhere. The cluster test is harness_e2e_test.go (build tag e2e).

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

func TestRepoRootAndBin(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !isCapstanGoMod(b) {
		t.Fatalf("RepoRoot %s holds no Capstan go.mod (%v)", root, err)
	}
	if got, want := Bin("kubectl"), filepath.Join(root, "bin", "kubectl"); got != want {
		t.Fatalf("Bin(kubectl) = %s, want %s", got, want)
	}
	if err := RequireBins("no-such-tool"); err == nil || !strings.Contains(err.Error(), "make tools") {
		t.Fatalf("RequireBins(no-such-tool) = %v, want an error that says to run make tools", err)
	}
}

func TestSyncDir(t *testing.T) {
	dir := t.TempDir()
	if err := syncDir(dir, map[string][]byte{"a": []byte("1"), "b": []byte("2")}); err != nil {
		t.Fatal(err)
	}
	if err := syncDir(dir, map[string][]byte{"b": []byte("3"), "../evil": []byte("x")}); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != "b" {
		t.Fatalf("dir holds %v, want only b", entries)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "b")); string(b) != "3" {
		t.Fatalf("b = %q, want 3", b)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "evil")); err == nil {
		t.Fatal("a key with a path separator escaped the directory")
	}
	if err := syncDir(dir, nil); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("an absent object must empty the directory, have %v", entries)
	}
}

func TestProcessStopKillAndLog(t *testing.T) {
	log := filepath.Join(t.TempDir(), "p.log")
	// AllowHostNetwork: sh and sleep open no sockets.
	p, err := StartProcess(ProcessOptions{Path: "/bin/sh", Args: []string{"-c", "echo started; exec sleep 300"}, LogPath: log, AllowHostNetwork: true})
	if err != nil {
		t.Fatal(err)
	}
	waitLog(t, p, "started")
	if p.Exited() {
		t.Fatal("exec sleep 300 exited on its own")
	}
	if err := p.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if !p.Exited() {
		t.Fatal("Stop returned before the process exited")
	}

	// A process that ignores SIGTERM is killed after the stop timeout, and Stop says so.
	p, err = StartProcess(ProcessOptions{Path: "/bin/sh", Args: []string{"-c", `trap "" TERM; echo trapped; exec sleep 300`},
		LogPath: log, StopTimeout: 300 * time.Millisecond, AllowHostNetwork: true})
	if err != nil {
		t.Fatal(err)
	}
	waitLog(t, p, "trapped")
	if err := p.Stop(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("Stop of a process ignoring SIGTERM = %v, want a killed error", err)
	}

	p, err = StartProcess(ProcessOptions{Path: "/bin/sh", Args: []string{"-c", "exec sleep 300"}, AllowHostNetwork: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Wait(ctx); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("exit error after Kill = %v, want signal: killed", err)
	}
}

// waitLog waits until p's log holds s.
func waitLog(t *testing.T, p *Process, s string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		return strings.Contains(p.LogTail(1000), s), nil
	})
	if err != nil {
		t.Fatalf("the log of %s never got %q: %q", p.Name, s, p.LogTail(1000))
	}
}
