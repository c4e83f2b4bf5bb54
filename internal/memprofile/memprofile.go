// Package memprofile turns Go's heap profiling off while the packages after it initialise,
// and lets main turn it back on when someone can read the profile.
//
// The runtime samples one allocation in every 512 KiB for the heap profile, from the
// program's first allocation on. Its first sample allocates a 1.4 MB table of stack
// buckets, and each later sample, hashed by its call stack, touches a page of it at random:
// within an install most of the table is resident, about 1.4 MiB of the operator's memory
// spent on a profile that nobody can fetch unless the pprof endpoint is on.
//
// Import this package, for its init only, from main and from nothing else. Go initialises
// packages by import path once their own imports are done, and this one imports only the
// runtime and os, so it runs before the Kubernetes and Helm packages whose initialisers
// allocate the most.
package memprofile

import (
	"os"
	"runtime"
	"strings"
)

// DefaultRate is the runtime's own sampling rate, one sample per 512 KiB allocated.
const DefaultRate = 512 * 1024

func init() {
	if setByGODEBUG() {
		return // GODEBUG=memprofilerate=N is an explicit choice; keep it
	}
	runtime.MemProfileRate = 0
}

// Enable turns heap profiling back on at the runtime's default rate (unless GODEBUG chose
// one). The profile then shows what was allocated from this call on, not what package
// initialisation allocated before it.
func Enable() {
	if !setByGODEBUG() {
		runtime.MemProfileRate = DefaultRate
	}
}

func setByGODEBUG() bool {
	for _, kv := range strings.Split(os.Getenv("GODEBUG"), ",") {
		if strings.HasPrefix(strings.TrimSpace(kv), "memprofilerate=") {
			return true
		}
	}
	return false
}
