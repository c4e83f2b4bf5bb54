package harness

import (
	"fmt"
	"net"
	"strings"
	"sync"
)

// RequireLoopbackNetns returns an error unless this process runs in a network namespace whose
// only interface is an up loopback, which guarantees that nothing a test starts (cluster,
// istiod, operator) can open a connection that leaves the machine. StartCluster, StartIstiod
// and StartProcess call it; tests may call it first to fail with a clear message.
//
// Run test binaries through hack/in-netns.sh (a fresh namespace per run) to satisfy it.
func RequireLoopbackNetns() error {
	ifs, err := net.Interfaces()
	if err != nil {
		return fmt.Errorf("harness: listing network interfaces: %w", err)
	}
	var names []string
	loUp := false
	for _, i := range ifs {
		names = append(names, i.Name)
		if i.Flags&net.FlagLoopback != 0 && i.Flags&net.FlagUp != 0 {
			loUp = true
		}
	}
	if len(ifs) != 1 || !loUp {
		return fmt.Errorf("harness: REFUSING to run outside a loopback-only network namespace "+
			"(interfaces here: %s; want only an up \"lo\"), so that no connection can leave the machine: "+
			"build the test binary (go test -c -tags e2e -o bin/x.test ./PKG) and run it with hack/in-netns.sh bin/x.test -test.v",
			strings.Join(names, ", "))
	}
	return nil
}

var (
	handedOutMu sync.Mutex
	handedOut   = map[string]bool{}
)

// FreeAddr returns a 127.0.0.1:PORT address whose port was free a moment ago (the kernel
// picked it), never the same one twice in this process. Another process could take the port
// before it is used; inside a test's own network namespace little else competes for ports.
func FreeAddr() (string, error) {
	handedOutMu.Lock()
	defer handedOutMu.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		addr := l.Addr().String()
		l.Close()
		if !handedOut[addr] {
			handedOut[addr] = true
			return addr, nil
		}
	}
	return "", fmt.Errorf("harness: no free port found")
}
