#!/usr/bin/env bash
# demo.sh (make demo): shows Capstan install Istio's control plane on the local cluster.
#
#   1. starts (or reuses) the persistent local cluster of hack/cluster.sh, inside the
#      loopback-only network namespace of hack/netns.sh ("capstan");
#   2. installs the MeshControlPlane CRD and the operator's RBAC from config/;
#   3. runs bin/capstan in the background, inside that namespace, as the capstan-system/capstan
#      ServiceAccount (stopping the operator of an earlier run first);
#   4. applies config/samples, waits for the MeshControlPlane to be Ready;
#   5. prints its status, the objects Capstan installed and its Events, and how to go on.
#
# Running it again reuses the cluster, restarts the operator and re-applies everything.
# `make cluster-down` stops it all: deleting the namespace kills every process in it, the
# operator included. The operator's files (kubeconfig, log, pid) are in $CAPSTAN_DEMO_DIR
# (default ${XDG_CACHE_HOME:-$HOME/.cache}/capstan/demo); its probes listen on
# $CAPSTAN_DEMO_PROBE_ADDR (default 127.0.0.1:18081, inside the namespace).
#
# Nothing here may reach beyond the machine: the cluster, the operator and every kubectl run
# inside the namespace, which holds nothing but loopback. Only the first phase (starting the
# cluster, which re-runs itself inside the namespace) runs on the host.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/bin
source "$root/hack/netns-guard.sh"

cluster=${CAPSTAN_CLUSTER:-capstan}
demo_dir=${CAPSTAN_DEMO_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/capstan/demo}
probe_addr=${CAPSTAN_DEMO_PROBE_ADDR:-127.0.0.1:18081}
operator_ns=capstan-system
operator_sa=capstan
crd=meshcontrolplanes.mesh.capstan.dev
sample=$root/config/samples/mesh_v1alpha1_meshcontrolplane.yaml

log=$demo_dir/capstan.log          # the operator's log (this run's only)
pidfile=$demo_dir/capstan.pid      # the operator's pid
sa_kubeconfig=$demo_dir/kubeconfig # the operator's identity: its ServiceAccount's token
cluster_log=$demo_dir/cluster-up.log

# step MESSAGE: announces a step; on failure the exit trap names the last one.
current_step="starting"
step() {
	current_step=$1
	printf '\n==> %s\n' "$1"
}

# is_demo_operator PID: PID is bin/capstan started by this script (not a recycled pid).
is_demo_operator() {
	local pid=$1 args
	[[ $pid =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/cmdline" ] || return 1
	args=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
	[ "$(head -n1 <<<"$args")" = "$bin/capstan" ] && grep -qxF -- "$sa_kubeconfig" <<<"$args"
}

# stop_operator: ends the operator of an earlier run, if it still runs: SIGTERM (it hands its
# leader-election lease over on a clean stop), then SIGKILL after 15 seconds.
stop_operator() {
	[ -f "$pidfile" ] || return 0
	local pid
	pid=$(cat "$pidfile")
	if is_demo_operator "$pid"; then
		echo "stopping the operator of an earlier run (pid $pid)"
		kill -TERM "$pid" 2>/dev/null || true
		local deadline=$((SECONDS + 15))
		while is_demo_operator "$pid" && [ $SECONDS -lt $deadline ]; do
			sleep 0.2
		done
		if is_demo_operator "$pid"; then
			echo "it is still running after 15s: killing it"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	rm -f "$pidfile"
}

# on_exit: on failure, says which step failed and shows the operator's log tail.
on_exit() {
	local rc=$?
	[ $rc -eq 0 ] && return 0
	{
		echo
		echo "make demo FAILED while: $current_step (exit status $rc)"
		if [ "${operator_started:-0}" = 1 ] && [ -f "$log" ]; then
			echo "--- last 40 lines of the operator log ($log) ---"
			tail -n 40 "$log"
			echo "---"
		else
			echo "(the operator was not started by this run)"
			if [ -f "$cluster_log" ]; then
				echo "--- last 10 lines of the cluster start-up ($cluster_log) ---"
				tail -n 10 "$cluster_log"
				echo "---"
			fi
		fi
		echo "cluster logs: $("$root/hack/cluster.sh" kubeconfig "$cluster" | xargs dirname)/logs/"
		echo "stop everything with: make cluster-down"
	} >&2
	exit $rc
}
trap on_exit EXIT

########################################################################################
# Phase 1, on the host: start the cluster, then re-run this script inside its namespace.
########################################################################################
if [ "${1:-}" != --in-netns ]; then
	if capstan_in_loopback_netns; then
		# hack/in-netns.sh (or similar) would kill the cluster and the operator as soon as
		# this script ends; the demo keeps them running in the persistent namespace.
		echo "run make demo from the host: it keeps its cluster in the network namespace ${CAPSTAN_NETNS:-capstan}" >&2
		exit 1
	fi
	for b in capstan kubectl; do
		[ -x "$bin/$b" ] || { echo "missing $bin/$b: run make tools build" >&2; exit 1; }
	done
	mkdir -p "$demo_dir"
	start=$(date +%s)

	step "Starting the local cluster '$cluster' (network namespace ${CAPSTAN_NETNS:-capstan}; output in $cluster_log)"
	# Idempotent: an existing cluster is reused. cluster.sh creates the namespace and runs
	# kwokctl inside it.
	"$root/hack/cluster.sh" up "$cluster" >"$cluster_log" 2>&1
	grep -E '^(node/|cluster )' "$cluster_log" || true

	# Everything else talks to the cluster, so it runs inside the namespace.
	trap - EXIT
	exec "$root/hack/netns.sh" exec env CAPSTAN_NAMED_NETNS=1 CAPSTAN_DEMO_START="$start" \
		CAPSTAN_CLUSTER="$cluster" "$0" --in-netns
fi

########################################################################################
# Phase 2, inside the loopback-only namespace.
########################################################################################
capstan_require_loopback_netns || exit 1
start=${CAPSTAN_DEMO_START:-$(date +%s)}
kubeconfig=$("$root/hack/cluster.sh" kubeconfig "$cluster")
k() { "$bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }

step "Installing the MeshControlPlane CRD and the operator's RBAC (config/crd, config/rbac)"
k get namespace "$operator_ns" >/dev/null 2>&1 || k create namespace "$operator_ns"
k apply --server-side -k "$root/config/crd"
k apply --server-side -k "$root/config/rbac"
k wait --for=condition=Established --timeout=60s "crd/$crd"

step "Starting the operator as ServiceAccount $operator_ns/$operator_sa (log: $log)"
stop_operator
# A kubeconfig with the apiserver of the admin one and a fresh bound token of the operator's
# ServiceAccount, so the operator has exactly the RBAC of config/rbac (as it would deployed).
server=$(k config view --minify -o jsonpath='{.clusters[0].cluster.server}')
ca_data=$(k config view --raw --minify --flatten -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
[ -n "$server" ] && [ -n "$ca_data" ] || { echo "cannot read the apiserver address and CA from $kubeconfig" >&2; exit 1; }
token=$(k create token "$operator_sa" -n "$operator_ns" --duration=24h)
(
	umask 077 # the file holds a token
	cat >"$sa_kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: $server
    certificate-authority-data: $ca_data
users:
- name: $operator_sa
  user:
    token: $token
contexts:
- name: $operator_sa
  context:
    cluster: local
    user: $operator_sa
current-context: $operator_sa
EOF
)
# setsid: a session of its own, so that the operator outlives this script and make, and a
# Ctrl-C in the terminal does not reach it. The small shell records the operator's pid, then
# becomes the operator (exec), so the pid is the operator's.
: >"$log"
operator_started=1
setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" \
	"$bin/capstan" \
	--kubeconfig "$sa_kubeconfig" \
	--health-probe-bind-address "$probe_addr" \
	--metrics-bind-address 0 \
	--enable-webhooks=false \
	--leader-elect --leader-election-namespace "$operator_ns" \
	--zap-encoder console \
	</dev/null >>"$log" 2>&1 &
# Wait (at most 60s) until it serves /readyz; give up at once if it exits.
deadline=$((SECONDS + 60))
until curl -fsS --max-time 2 "http://$probe_addr/readyz" >/dev/null 2>&1; do
	pid=$(cat "$pidfile" 2>/dev/null || true)
	if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
		echo "the operator exited" >&2
		exit 1
	fi
	if [ $SECONDS -ge $deadline ]; then
		echo "the operator did not report ready on http://$probe_addr/readyz within 60s" >&2
		exit 1
	fi
	sleep 0.5
done
echo "operator running (pid $(cat "$pidfile")), ready on http://$probe_addr/readyz"

step "Applying the sample MeshControlPlane (config/samples) and waiting for Ready"
k apply -f "$sample"
k wait --for=condition=Ready meshcontrolplane/default --timeout=180s

step "The MeshControlPlane"
k get meshcontrolplane default
echo
k get meshcontrolplane default -o jsonpath='{range .status.conditions[*]}{.type}{"\t"}{.status}{"\t"}{.reason}{"\t"}{.message}{"\n"}{end}' |
	{ printf 'CONDITION\tSTATUS\tREASON\tMESSAGE\n'; cat; } | column -t -s $'\t'
echo
k get meshcontrolplane default -o jsonpath='{range .status.components[*]}{.name}{"\t"}{.readyReplicas}/{.desiredReplicas}{"\t"}{.ready}{"\n"}{end}' |
	{ printf 'COMPONENT\tREPLICAS\tREADY\n'; cat; } | column -t -s $'\t'
echo
k get meshcontrolplane default -o jsonpath='{range .status.revisions[*]}{.name}{"\t"}{.version}{"\t"}{.tags}{"\t"}{.ready}{"\n"}{end}' |
	{ printf 'REVISION\tVERSION\tTAGS\tREADY\n'; cat; } | column -t -s $'\t'

step "What Capstan installed (label app.kubernetes.io/managed-by=capstan)"
ns=$(k get meshcontrolplane default -o jsonpath='{.spec.namespace}')
ns=${ns:-istio-system}
k get all,configmaps,serviceaccounts,mutatingwebhookconfigurations,validatingwebhookconfigurations \
	-n "$ns" -l app.kubernetes.io/managed-by=capstan
echo
k get crd -l app.kubernetes.io/managed-by=capstan
echo
echo "istiod's pods (kwok runs them on its simulated nodes):"
k get pods -n "$ns" -o wide

step "Events about the MeshControlPlane"
k get events -A --field-selector involvedObject.kind=MeshControlPlane --sort-by=.metadata.creationTimestamp

cat <<EOF

Done in $(($(date +%s) - start))s. Capstan is running (pid $(cat "$pidfile")) in network namespace ${CAPSTAN_NETNS:-capstan}.

What next:
  look around      hack/cluster.sh kubectl get mcp default -o yaml
                   hack/cluster.sh kubectl get pods -n $ns
  drift repair     hack/cluster.sh kubectl delete configmap istio -n $ns
                   hack/cluster.sh kubectl get configmap istio -n $ns   # Capstan has put it back
  upgrade/scale    hack/cluster.sh kubectl edit mcp default   # e.g. spec.components.pilot.replicas
  operator log     $log
  run it again     make demo   (reuses the cluster, restarts the operator)
  stop everything  make cluster-down   (the cluster, the operator and the network namespace)
EOF
