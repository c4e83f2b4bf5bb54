// Package trim hands the memory of a burst of work back to the operating system once the
// operator has gone quiet again.
//
// The operator is idle nearly all the time, and its work comes in bursts: an install or an
// upgrade renders Istio's charts and decodes their objects, megabytes of garbage in a
// second. Go's collector frees that garbage only when the heap next grows enough to start
// a collection, which an idle operator may not do for minutes, and then keeps the freed
// pages for reuse, returning them to the system only slowly. So without help the
// operator would hold the memory of its last burst long after it. The Trimmer watches
// how fast the operator allocates and how much of its heap is not live, and once a burst
// is over, runs one collection that returns the free pages (debug.FreeOSMemory).
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
	// DefaultReclaimable is how much of the heap must be garbage or free pages for a trim
	// to be worth its collection: about a third of the heap an installed operator keeps
	// live (~6 MB).
	DefaultReclaimable = 2 << 20
	// DefaultQuiet is how long allocation must stay below DefaultIdleRate before a trim:
	// longer than the pauses inside one burst of reconciles. A trim that comes too early
	// costs one collection of a heap of a few megabytes, a few milliseconds.
	DefaultQuiet = time.Second
	// DefaultIdleRate is the allocation rate, in bytes per second, that counts as quiet:
	// an idle operator's watches and lease renewals allocate far less.
	DefaultIdleRate = 1 << 20
	// DefaultInterval is how often the runtime's counters are read.
	DefaultInterval = 500 * time.Millisecond
)

// Trimmer is a manager Runnable (it runs on every replica, leader or not) that returns
// memory to the operating system after each burst of allocation. The zero value uses the
// defaults above.
type Trimmer struct {
	Reclaimable, IdleRate uint64
	Quiet, Interval       time.Duration
	// Clock, Read and Free are for tests: the time source, a reading of the runtime's
	// counters, and what a trim does.
	Clock clock.WithTicker
	Read  func() Reading
	Free  func()
}

// Reading is what the Trimmer reads of the runtime each interval.
type Reading struct {
	// Allocated is the bytes allocated on the heap since the process started.
	Allocated uint64
	// Reclaimable is the heap's bytes that a collection and a scavenge would return to
	// the system: objects not found live by the last collection (garbage, or allocated
	// since), and free pages not yet returned.
	Reclaimable uint64
}

// Start runs the Trimmer until ctx ends.
func (t *Trimmer) Start(ctx context.Context) error {
	t.defaults()
	tick := t.Clock.NewTicker(t.Interval)
	defer tick.Stop()
	w := &watch{last: t.Read().Allocated}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C():
			if w.observe(t.Read(), t.Interval, t.Reclaimable, t.IdleRate, t.Quiet) {
				t.Free()
			}
		}
	}
}

// watch is what the Trimmer remembers between two readings.
type watch struct {
	last     uint64        // bytes allocated at the previous reading
	quietFor time.Duration // how long allocation has been at the idle rate or below
}

// observe takes a reading, interval after the previous one, and says whether to trim now:
// allocation has been quiet for quiet, and at least reclaimable bytes of the heap would
// go back to the system.
func (w *watch) observe(r Reading, interval time.Duration, reclaimable, idleRate uint64, quiet time.Duration) bool {
	delta := r.Allocated - w.last
	w.last = r.Allocated
	if float64(delta) > float64(idleRate)*interval.Seconds() {
		w.quietFor = 0
		return false
	}
	w.quietFor += interval
	return w.quietFor >= quiet && r.Reclaimable >= reclaimable
}

// NeedLeaderElection is false: every replica holds its own memory.
func (t *Trimmer) NeedLeaderElection() bool { return false }

func (t *Trimmer) defaults() {
	if t.Reclaimable == 0 {
		t.Reclaimable = DefaultReclaimable
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
	if t.Read == nil {
		t.Read = read
	}
	if t.Free == nil {
		t.Free = debug.FreeOSMemory
	}
}

// read reads the runtime's counters.
func read() Reading {
	s := []metrics.Sample{
		{Name: "/gc/heap/allocs:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/gc/heap/live:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
	}
	metrics.Read(s)
	v := make([]uint64, len(s))
	for i := range s {
		if s[i].Value.Kind() == metrics.KindUint64 {
			v[i] = s[i].Value.Uint64()
		}
	}
	r := Reading{Allocated: v[0], Reclaimable: v[3]}
	if objects, live := v[1], v[2]; objects > live {
		r.Reclaimable += objects - live
	}
	return r
}
