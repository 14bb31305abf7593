# shellcheck shell=bash
# Two-node Tandem cluster in the test bed: configs, daemons, roles. Source after lib.sh; needs
# TANDEM, KEY (cluster key file), CLOUD (l2 | oci | bgp | none) and, for oci, OCI_API; for bgp,
# bgp-lib.sh sourced. PERSIST=1 with
# PIN_DIR (from tb_bpffs) runs the daemons with a pinned datapath (graceful restarts).

KEY="${KEY:-$TB_STATE/cluster.key}"

# Writes the cluster key (mode 0600) the nodes share.
cluster_key() { ( umask 077; "$TANDEM" cluster keygen >"$KEY" ); }

other() { [[ "$1" == llb1 ]] && echo llb2 || echo llb1; }
index() { [[ "$1" == llb1 ]] && echo 0 || echo 1; }

write_config() {
    local node="$1" prio=100
    [[ "$node" == llb1 ]] && prio=110
    cat >"$TB_STATE/$node.yaml" <<YAML
interfaces: [eth0]
cluster:
  peers: [$(tb_ip "$(other "$node")")]
  keyFile: $KEY
  self: $(index "$node")
  nodeIndex: $(index "$node")
  cloud: $CLOUD
  priority: $prio
$( ((${PERSIST:-0})) && printf 'persistDatapath: true\npinDirectory: %s\n' "$PIN_DIR" )
services:
  - {externalIP: $TB_VIP, port: 56002, protocol: tcp, mode: fullnat, sel: rr, name: web,
     endpoints: [{ip: $(tb_ip ep1), port: 80}, {ip: $(tb_ip ep2), port: 80}]}
  - {externalIP: $TB_VIP, port: 56004, protocol: tcp, mode: fullnat, sel: hash, name: echo-tcp,
     endpoints: [{ip: $(tb_ip ep1), port: $TB_ECHO_PORT}, {ip: $(tb_ip ep2), port: $TB_ECHO_PORT}]}
  - {externalIP: $TB_VIP, port: 56003, protocol: udp, mode: fullnat, sel: hash, name: echo-udp,
     endpoints: [{ip: $(tb_ip ep1), port: $TB_ECHO_PORT}, {ip: $(tb_ip ep2), port: $TB_ECHO_PORT}]}
YAML
    if [[ "$CLOUD" == oci ]]; then oci_config_yaml "$node" >>"$TB_STATE/$node.yaml"; fi
    if [[ "$CLOUD" == bgp ]]; then bgp_node_yaml "$node" master-backup >>"$TB_STATE/$node.yaml"; fi
}

# The oci: section of NODE's config, for the fake OCI that oci_up started (OCI_API).
oci_config_yaml() {
    cat <<YAML
oci:
  config: $TB_STATE/oci/config
  apiEndpoint: $OCI_API
  imdsEndpoint: $OCI_API/imds/$1
YAML
}

start_node() {
    local node="$1"
    setsid ip netns exec "$(tb_ns "$node")" "$TANDEM" node run --config "$TB_STATE/$node.yaml" --state-file "$TB_STATE/$node-state.jsonl" </dev/null \
        >>"$TB_STATE/$node.log" 2>&1 &
    echo $! >"$TB_STATE/$node.pid"
}

api() { tb_exec "$1" "$TANDEM" get cluster -o json 2>/dev/null; }
# role NODE -> MASTER/BACKUP/FAULT (empty if the API does not answer)
role() { api "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["instances"][0]["role"])' 2>/dev/null || true; }
# term NODE -> the first instance's term (empty if the API does not answer)
term() { api "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["instances"][0]["term"])' 2>/dev/null || true; }
in_sync() { api "$1" | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["inSync"] else 1)' 2>/dev/null; }
master_of() { local n; for n in llb1 llb2; do [[ "$(role "$n")" == MASTER ]] && echo "$n"; done; return 0; }

# "Reboot" NODE's machine: kill the daemon, take the link down, flush what a reboot would wipe.
crash_node() {
    local node="$1" pid
    pid="$(cat "$TB_STATE/$node.pid")"
    kill -KILL "$pid" 2>/dev/null || true
    tb_exec "$node" ip link set eth0 down
    while tb_alive "$pid"; do sleep 0.01; done
    tb_exec "$node" tc qdisc del dev eth0 clsact 2>/dev/null || true
    tb_exec "$node" ip addr del "$TB_VIP/32" dev eth0 2>/dev/null || true
    # A reboot empties bpffs too: the node's pinned datapath goes with it.
    if [[ -n "${PIN_DIR:-}" ]]; then rm -rf "$PIN_DIR/eth0-$(tb_ip "$node" | tr . _)"; fi
    rm -f "$TB_STATE/$node.pid"
}

# Waits until one node is MASTER, the other an in-sync BACKUP, and the VIP reaches the MASTER.
wait_settled() {
    local secs="${1:-30}" m
    tb_wait_for "$secs" "tandem APIs" bash -c "ip netns exec $(tb_ns llb1) $TANDEM get cluster >/dev/null && ip netns exec $(tb_ns llb2) $TANDEM get cluster >/dev/null" || return 1
    settled() { local m; m="$(master_of)"; [[ -n "$m" && "$(role "$(other "$m")")" == BACKUP ]] && in_sync llb1 && in_sync llb2; }
    tb_wait_for "$secs" "a MASTER and an in-sync BACKUP" settled || return 1
    m="$(master_of)"
    vip_on() { [[ "$(tb_vip_owner)" == "$1" ]]; }
    tb_wait_for 10 "the VIP to reach $m" vip_on "$m"
}
