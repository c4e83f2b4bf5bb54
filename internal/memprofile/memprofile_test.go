package memprofile

import (
	"runtime"
	"testing"
)

func TestProfilingIsOffUntilEnabled(t *testing.T) {
	if setByGODEBUG() {
		t.Skip("GODEBUG sets memprofilerate for this run; the package leaves it alone")
	}
	if runtime.MemProfileRate != 0 {
		t.Fatalf("after init MemProfileRate = %d, want 0", runtime.MemProfileRate)
	}
	t.Cleanup(func() { runtime.MemProfileRate = 0 })
	Enable()
	if runtime.MemProfileRate != DefaultRate {
		t.Fatalf("after Enable MemProfileRate = %d, want %d", runtime.MemProfileRate, DefaultRate)
	}
}

func TestGODEBUGChoiceIsKept(t *testing.T) {
	for godebug, want := range map[string]bool{
		"":                            false,
		"gctrace=1":                   false,
		"memprofilerate=1":            true,
		"gctrace=1, memprofilerate=0": true,
		"xmemprofilerate=1":           false,
	} {
		t.Setenv("GODEBUG", godebug)
		if got := setByGODEBUG(); got != want {
			t.Errorf("GODEBUG=%q: set by GODEBUG = %v, want %v", godebug, got, want)
		}
	}
}
