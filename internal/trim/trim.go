// Package trim hands the memory of a burst of work back to the operating system once the
// operator has gone quiet again.
//
// The operator is idle nearly all the time, and its work comes in bursts: an install or an
// upgrade renders Istio's charts and decodes their objects, tens of megabytes of garbage in
// a second. Go's collector frees that garbage but keeps the pages for reuse, returning them
// to the system only slowly, so without help the operator would hold the memory of its
// last burst for minutes. The Trimmer watches how fast the operator allocates and, once a
// burst is over, runs one collection that returns the free pages (debug.FreeOSMemory).
package trim

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"k8s.io/utils/clock"
)

// Defaults of a Trimmer.
const (
	// DefaultBurst is how much must have been allocated since the last trim for a trim to
	// be worth its collection. It is about a quarter of the heap an installed operator
	// keeps: the reconciles that follow an install's own (a Deployment becoming
	// available, a status write echoed back) allocate a few megabytes after the install's
	// trim, and Go keeps the pages that garbage leaves, so a threshold above that left
	// 2-3 MiB of RSS in place for good. An idle operator (lease renewals, watch bookmarks)
	// takes minutes to allocate this much, so it costs one collection now and then.
	DefaultBurst = 2 << 20
	// DefaultQuiet is how long allocation must stay below DefaultIdleRate before a trim:
	// longer than the pauses inside one burst of reconciles. A trim that comes too early
	// costs one collection of a heap of a few megabytes, a few milliseconds.
	DefaultQuiet = time.Second
	// DefaultIdleRate is the allocation rate, in bytes per second, that counts as quiet:
	// an idle operator's watches and lease renewals allocate far less.
	DefaultIdleRate = 1 << 20
	// DefaultInterval is how often the allocation counter is read.
	DefaultInterval = 500 * time.Millisecond
)

// Trimmer is a manager Runnable (it runs on every replica, leader or not) that returns
// memory to the operating system after each burst of allocation. The zero value uses the
// defaults above.
type Trimmer struct {
	Burst, IdleRate uint64
	Quiet, Interval time.Duration
	// Clock and Allocated and Free are for tests: the time source, the count of bytes
	// allocated so far, and what a trim does.
	Clock     clock.WithTicker
	Allocated func() uint64
	Free      func()
}

// Start runs the Trimmer until ctx ends.
func (t *Trimmer) Start(ctx context.Context) error {
	t.defaults()
	tick := t.Clock.NewTicker(t.Interval)
	defer tick.Stop()
	w := newWatch(t.Allocated())
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C():
			if w.observe(t.Allocated(), t.Interval, t.Burst, t.IdleRate, t.Quiet) {
				t.Free()
				w.trimmed(t.Allocated())
			}
		}
	}
}

// watch is what the Trimmer remembers between two readings of the allocation counter.
type watch struct {
	last     uint64        // at the previous reading
	atTrim   uint64        // at the previous trim (or the start)
	quietFor time.Duration // how long allocation has been at the idle rate or below
}

func newWatch(allocated uint64) *watch { return &watch{last: allocated, atTrim: allocated} }

// observe takes a reading of the counter, interval after the previous one, and says
// whether to trim now: a burst's worth was allocated since the last trim, and allocation
// has been quiet for quiet.
func (w *watch) observe(allocated uint64, interval time.Duration, burst, idleRate uint64, quiet time.Duration) bool {
	delta := allocated - w.last
	w.last = allocated
	if float64(delta) > float64(idleRate)*interval.Seconds() {
		w.quietFor = 0
		return false
	}
	w.quietFor += interval
	return allocated-w.atTrim >= burst && w.quietFor >= quiet
}

// trimmed records a trim; allocated is the counter after it.
func (w *watch) trimmed(allocated uint64) {
	w.last, w.atTrim = allocated, allocated
}

// NeedLeaderElection is false: every replica holds its own memory.
func (t *Trimmer) NeedLeaderElection() bool { return false }

func (t *Trimmer) defaults() {
	if t.Burst == 0 {
		t.Burst = DefaultBurst
	}
	if t.IdleRate == 0 {
		t.IdleRate = DefaultIdleRate
	}
	if t.Quiet == 0 {
		t.Quiet = DefaultQuiet
	}
	if t.Interval == 0 {
		t.Interval = DefaultInterval
	}
	if t.Clock == nil {
		t.Clock = clock.RealClock{}
	}
	if t.Allocated == nil {
		t.Allocated = heapAllocated
	}
	if t.Free == nil {
		t.Free = debug.FreeOSMemory
	}
}

// heapAllocated is the bytes allocated on the heap since the process started.
func heapAllocated() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}
