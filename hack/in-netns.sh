#!/usr/bin/env bash
# in-netns.sh CMD [ARGS...]: runs CMD in a fresh network namespace that holds only loopback
# (brought up), so that nothing CMD starts can reach beyond this machine. This is how the e2e
# tests, the demo and the benchmarks run: build everything first — the namespace has no network.
# The exit status is CMD's.
#
# CMD also gets its own PID namespace: when it exits (or is killed), every process it left
# behind (a cluster's etcd and apiserver, an istiod, an operator) is killed with it, so a
# crashed test never leaks daemons into an orphaned namespace. SIGTERM, SIGINT or SIGHUP to
# this script are passed on to CMD as SIGTERM; if CMD is not gone $CAPSTAN_NETNS_GRACE seconds
# (default 15) later, the whole namespace is killed.
set -euo pipefail
if [ $# -eq 0 ]; then
	echo "usage: $0 CMD [ARGS...]" >&2
	exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
grace=${CAPSTAN_NETNS_GRACE:-15}
userns=()
if [ "$(id -u)" -ne 0 ]; then
	userns=(--map-root-user)
fi

# Inside: bash is PID 1 of the new PID namespace. It keeps CMD as an ordinary child (PID 1
# gets no default signal actions) and passes SIGTERM on to it; when bash exits, the kernel
# kills everything else in the namespace.
inner='
	set -e
	ip link set lo up
	source "$0/hack/netns-guard.sh"
	capstan_require_loopback_netns
	trap "kill -TERM \$child 2>/dev/null" TERM INT HUP
	"$@" <&0 &
	child=$!
	set +e
	wait $child; rc=$?
	# wait returns early when a trapped signal arrives: wait again for the real status.
	while kill -0 $child 2>/dev/null; do wait $child; rc=$?; done
	exit $rc
'
# unshare --fork ignores SIGTERM and SIGINT while it waits, and --kill-child SIGKILLs the
# namespace's PID 1 only when unshare itself dies: so this script forwards the signals.
unshare "${userns[@]}" --net --pid --fork --kill-child --mount-proc -- bash -c "$inner" "$root" "$@" <&0 &
upid=$!
forward() {
	trap - TERM INT HUP
	local inner_pid
	inner_pid=$(ps -o pid= --ppid "$upid" | tr -d ' ' || true)
	[ -n "$inner_pid" ] && kill -TERM "$inner_pid" 2>/dev/null
	for _ in $(seq $((grace * 10))); do
		kill -0 "$upid" 2>/dev/null || return 0
		sleep 0.1
	done
	echo "in-netns.sh: $1 still running after ${grace}s: killing its namespace" >&2
	kill -KILL "$upid" 2>/dev/null || true
}
trap 'forward "$*"' TERM INT HUP
set +e
wait "$upid"
rc=$?
while kill -0 "$upid" 2>/dev/null; do
	wait "$upid"
	rc=$?
done
exit $rc
