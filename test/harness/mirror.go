package harness

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// MirrorSource names a ConfigMap or Secret whose keys a Mirror copies into a directory, the
// way a kubelet projects a configMap or secret volume into a container.
type MirrorSource struct {
	// Secret selects a Secret; otherwise a ConfigMap.
	Secret    bool
	Namespace string
	Name      string
	// Dir receives one file per key. A missing object leaves Dir empty (an optional volume).
	Dir string
}

func (s MirrorSource) String() string {
	kind := "ConfigMap"
	if s.Secret {
		kind = "Secret"
	}
	return fmt.Sprintf("%s %s/%s -> %s", kind, s.Namespace, s.Name, s.Dir)
}

// Mirror keeps directories in sync with ConfigMaps and Secrets while it runs: a key added,
// changed or removed in the cluster shows up as a file written (atomically, by rename) or
// removed. StartIstiod uses it for istiod's configuration files; tests can use it for any
// local process that reads mounted files.
type Mirror struct {
	cancel context.CancelFunc
	done   sync.WaitGroup

	mu     sync.Mutex
	errs   []error
	onSync func(MirrorSource)
}

// StartMirror starts mirroring every source and returns once each source's first state
// (present or absent) has been written. onSync, if not nil, is called after every write of a
// source's directory (from the watch goroutines). Stop it with Stop.
func StartMirror(ctx context.Context, cs kubernetes.Interface, onSync func(MirrorSource), sources ...MirrorSource) (*Mirror, error) {
	mctx, cancel := context.WithCancel(context.Background())
	m := &Mirror{cancel: cancel, onSync: onSync}
	var synced []cache.InformerSynced
	for _, src := range sources {
		if err := os.MkdirAll(src.Dir, 0o755); err != nil {
			cancel()
			return nil, err
		}
		resource, obj := "configmaps", runtime.Object(&corev1.ConfigMap{})
		client := cs.CoreV1().RESTClient()
		if src.Secret {
			resource, obj = "secrets", &corev1.Secret{}
		}
		lw := cache.NewListWatchFromClient(client, resource, src.Namespace, fields.OneTermEqualSelector("metadata.name", src.Name))
		write := func(o any) { m.write(src, o) }
		_, inf := cache.NewInformerWithOptions(cache.InformerOptions{
			ListerWatcher: lw,
			ObjectType:    obj,
			Handler: cache.ResourceEventHandlerFuncs{
				AddFunc:    write,
				UpdateFunc: func(_, o any) { write(o) },
				DeleteFunc: func(any) { write(nil) },
			},
		})
		m.done.Add(1)
		go func() { defer m.done.Done(); inf.RunWithContext(mctx) }()
		synced = append(synced, inf.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		m.Stop()
		return nil, fmt.Errorf("harness: mirror: informers did not sync: %w", ctx.Err())
	}
	// An object that does not exist produced no event: write its empty state now.
	for _, src := range sources {
		if entries, _ := os.ReadDir(src.Dir); len(entries) == 0 {
			m.write(src, nil)
		}
	}
	return m, m.Err()
}

// write makes src.Dir hold exactly the keys of o (a *ConfigMap, a *Secret, or nil).
func (m *Mirror) write(src MirrorSource, o any) {
	data := map[string][]byte{}
	switch v := o.(type) {
	case *corev1.ConfigMap:
		for k, s := range v.Data {
			data[k] = []byte(s)
		}
		for k, b := range v.BinaryData {
			data[k] = b
		}
	case *corev1.Secret:
		for k, b := range v.Data {
			data[k] = b
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := syncDir(src.Dir, data); err != nil {
		m.errs = append(m.errs, fmt.Errorf("harness: mirror %s: %w", src, err))
		return
	}
	if m.onSync != nil {
		m.onSync(src)
	}
}

// syncDir writes each key of data as a file of dir (only when its content changed) and
// removes the regular files that are not keys.
func syncDir(dir string, data map[string][]byte) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if _, keep := data[e.Name()]; !keep && e.Type().IsRegular() {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	for k, b := range data {
		if strings.ContainsAny(k, `/\`) || k == "." || k == ".." {
			continue
		}
		p := filepath.Join(dir, k)
		if old, err := os.ReadFile(p); err == nil && bytes.Equal(old, b) {
			continue
		}
		tmp := filepath.Join(dir, "."+k+".tmp")
		if err := os.WriteFile(tmp, b, 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, p); err != nil {
			return err
		}
	}
	return nil
}

// Err returns the write errors seen so far (nil if none).
func (m *Mirror) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.errs) == 0 {
		return nil
	}
	return fmt.Errorf("%v", m.errs)
}

// Stop ends the watches and waits for them. The files stay.
func (m *Mirror) Stop() {
	m.cancel()
	m.done.Wait()
}
