package harness

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// ProcessOptions describe a local process started by StartProcess: the operator binary, istiod,
// or any helper a test needs.
type ProcessOptions struct {
	// Name labels the process in errors; default: the base name of Path.
	Name string
	// Path is the executable (for example Bin("capstan")).
	Path string
	// Args are the arguments, without the program name.
	Args []string
	// Env is added to this process's environment (KEY=VALUE; later entries win).
	Env []string
	// Dir is the working directory; default: the test's working directory.
	Dir string
	// LogPath receives the process's stdout and stderr (appended, so a restarted process keeps
	// its history); default: discarded. The directory is created.
	LogPath string
	// StopTimeout is how long Stop waits after SIGTERM before SIGKILL; default
	// DefaultStopTimeout.
	StopTimeout time.Duration
	// AllowHostNetwork skips the loopback-only network namespace check. Only for processes
	// that open no sockets at all; never set it for anything that talks to a cluster.
	AllowHostNetwork bool
}

// Process is a running local process. Its methods are safe for concurrent use.
type Process struct {
	// Name and LogPath are copied from the options.
	Name    string
	LogPath string
	// Cmd is the underlying command; do not Wait on it (Process does).
	Cmd *exec.Cmd

	done        chan struct{}
	waitErr     error
	stopMu      sync.Mutex
	log         *os.File
	stopTimeout time.Duration
}

// StartProcess starts a process and returns at once; it does not wait for it to be ready.
// Stop it with Stop (graceful) or Kill (a crash).
func StartProcess(opts ProcessOptions) (*Process, error) {
	if !opts.AllowHostNetwork {
		if err := RequireLoopbackNetns(); err != nil {
			return nil, err
		}
	}
	if opts.Name == "" {
		opts.Name = filepath.Base(opts.Path)
	}
	cmd := exec.Command(opts.Path, opts.Args...)
	cmd.Dir = opts.Dir
	cmd.Env = append(os.Environ(), opts.Env...)
	if opts.StopTimeout <= 0 {
		opts.StopTimeout = DefaultStopTimeout
	}
	p := &Process{Name: opts.Name, LogPath: opts.LogPath, Cmd: cmd, done: make(chan struct{}), stopTimeout: opts.StopTimeout}
	if opts.LogPath != "" {
		if err := os.MkdirAll(filepath.Dir(opts.LogPath), 0o755); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(opts.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		p.log = f
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		if p.log != nil {
			p.log.Close()
		}
		return nil, fmt.Errorf("harness: starting %s: %w", opts.Name, err)
	}
	go func() {
		p.waitErr = cmd.Wait()
		if p.log != nil {
			p.log.Close()
		}
		close(p.done)
	}()
	return p, nil
}

// PID is the process id.
func (p *Process) PID() int { return p.Cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitErr is the process's exit error (nil for exit status 0); only meaningful once Exited.
func (p *Process) ExitErr() error {
	<-p.done
	return p.waitErr
}

// Wait waits until the process exits or ctx ends, and returns its exit error or ctx's error.
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.waitErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// DefaultStopTimeout is how long Stop waits after SIGTERM before it sends SIGKILL, unless
// ProcessOptions.StopTimeout says otherwise.
const DefaultStopTimeout = 10 * time.Second

// Stop ends the process gracefully: SIGTERM, then SIGKILL if it has not exited within the
// stop timeout. It returns an error only if the process had to be killed or could not be
// signalled; an exit status caused by the SIGTERM is not an error. Stopping an exited process
// is a no-op.
func (p *Process) Stop() error {
	p.stopMu.Lock()
	defer p.stopMu.Unlock()
	if p.Exited() {
		return nil
	}
	if err := p.Cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("harness: SIGTERM to %s: %w", p.Name, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(p.stopTimeout):
	}
	_ = p.Cmd.Process.Kill()
	<-p.done
	return fmt.Errorf("harness: %s ignored SIGTERM for %v and was killed", p.Name, p.stopTimeout)
}

// Kill ends the process at once with SIGKILL, as a crash or an OOM kill would, and waits
// until it is gone. Killing an exited process is a no-op.
func (p *Process) Kill() error {
	p.stopMu.Lock()
	defer p.stopMu.Unlock()
	if p.Exited() {
		return nil
	}
	if err := p.Cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("harness: SIGKILL to %s: %w", p.Name, err)
	}
	<-p.done
	return nil
}

// LogTail returns up to the last n bytes of the process's log file, for failure messages.
func (p *Process) LogTail(n int) string { return fileTail(p.LogPath, n) }

// fileTail returns up to the last n bytes of the file at path ("" if unreadable).
func fileTail(path string, n int) string {
	if path == "" {
		return ""
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// WaitHTTPOK polls GET url every 200ms until it answers 200 OK or ctx ends; if p is not nil
// and exits first, it fails at once with p's exit error. Use it for readiness endpoints
// (istiod's /ready, the operator's /readyz).
func WaitHTTPOK(ctx context.Context, url string, p *Process) error {
	client := &http.Client{Timeout: 2 * time.Second}
	var last string
	err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		if p != nil && p.Exited() {
			return false, fmt.Errorf("%s exited: %v", p.Name, p.ExitErr())
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, err
		}
		resp, err := client.Do(req)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		resp.Body.Close()
		last = resp.Status
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		return fmt.Errorf("GET %s (last: %s): %w", url, last, err)
	}
	return nil
}
