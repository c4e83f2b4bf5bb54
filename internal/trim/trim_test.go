package trim

import "testing"

// TestTrimsOnceAfterEachBurst drives the decision with readings of the allocation counter
// taken every half second: a trim comes only once a burst's worth has been allocated and
// allocation has then stayed quiet for DefaultQuiet (one second: two readings), and only
// once per burst.
func TestTrimsOnceAfterEachBurst(t *testing.T) {
	const mib = 1 << 20
	cases := map[string]struct {
		perTick []uint64 // bytes allocated before each reading
		want    []int    // readings (0-based) at which a trim is due
	}{
		"an idle operator is never trimmed": {
			perTick: []uint64{1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000},
		},
		"a burst is trimmed once the quiet period has passed": {
			// 20 MiB in a second, then quiet: trim at the second quiet reading.
			perTick: []uint64{10 * mib, 10 * mib, 1000, 1000, 1000, 1000, 1000, 1000},
			want:    []int{3},
		},
		"allocation in the quiet period starts it again": {
			perTick: []uint64{10 * mib, 1000, 2 * mib, 1000, 1000, 1000, 1000},
			want:    []int{4},
		},
		"small allocations add up to a burst": {
			// 100 KiB each half second is below the idle rate; 2 MiB is passed at the 21st.
			perTick: repeat(100<<10, 24),
			want:    []int{20},
		},
		"two bursts, two trims": {
			perTick: []uint64{9 * mib, 1000, 1000, 1000, 9 * mib, 1000, 1000, 1000},
			want:    []int{2, 6},
		},
		"a burst below the threshold is left to the collector": {
			perTick: []uint64{1 * mib, 1000, 1000, 1000, 1000, 1000, 1000},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			var allocated uint64
			w := newWatch(allocated)
			var got []int
			for i, n := range tc.perTick {
				allocated += n
				if w.observe(allocated, DefaultInterval, DefaultBurst, DefaultIdleRate, DefaultQuiet) {
					got = append(got, i)
					w.trimmed(allocated)
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

func repeat(n uint64, times int) []uint64 {
	out := make([]uint64, times)
	for i := range out {
		out[i] = n
	}
	return out
}

// TestHeapAllocatedCounts checks that the counter the Trimmer reads moves with allocation.
func TestHeapAllocatedCounts(t *testing.T) {
	before := heapAllocated()
	sink = make([]byte, 4<<20)
	if after := heapAllocated(); after-before < 4<<20 {
		t.Fatalf("allocated %d bytes, the counter moved by %d", 4<<20, after-before)
	}
}

var sink []byte
