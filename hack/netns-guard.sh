# shellcheck shell=bash
# Sourced, not run: refuses to go on unless this process is inside a network namespace that
# holds only the loopback interface. Every local cluster, and everything that talks to it
# (tests, the operator, istiod, kubectl), must run in such a namespace so that no connection
# can ever leave the machine (DESIGN.md, "A real cluster on a laptop").
#
#   source hack/netns-guard.sh
#   capstan_require_loopback_netns || exit 1     # prints why on stderr
#   capstan_in_loopback_netns && echo inside      # silent test

# capstan_netns_interfaces prints the names of the network interfaces of this namespace.
capstan_netns_interfaces() {
	if command -v ip >/dev/null 2>&1; then
		ip -o link show | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }'
	else
		ls /sys/class/net
	fi
}

# capstan_in_loopback_netns succeeds when the only interface is lo (and lo is up).
capstan_in_loopback_netns() {
	local ifs
	ifs=$(capstan_netns_interfaces) || return 1
	[ "$ifs" = "lo" ] || return 1
	ip -o link show lo 2>/dev/null | grep -q '[<,]UP[,>]'
}

# capstan_require_loopback_netns returns 1 with an explanation unless capstan_in_loopback_netns.
capstan_require_loopback_netns() {
	if capstan_in_loopback_netns; then
		return 0
	fi
	{
		echo "REFUSING: this must run inside a loopback-only network namespace, so that no"
		echo "connection can leave the machine. Interfaces here: $(capstan_netns_interfaces | tr '\n' ' ')"
		echo "(a namespace with only 'lo', and 'lo' up, is required)."
		echo "Run it through hack/in-netns.sh CMD... (a fresh namespace for one command) or"
		echo "hack/netns.sh exec CMD... (the persistent namespace 'capstan' of make cluster-up)."
	} >&2
	return 1
}
