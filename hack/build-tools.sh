#!/usr/bin/env bash
# Builds the local cluster's binaries and the code generators from the Go modules pinned in
# hack/tools (and hack/tools/istiod), into a user-level cache keyed by those pins, and links
# them into bin/. A clone on a machine that built them once starts in seconds; nothing is
# downloaded but Go modules.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/capstan/tools
mkdir -p "$root/bin"

k8s_ldflags="-X k8s.io/component-base/version.gitVersion=v1.37.1 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/component-base/version.gitTreeState=clean"

# key DIR: a digest of a tools module's pins and of this script (which holds the flags).
key() { cat "$1/go.mod" "$1/go.sum" "$0" | sha256sum | cut -c1-16; }

# build MODULE_DIR NAME PACKAGE [LDFLAGS]: builds PACKAGE as NAME unless the cache has it.
build() {
	local dir=$1 name=$2 pkg=$3 ldflags=${4:-}
	local out="$cache/$(key "$dir")"
	if [ ! -x "$out/$name" ]; then
		echo "building $name ($pkg)" >&2
		mkdir -p "$out"
		(cd "$dir" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ldflags" -o "$out/$name.tmp" "$pkg")
		mv "$out/$name.tmp" "$out/$name"
	fi
	ln -sfn "$out/$name" "$root/bin/$name"
}

tools=$root/hack/tools
want=${*:-all}
for t in $want; do
	case $t in
	all) exec "$0" etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kwokctl controller-gen pilot-discovery ;;
	etcd) build "$tools" etcd go.etcd.io/etcd/server/v3 ;;
	kube-apiserver | kube-controller-manager | kube-scheduler | kubectl)
		build "$tools" "$t" "k8s.io/kubernetes/cmd/$t" "$k8s_ldflags" ;;
	kwok | kwokctl) build "$tools" "$t" "sigs.k8s.io/kwok/cmd/$t" ;;
	controller-gen) build "$tools" controller-gen sigs.k8s.io/controller-tools/cmd/controller-gen ;;
	pilot-discovery) build "$tools/istiod" pilot-discovery istio.io/istio/pilot/cmd/pilot-discovery ;;
	*) echo "unknown tool $t" >&2; exit 2 ;;
	esac
done
