package trim

import (
	"runtime"
	"runtime/debug"
	"testing"
)

// TestTrimsOnceQuietWithMemoryToReturn drives the decision with readings taken every half
// second: a trim comes only once allocation has stayed quiet for DefaultQuiet (one second:
// two readings) and the heap holds DefaultReclaimable or more that a trim would return.
func TestTrimsOnceQuietWithMemoryToReturn(t *testing.T) {
	const mib = 1 << 20
	type tick struct {
		allocated   uint64 // bytes allocated since the previous reading
		reclaimable uint64
	}
	cases := map[string]struct {
		ticks []tick
		want  []int
	}{
		"an idle operator with nothing to return is never trimmed": {
			ticks: []tick{{1000, 0}, {1000, 0}, {1000, 0}, {1000, 0}, {1000, 0}},
		},
		"a burst is trimmed once the quiet period has passed": {
			ticks: []tick{{10 * mib, 8 * mib}, {10 * mib, 16 * mib}, {1000, 16 * mib}, {1000, 16 * mib}, {1000, 0}},
			want:  []int{3},
		},
		"allocation in the quiet period starts it again": {
			ticks: []tick{{10 * mib, 9 * mib}, {1000, 9 * mib}, {2 * mib, 11 * mib}, {1000, 11 * mib}, {1000, 11 * mib}},
			want:  []int{4},
		},
		"garbage of a reconcile that ended while all was quiet is trimmed": {
			// A reconcile waits on the apiserver, allocating nothing; its objects become
			// garbage when it returns, after the trim that came during the wait. (After
			// each trim, the next reading has nothing left to return.)
			ticks: []tick{{10 * mib, 9 * mib}, {1000, 9 * mib}, {1000, 9 * mib}, {1000, 0}, {1000, 5 * mib}, {1000, 0}},
			want:  []int{2, 4},
		},
		"little to return is left to the collector": {
			ticks: []tick{{3 * mib, 1 * mib}, {1000, 1 * mib}, {1000, 1 * mib}, {1000, 1 * mib}},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			var allocated uint64
			w := &watch{}
			var got []int
			for i, tk := range tc.ticks {
				allocated += tk.allocated
				if w.observe(Reading{Allocated: allocated, Reclaimable: tk.reclaimable}, DefaultInterval, DefaultReclaimable, DefaultIdleRate, DefaultQuiet) {
					got = append(got, i)
				}
			}
			if len(got) != len(tc.want) {
				t.Fatalf("trims at readings %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("trims at readings %v, want %v", got, tc.want)
				}
			}
		})
	}
}

var sink []byte

// TestReadSeesGarbage checks the counters the Trimmer reads: allocation moves Allocated,
// and a dropped allocation shows as reclaimable until a trim returns it.
func TestReadSeesGarbage(t *testing.T) {
	// No collection may run on its own between the allocation and the readings: one would
	// free the garbage, and the scavenger return it, before the test looks.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	runtime.GC()
	before := read()
	sink = make([]byte, 8<<20)
	after := read()
	if after.Allocated-before.Allocated < 8<<20 {
		t.Fatalf("allocated %d bytes, the counter moved by %d", 8<<20, after.Allocated-before.Allocated)
	}
	sink = nil
	if r := read(); r.Reclaimable < 8<<20 {
		t.Fatalf("8 MiB of garbage, %d bytes reclaimable", r.Reclaimable)
	}
	debug.FreeOSMemory() // what a trim does
	if r := read(); r.Reclaimable >= 8<<20 {
		t.Fatalf("after a trim, %d bytes still reclaimable", r.Reclaimable)
	}
}
