#!/usr/bin/env bash
# The single-node demo: builds the test bed, runs Tandem in llb1 with the seed's fullnat service
# (10.0.10.143:56002 -> ep1:80, ep2:80), sends traffic through the VIP from the client, shows
# `tandem get lb` and `tandem get ct`, prints a summary and tears everything down again.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export TB="${TB:-demo}" NODES=1
export TANDEM_ECHO="${TANDEM_ECHO:-$REPO/.build/debug/tandem-echo}"
TANDEM="${TANDEM:-$REPO/.build/debug/tandem}"
# shellcheck source=testbed/lib.sh
source "$REPO/testbed/lib.sh"

[[ $EUID -eq 0 ]] || { echo "demo: must run as root" >&2; exit 1; }
[[ -x "$TANDEM" ]] || { echo "demo: $TANDEM not built (make build)" >&2; exit 1; }

cleanup() {
    local rc=$?
    [[ -f "$TB_STATE/tandem.pid" ]] && kill -TERM "$(cat "$TB_STATE/tandem.pid")" 2>/dev/null && sleep 1
    tb_down
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

FORCE=1 bash "$REPO/testbed/up.sh"
cat >"$TB_STATE/tandem.yaml" <<YAML
interfaces: [eth0]
services:
  - {externalIP: 10.0.10.143, port: 56002, protocol: tcp, mode: fullnat, sel: rr, name: web,
     endpoints: [{ip: 10.0.10.21, port: 80}, {ip: 10.0.10.22, port: 80}]}
  - {externalIP: 10.0.10.143, port: 56003, protocol: udp, mode: fullnat, sel: rr, name: echo-udp,
     endpoints: [{ip: 10.0.10.21, port: 9000}, {ip: 10.0.10.22, port: 9000}]}
YAML
say "starting tandem node in $(tb_ns llb1)"
setsid ip netns exec "$(tb_ns llb1)" "$TANDEM" node run --config "$TB_STATE/tandem.yaml" </dev/null \
    >"$TB_STATE/tandem.log" 2>&1 &
echo $! >"$TB_STATE/tandem.pid"
tb_wait_for 20 "tandem API" tb_exec llb1 "$TANDEM" get lb -o json
cat "$TB_STATE/tandem.log"

say "curl http://10.0.10.143:56002 from the client (nginx's page, endpoints alternate)"
served=()
for i in 1 2 3 4; do
    out="$(tb_exec client curl -sS -m 3 -D - http://10.0.10.143:56002/)"
    ep="$(grep -i '^X-Tandem-Endpoint' <<<"$out" | awk '{print $2}' | tr -d '\r')"
    title="$(grep -o '<title>[^<]*</title>' <<<"$out")"
    echo "request $i: $title served by $ep"
    served+=("$ep")
done

say "UDP echo through 10.0.10.143:56003"
tb_exec client "$TANDEM_ECHO" probe --udp --target 10.0.10.143:56003 --timeout 2 && udp=ok || udp=failed
echo "udp echo: $udp"

say "tandem get lb -o wide"
tb_exec llb1 "$TANDEM" get lb -o wide
say "tandem get ct"
tb_exec llb1 "$TANDEM" get ct

ep1=$(printf '%s\n' "${served[@]}" | grep -c '^ep1$' || true)
ep2=$(printf '%s\n' "${served[@]}" | grep -c '^ep2$' || true)
say "summary"
echo "HTTP through the VIP: ${#served[@]} requests, ep1 served $ep1, ep2 served $ep2; UDP echo $udp"
[[ $ep1 -gt 0 && $ep2 -gt 0 && $udp == ok ]] || { echo "demo: FAILED" >&2; exit 1; }
echo "demo: OK (tearing the test bed down)"
