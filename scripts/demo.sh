#!/usr/bin/env bash
# make demo: interception in a throwaway "pod" namespace, shown step by step.
# Until the sidecar lands, a stand-in listener on the outbound port plays its part: an
# unmodified curl in the pod calls an outside address and the answer says where it was going.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $EUID -eq 0 ]] || { echo "demo: needs root (network namespaces and iptables)" >&2; exit 1; }

INIT=$PWD/.venv/bin/detour-init
pod=detour-demo-pod-$$
net=detour-demo-net-$$
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
  [[ -n ${standin:-} ]] && kill "$standin" 2>/dev/null || true
  ip netns del "$pod" 2>/dev/null || true
  ip netns del "$net" 2>/dev/null || true
}
trap cleanup EXIT

step "a pod: namespace $pod, with a veth to $net as its default route"
ip netns add "$pod"; ip netns add "$net"
ip -n "$pod" link set lo up; ip -n "$net" link set lo up
ip link add eth0 netns "$pod" type veth peer name gw0 netns "$net"
ip -n "$pod" addr add 10.250.0.2/24 dev eth0; ip -n "$pod" link set eth0 up
ip -n "$net" addr add 10.250.0.1/24 dev gw0; ip -n "$net" link set gw0 up
ip -n "$pod" route add default via 10.250.0.1
ip -n "$pod" addr add fd00:250::2/64 dev eth0 nodad; ip -n "$net" addr add fd00:250::1/64 dev gw0 nodad
ip -n "$pod" -6 route add default via fd00:250::1

step "detour-init render --capture-dns (dry run: the rules, with the reason for each)"
ip netns exec "$pod" "$INIT" render --capture-dns | sed -n '1,200p'

step "detour-init apply --capture-dns"
ip netns exec "$pod" "$INIT" apply --capture-dns

step "detour-init apply --capture-dns, again (idempotent)"
ip netns exec "$pod" "$INIT" apply --capture-dns

step "detour-init show"
ip netns exec "$pod" "$INIT" show

step "detour-init validate (exit 0 = redirected)"
ip netns exec "$pod" "$INIT" validate --capture-dns

step "an unmodified curl in the pod calls http://192.0.2.80:8080/ (nothing lives there)"
ip netns exec "$pod" setpriv --reuid=1337 --regid=1337 --clear-groups \
  /usr/bin/python3 tests/support/peers.py http 15001 "answered-by-the-outbound-port" \
  > /tmp/detour-demo-standin.$$ 2>&1 &
standin=$!
for _ in $(seq 100); do grep -q ready /tmp/detour-demo-standin.$$ 2>/dev/null && break; sleep 0.05; done
ip netns exec "$pod" curl -sS --max-time 5 http://192.0.2.80:8080/
kill "$standin"; wait "$standin" 2>/dev/null || true; standin=
rm -f /tmp/detour-demo-standin.$$

step "detour-init cleanup"
ip netns exec "$pod" "$INIT" cleanup
leftover=$(ip netns exec "$pod" iptables-save | grep DETOUR || true
           ip netns exec "$pod" ip6tables-save | grep DETOUR || true
           ip -n "$pod" rule | grep "lookup 133" || true)
[[ -z $leftover ]] || { echo "demo: left behind: $leftover" >&2; exit 1; }
echo "demo: no Detour chain, rule or route is left in the pod"
step "done: the sidecar itself (detour-proxy) comes with the next issue"
