// Package leaselock builds the operator's leader-election lock, with an event recorder that
// sends the lock's events through the events.k8s.io recorder Capstan's controllers use.
//
// Left to itself, controller-runtime gives the lock one of client-go's older event
// recorders (tools/record), and its broadcaster (four goroutines and queues of a thousand
// events) is then started for nothing but the lock's few events: "became leader", "stopped
// leading". Capstan's controllers already run an events.k8s.io broadcaster, so the lock
// uses that one.
package leaselock

import (
	"sync/atomic"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
	"sigs.k8s.io/controller-runtime/pkg/leaderelection"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
)

// Action is the action of the events the lock records.
const Action = "LeaderElection"

// Events is the lock's event recorder. It drops events until Use names the recorder to
// send them through: the lock exists before the manager that makes that recorder, but
// records nothing until the manager starts it.
type Events struct {
	target atomic.Pointer[recorder.EventRecorder]
}

// Use sends the lock's events through rec from now on.
func (e *Events) Use(rec recorder.EventRecorder) { e.target.Store(&rec) }

// Event records an event about obj (the Lease).
func (e *Events) Event(obj runtime.Object, eventtype, reason, message string) {
	e.Eventf(obj, eventtype, reason, "%s", message)
}

// Eventf records an event about obj (the Lease) with a formatted note.
func (e *Events) Eventf(obj runtime.Object, eventtype, reason, messageFmt string, args ...any) {
	if t := e.target.Load(); t != nil {
		(*t).Eventf(obj, nil, eventtype, reason, Action, messageFmt, args...)
	}
}

// AnnotatedEventf records an event about obj with annotations.
func (e *Events) AnnotatedEventf(obj runtime.Object, annotations map[string]string, eventtype, reason, messageFmt string, args ...any) {
	if t := e.target.Load(); t != nil {
		(*t).AnnotatedEventf(obj, nil, annotations, eventtype, reason, Action, messageFmt, args...)
	}
}

var _ record.EventRecorder = &Events{}

// New builds the Lease lock controller-runtime would build for id in namespace (the pod's
// namespace when empty), recording its events through the returned Events.
func New(cfg *rest.Config, id, namespace string) (resourcelock.Interface, *Events, error) {
	ev := &Events{}
	lock, err := leaderelection.NewResourceLock(cfg, provider{ev}, leaderelection.Options{
		LeaderElection:             true,
		LeaderElectionResourceLock: resourcelock.LeasesResourceLock,
		LeaderElectionID:           id,
		LeaderElectionNamespace:    namespace,
	})
	return lock, ev, err
}

// provider hands the lock its recorder. The lock asks only for an old-API recorder.
type provider struct{ ev *Events }

func (p provider) GetEventRecorderFor(string) record.EventRecorder { return p.ev }

func (p provider) GetEventRecorder(string) recorder.EventRecorder { return forward{p.ev} }

// forward is Events seen as an events.k8s.io recorder.
type forward struct{ ev *Events }

func (f forward) Eventf(regarding, related runtime.Object, eventtype, reason, action, note string, args ...any) {
	if t := f.ev.target.Load(); t != nil {
		(*t).Eventf(regarding, related, eventtype, reason, action, note, args...)
	}
}

func (f forward) AnnotatedEventf(regarding, related runtime.Object, annotations map[string]string, eventtype, reason, action, note string, args ...any) {
	if t := f.ev.target.Load(); t != nil {
		(*t).AnnotatedEventf(regarding, related, annotations, eventtype, reason, action, note, args...)
	}
}
