// Package bench measures Capstan on a local cluster: time to converge, the API requests it
// makes, and its memory. It runs from `make bench`, never from `make test`.
package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// AuditEvent is the part of an apiserver audit event (audit.k8s.io/v1) the benchmark reads.
type AuditEvent struct {
	Stage      string `json:"stage"`
	Verb       string `json:"verb"`
	RequestURI string `json:"requestURI"`
	User       struct {
		Username string `json:"username"`
	} `json:"user"`
	ObjectRef *struct {
		Resource  string `json:"resource"`
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"objectRef"`
	ResponseStatus *struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
	RequestReceivedTimestamp time.Time `json:"requestReceivedTimestamp"`
	StageTimestamp           time.Time `json:"stageTimestamp"`
}

// IsWrite says whether the request could change stored state; a dry run (read from the
// request URI) stores nothing.
func (e AuditEvent) IsWrite() bool {
	switch e.Verb {
	case "create", "update", "patch", "delete", "deletecollection", "apply":
		return !strings.Contains(e.RequestURI, "dryRun=All")
	}
	return false
}

// IsLease says whether the request is about a coordination Lease (leader election).
func (e AuditEvent) IsLease() bool {
	return e.ObjectRef != nil && e.ObjectRef.Resource == "leases"
}

// ReadAudit reads the completed requests of one user (every user for "") from an audit log
// in JSON lines. Long running requests (watches) are counted once, when they start.
func ReadAudit(r io.Reader, user string) ([]AuditEvent, error) {
	var out []AuditEvent
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e AuditEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("audit log: %w", err)
		}
		if user != "" && e.User.Username != user {
			continue
		}
		if (e.Verb == "watch" && e.Stage == "ResponseStarted") || (e.Verb != "watch" && e.Stage == "ResponseComplete") {
			out = append(out, e)
		}
	}
	return out, sc.Err()
}

// Counts summarises requests in a window.
type Counts struct {
	Total, Writes, LeaseWrites int
	// LastWrite is when the last write that was not a lease renewal completed.
	LastWrite time.Time
	// LastApply is when the last write to an installed object completed: not to the
	// MeshControlPlane itself (finalizer, status), not an Event, not a Lease.
	LastApply time.Time
	// ByVerb is "verb resource" to count, for the report.
	ByVerb map[string]int
}

// Count counts the requests received in [from, to).
func Count(events []AuditEvent, from, to time.Time) Counts {
	c := Counts{ByVerb: map[string]int{}}
	for _, e := range events {
		t := e.RequestReceivedTimestamp
		if t.Before(from) || !t.Before(to) {
			continue
		}
		c.Total++
		res := ""
		if e.ObjectRef != nil {
			res = e.ObjectRef.Resource
		}
		c.ByVerb[e.Verb+" "+res]++
		if !e.IsWrite() {
			continue
		}
		if e.IsLease() {
			c.LeaseWrites++
			continue
		}
		c.Writes++
		if e.StageTimestamp.After(c.LastWrite) {
			c.LastWrite = e.StageTimestamp
		}
		if res != "meshcontrolplanes" && res != "events" && e.StageTimestamp.After(c.LastApply) {
			c.LastApply = e.StageTimestamp
		}
	}
	return c
}

// Median of a sample; the sample is sorted in place.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	sort.Float64s(xs)
	n := len(xs)
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}

// Created finds when the apiserver finished creating the named object: the moment it
// exists for controllers to see.
func Created(events []AuditEvent, resource, name string) (time.Time, bool) {
	var at time.Time
	for _, e := range events {
		if e.Verb == "create" && e.ObjectRef != nil && e.ObjectRef.Resource == resource &&
			e.ResponseStatus != nil && e.ResponseStatus.Code == 201 && e.StageTimestamp.After(at) {
			// the name of a created object is in the response, not always in objectRef
			if e.ObjectRef.Name == "" || e.ObjectRef.Name == name {
				at = e.StageTimestamp
			}
		}
	}
	return at, !at.IsZero()
}
