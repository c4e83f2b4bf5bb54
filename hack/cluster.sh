#!/usr/bin/env bash
# cluster.sh up|down|kubeconfig|kubectl|status [NAME]: a local kwok cluster (binary runtime,
# the repository's own bin/ builds, configuration hack/kwok/kwokctl.yaml) named NAME
# (default $CAPSTAN_CLUSTER or "capstan").
#
#   hack/cluster.sh up [NAME]          create the cluster with $CAPSTAN_NODES (2) Ready nodes
#   hack/cluster.sh down [NAME]        delete it
#   hack/cluster.sh kubeconfig [NAME]  print the path of its kubeconfig
#   hack/cluster.sh kubectl ARGS...    bin/kubectl against it (cluster $CAPSTAN_CLUSTER)
#   hack/cluster.sh status [NAME]      is it there, and its nodes
#
# The cluster only ever runs inside a loopback-only network namespace. Already inside one
# (hack/in-netns.sh), it runs there. Started from the host (make cluster-up), it runs inside
# the persistent namespace of hack/netns.sh ("capstan"), creating it; `down` removes that
# namespace again once no cluster is left in it. Any other case is refused.
#
# kwokctl's state lives in $KWOK_WORKDIR (default ${XDG_CACHE_HOME:-$HOME/.cache}/capstan/kwok):
# the kubeconfig is $KWOK_WORKDIR/clusters/NAME/kubeconfig.yaml, the logs (apiserver audit log
# included: $KWOK_WORKDIR/clusters/NAME/logs/audit.log) under .../logs/. Set CAPSTAN_AUDIT=0
# to start without the audit log, CAPSTAN_DISABLE_QPS_LIMITS=1 to lift the client rate limits of
# the controller-manager and scheduler and the apiserver's in-flight limits and priority and
# fairness (kwokctl --disable-qps-limits; the data-plane benchmark's 10,000 pods). Nothing
# touches ~/.kube/config.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/bin
source "$root/hack/netns-guard.sh"

export KWOK_WORKDIR=${KWOK_WORKDIR:-${XDG_CACHE_HOME:-$HOME/.cache}/capstan/kwok}
export KWOK_KUBECTL_BINARY=$bin/kubectl
nodes=${CAPSTAN_NODES:-2}
audit=${CAPSTAN_AUDIT:-1}
no_qps_limits=${CAPSTAN_DISABLE_QPS_LIMITS:-0}

cmd=${1:-}
[ $# -gt 0 ] && shift
if [ "$cmd" = kubectl ]; then
	name=${CAPSTAN_CLUSTER:-capstan}
else
	name=${1:-${CAPSTAN_CLUSTER:-capstan}}
fi
kubeconfig=$KWOK_WORKDIR/clusters/$name/kubeconfig.yaml

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

# From the host, run this same command inside the persistent namespace instead.
if ! capstan_in_loopback_netns && [ -z "${CAPSTAN_NAMED_NETNS:-}" ]; then
	case $cmd in
	up)
		"$root/hack/netns.sh" create
		exec "$root/hack/netns.sh" exec env CAPSTAN_NAMED_NETNS=1 "$0" "$cmd" "$@"
		;;
	down)
		if "$root/hack/netns.sh" status >/dev/null 2>&1; then
			CAPSTAN_NAMED_NETNS=1 "$root/hack/netns.sh" exec "$0" down "$@"
			if [ -z "$(ls -A "$KWOK_WORKDIR/clusters" 2>/dev/null)" ]; then
				"$root/hack/netns.sh" delete
			fi
		else
			echo "no network namespace ${CAPSTAN_NETNS:-capstan}: nothing to stop" >&2
		fi
		exit 0
		;;
	kubectl | status)
		exec "$root/hack/netns.sh" exec env CAPSTAN_NAMED_NETNS=1 "$0" "$cmd" "$@"
		;;
	esac
fi

case $cmd in
up)
	capstan_require_loopback_netns || exit 1
	for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kwokctl; do
		[ -x "$bin/$b" ] || { echo "missing $bin/$b: run make tools (hack/build-tools.sh)" >&2; exit 1; }
	done
	args=(
		--name "$name"
		--config "$root/hack/kwok/kwokctl.yaml"
		--kubeconfig ""
		--etcd-binary "$bin/etcd"
		--kube-apiserver-binary "$bin/kube-apiserver"
		--kube-controller-manager-binary "$bin/kube-controller-manager"
		--kube-scheduler-binary "$bin/kube-scheduler"
		--kwok-controller-binary "$bin/kwok"
		--wait 2m
	)
	if [ "$audit" != 0 ]; then
		args+=(--kube-audit-policy "$root/hack/kwok/audit-policy.yaml")
	fi
	if [ "$no_qps_limits" = 1 ]; then
		args+=(--disable-qps-limits)
	fi
	"$bin/kwokctl" create cluster "${args[@]}"
	"$bin/kwokctl" scale node --name "$name" --replicas "$nodes"
	"$bin/kubectl" --kubeconfig "$kubeconfig" wait --for=condition=Ready node --all --timeout=2m
	echo "cluster $name is up; kubeconfig: $kubeconfig"
	if [ -n "${CAPSTAN_NAMED_NETNS:-}" ]; then
		echo "talk to it from inside its network namespace, e.g.:"
		echo "  hack/cluster.sh kubectl get nodes"
		echo "  hack/netns.sh exec bin/kubectl --kubeconfig $kubeconfig get pods -A"
	fi
	;;
down)
	capstan_require_loopback_netns || exit 1
	if [ -d "$KWOK_WORKDIR/clusters/$name" ]; then
		# (--kubeconfig "" is refused by delete; the cluster's own file goes away with it.)
		"$bin/kwokctl" delete cluster --name "$name" --kubeconfig "$kubeconfig"
	else
		echo "no cluster $name in $KWOK_WORKDIR" >&2
	fi
	;;
kubeconfig)
	echo "$kubeconfig"
	;;
kubectl)
	capstan_require_loopback_netns || exit 1
	exec "$bin/kubectl" --kubeconfig "$kubeconfig" "$@"
	;;
status)
	capstan_require_loopback_netns || exit 1
	[ -f "$kubeconfig" ] || { echo "no cluster $name in $KWOK_WORKDIR" >&2; exit 1; }
	"$bin/kubectl" --kubeconfig "$kubeconfig" get nodes
	;;
*)
	usage
	;;
esac
