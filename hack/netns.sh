#!/usr/bin/env bash
# netns.sh create|exec|delete|status: the persistent, loopback-only network namespace that
# `make cluster-up` keeps a local cluster in (name: $CAPSTAN_NETNS, default "capstan").
#
#   hack/netns.sh create              add the namespace (idempotent) and bring its lo up
#   hack/netns.sh exec CMD [ARGS...]  run CMD inside it (e.g. bin/kubectl --kubeconfig ...)
#   hack/netns.sh delete              kill the processes left inside it, then remove it
#   hack/netns.sh status              say whether it exists and what runs in it
#
# A named namespace outlives the commands run in it (unlike hack/in-netns.sh), so a person can
# start a cluster once and talk to it from many shells. It needs root (ip netns).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ns=${CAPSTAN_NETNS:-capstan}

exists() { ip netns list | awk '{print $1}' | grep -qx "$ns"; }

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
create)
	if ! exists; then
		ip netns add "$ns"
	fi
	ip netns exec "$ns" ip link set lo up
	# A fresh namespace only has lo; refuse to hand out one that someone gave an interface.
	ip netns exec "$ns" bash -c "source '$root/hack/netns-guard.sh' && capstan_require_loopback_netns"
	;;
exec)
	[ $# -gt 0 ] || { echo "usage: $0 exec CMD [ARGS...]" >&2; exit 2; }
	exists || { echo "network namespace $ns does not exist: run $0 create (or make cluster-up)" >&2; exit 1; }
	exec ip netns exec "$ns" "$@"
	;;
delete)
	if exists; then
		# Whatever still runs in the namespace was started in it by us (cluster-up): end it by
		# pid, gently first.
		pids=$(ip netns pids "$ns" || true)
		if [ -n "$pids" ]; then
			kill -TERM $pids 2>/dev/null || true
			for _ in $(seq 50); do
				pids=$(ip netns pids "$ns" || true)
				[ -z "$pids" ] && break
				sleep 0.1
			done
			[ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
		fi
		ip netns delete "$ns"
	fi
	;;
status)
	if exists; then
		echo "network namespace $ns exists; processes: $(ip netns pids "$ns" | tr '\n' ' ')"
	else
		echo "network namespace $ns does not exist"
		exit 1
	fi
	;;
*)
	echo "usage: $0 create|exec CMD...|delete|status" >&2
	exit 2
	;;
esac
