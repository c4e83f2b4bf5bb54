package bench

import (
	"strings"
	"testing"
	"time"
)

const auditLog = `{"stage":"ResponseComplete","verb":"patch","requestURI":"/apis/apps/v1/namespaces/istio-system/deployments/istiod?fieldManager=capstan","user":{"username":"op"},"objectRef":{"resource":"deployments"},"requestReceivedTimestamp":"2026-01-01T00:00:01Z","stageTimestamp":"2026-01-01T00:00:01.2Z"}
{"stage":"ResponseComplete","verb":"patch","requestURI":"/apis/apps/v1/namespaces/istio-system/deployments/istiod?dryRun=All&fieldManager=capstan","user":{"username":"op"},"objectRef":{"resource":"deployments"},"requestReceivedTimestamp":"2026-01-01T00:00:01Z","stageTimestamp":"2026-01-01T00:00:01.1Z"}
{"stage":"RequestReceived","verb":"get","user":{"username":"op"},"requestReceivedTimestamp":"2026-01-01T00:00:02Z","stageTimestamp":"2026-01-01T00:00:02Z"}
{"stage":"ResponseComplete","verb":"get","user":{"username":"op"},"requestReceivedTimestamp":"2026-01-01T00:00:02Z","stageTimestamp":"2026-01-01T00:00:02Z"}
{"stage":"ResponseStarted","verb":"watch","user":{"username":"op"},"objectRef":{"resource":"configmaps"},"requestReceivedTimestamp":"2026-01-01T00:00:02Z","stageTimestamp":"2026-01-01T00:00:02Z"}
{"stage":"ResponseComplete","verb":"watch","user":{"username":"op"},"objectRef":{"resource":"configmaps"},"requestReceivedTimestamp":"2026-01-01T00:00:02Z","stageTimestamp":"2026-01-01T00:09:02Z"}
{"stage":"ResponseComplete","verb":"update","user":{"username":"op"},"objectRef":{"resource":"leases"},"requestReceivedTimestamp":"2026-01-01T00:00:03Z","stageTimestamp":"2026-01-01T00:00:03Z"}
{"stage":"ResponseComplete","verb":"create","user":{"username":"someone-else"},"requestReceivedTimestamp":"2026-01-01T00:00:03Z","stageTimestamp":"2026-01-01T00:00:03Z"}
{"stage":"ResponseComplete","verb":"delete","user":{"username":"op"},"objectRef":{"resource":"configmaps"},"requestReceivedTimestamp":"2026-01-01T00:00:09Z","stageTimestamp":"2026-01-01T00:00:09Z"}
`

func TestCountReadsOneUsersRequestsOnce(t *testing.T) {
	events, err := ReadAudit(strings.NewReader(auditLog), "op")
	if err != nil {
		t.Fatal(err)
	}
	at := func(s string) time.Time { t, _ := time.Parse(time.RFC3339, s); return t }
	c := Count(events, at("2026-01-01T00:00:00Z"), at("2026-01-01T00:00:05Z"))
	// patch, dry-run patch, get, watch (once), lease update
	if c.Total != 5 {
		t.Errorf("Total = %d, want 5 (%v)", c.Total, c.ByVerb)
	}
	if c.Writes != 1 {
		t.Errorf("Writes = %d, want 1: a dry run and a lease renewal are not writes", c.Writes)
	}
	if c.LeaseWrites != 1 {
		t.Errorf("LeaseWrites = %d, want 1", c.LeaseWrites)
	}
	if want := at("2026-01-01T00:00:01Z").Add(200 * time.Millisecond); !c.LastWrite.Equal(want) {
		t.Errorf("LastWrite = %v, want %v", c.LastWrite, want)
	}
}

func TestMedian(t *testing.T) {
	if m := Median([]float64{5, 1, 3}); m != 3 {
		t.Errorf("median of 5,1,3 = %v", m)
	}
	if m := Median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Errorf("median of 1..4 = %v", m)
	}
}
