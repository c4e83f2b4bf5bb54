package leaselock

import (
	"fmt"
	"testing"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// sink keeps what an events.k8s.io recorder was asked to record.
type sink struct{ got []string }

func (s *sink) Eventf(regarding, _ runtime.Object, eventtype, reason, action, note string, args ...any) {
	l := regarding.(*coordinationv1.Lease)
	s.got = append(s.got, fmt.Sprintf("%s %s/%s %s %s %s: %s", l.Kind, l.Namespace, l.Name, eventtype, reason, action, fmt.Sprintf(note, args...)))
}

func (s *sink) AnnotatedEventf(regarding, related runtime.Object, _ map[string]string, eventtype, reason, action, note string, args ...any) {
	s.Eventf(regarding, related, eventtype, reason, action, note, args...)
}

// TestLockEventsReachTheEventsRecorder protects the lock's events ("became leader"): they
// go through the events.k8s.io recorder once the manager has made it, as the older
// recorder controller-runtime would otherwise start would have sent them.
func TestLockEventsReachTheEventsRecorder(t *testing.T) {
	lease := &coordinationv1.Lease{TypeMeta: metav1.TypeMeta{Kind: "Lease", APIVersion: "coordination.k8s.io/v1"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "capstan-system", Name: "capstan.mesh.capstan.dev"}}
	ev := &Events{}
	ev.Eventf(lease, "Normal", "LeaderElection", "%s %s", "pod-a", "became leader") // before Use: dropped
	s := &sink{}
	ev.Use(s)
	ev.Eventf(lease, "Normal", "LeaderElection", "%s %s", "pod-a", "became leader")
	ev.Event(lease, "Normal", "LeaderElection", "pod-a stopped leading 100%")
	ev.AnnotatedEventf(lease, map[string]string{"k": "v"}, "Normal", "LeaderElection", "%s", "annotated")
	provider{ev}.GetEventRecorder("capstan").Eventf(lease, nil, "Normal", "Other", "Act", "through %s", "the new API")
	want := []string{
		"Lease capstan-system/capstan.mesh.capstan.dev Normal LeaderElection LeaderElection: pod-a became leader",
		"Lease capstan-system/capstan.mesh.capstan.dev Normal LeaderElection LeaderElection: pod-a stopped leading 100%",
		"Lease capstan-system/capstan.mesh.capstan.dev Normal LeaderElection LeaderElection: annotated",
		"Lease capstan-system/capstan.mesh.capstan.dev Normal Other Act: through the new API",
	}
	if fmt.Sprint(s.got) != fmt.Sprint(want) {
		t.Fatalf("recorded\n%q\nwant\n%q", s.got, want)
	}
	if provider(struct{ ev *Events }{ev}).GetEventRecorderFor("capstan") != ev {
		t.Fatal("the lock is not given Events as its recorder")
	}
}
