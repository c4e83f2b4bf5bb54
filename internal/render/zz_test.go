package render
import ("testing";"time"
	"k8s.io/utils/ptr"
	"github.com/capstan-mesh/capstan/internal/values"
	meshv1 "github.com/capstan-mesh/capstan/api/v1alpha1")
func TestZZ(t *testing.T) {
	if err := Warm("v1.37.1"); err != nil { t.Fatal(err) }
	var tr, tc, tm time.Duration
	for i := 0; i < 20; i++ {
		spec := meshv1.MeshControlPlaneSpec{Components: &meshv1.ComponentsSpec{Pilot: &meshv1.PilotSpec{Replicas: ptr.To[int32](int32(i+2))}}}
		v, _ := values.For(&spec)
		s := time.Now()
		objs, err := Render(Input{Values: v, Namespace: "istio-system", KubeVersion: "v1.37.1"})
		if err != nil { t.Fatal(err) }
		tr += time.Since(s); s = time.Now()
		cp := make([]any, len(objs))
		for i, o := range objs { cp[i] = o.DeepCopy() }
		tc += time.Since(s); s = time.Now()
		for _, o := range objs { o.MarshalJSON() }
		tm += time.Since(s)
	}
	t.Logf("render %v deepcopy %v marshal %v", tr/20, tc/20, tm/20)
	s := time.Now()
	for i := 0; i < 20; i++ {
		v, _ := values.For(&meshv1.MeshControlPlaneSpec{})
		Render(Input{Values: v, Namespace: "istio-system", KubeVersion: "v1.37.1"})
	}
	t.Logf("render, both memo hits %v", time.Since(s)/20)
}
