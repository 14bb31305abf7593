# shellcheck shell=bash
# Tandem test bed: shared functions. Source this file; it defines functions and defaults only.
#
# Topology (routed like an OCI VCN, no bridge):
#
#   client 10.0.20.10 --- vcn router ns (ip_forward, proxy ARP on every link, one /32 per host)
#                            |           |            |           |
#                          llb1         llb2         ep1         ep2        10.0.10.0/24
#                       10.0.10.141  10.0.10.88  10.0.10.21  10.0.10.22  (nginx :80, echo :9000)
#   floating IP 10.0.10.143/32: a route in the vcn ns to the owning node (tb_route_vip NODE).
#
# natgw.sh adds an "outside" network (TB_NATGW_OUTSIDE, host `out` 198.51.100.10 on v-out, not
# made by tb_up) and, once $TB_STATE/natgw exists, tb_route_vip also points the vcn's policy
# table TB_NATGW_TABLE (inside -> outside traffic) at the floating IP's owner.
#
# Everything is derived from TB (default "tdm", <= 6 chars of [a-z0-9]):
#   namespaces  ${TB}-client ${TB}-vcn ${TB}-llb1 [${TB}-llb2] ${TB}-ep1 ${TB}-ep2
#   state dir   /run/tandem-testbed/${TB}/      (pid files, nginx config/logs/temp, echo logs)
# Inside the vcn ns the link to host X is "v-X"; inside every host its link is "eth0".
#
# Environment:
#   TB           name prefix (default tdm)
#   NODES        1, 2 or 3 load-balancer nodes (default 1; 2 adds llb2, 3 adds llb3 10.0.10.89)
#   TANDEM_ECHO  echo server binary (default <repo>/.build/debug/tandem-echo)
#   TB_WAIT      seconds to wait for services to answer (default 15)
#   TB_NET       routed (default: OCI-like, the VIP reaches whoever the vcn's /32 route names) or
#                l2 (on-premises: the 10.0.10.0/24 hosts share a bridge in the vcn ns; the VIP
#                reaches whichever node answers ARP for it, and gratuitous ARP moves it)

TB="${TB:-tdm}"
NODES="${NODES:-1}"
TB_WAIT="${TB_WAIT:-15}"
TB_NET="${TB_NET:-routed}"
TB_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TANDEM_ECHO="${TANDEM_ECHO:-$TB_REPO/.build/debug/tandem-echo}"
TB_STATE_ROOT="/run/tandem-testbed"
TB_STATE="$TB_STATE_ROOT/$TB"

TB_VIP="10.0.10.143"
TB_GW_HOSTS="10.0.10.1"     # gateway of 10.0.10.0/24
TB_GW_CLIENT="10.0.20.1"    # gateway of 10.0.20.0/24
TB_ECHO_PORT=9000
TB_ALL_ROLES=(client vcn llb1 llb2 llb3 ep1 ep2 out)
# natgw.sh: the outside network beyond the NAT gateways, its gateway in the vcn, and the vcn's
# policy-routing table that sends the inside hosts' traffic to the outside through the gateway
# owning the floating IP.
TB_NATGW_OUTSIDE="198.51.100.0/24"
TB_GW_OUTSIDE="198.51.100.1"
TB_NATGW_TABLE=143

tb_log() { printf '[testbed %s] %s\n' "$TB" "$*" >&2; }
tb_die() { printf '[testbed %s] error: %s\n' "$TB" "$*" >&2; return 1; }

# Rejects prefixes that would overflow interface/namespace conventions or clash by pattern.
tb_check_name() {
    [[ "$TB" =~ ^[a-z][a-z0-9]{0,5}$ ]] ||
        { tb_die "TB='$TB' must be 1-6 chars of [a-z0-9], starting with a letter"; return 1; }
    [[ "$NODES" == 1 || "$NODES" == 2 || "$NODES" == 3 ]] || { tb_die "NODES must be 1, 2 or 3 (got '$NODES')"; return 1; }
    [[ "$TB_NET" == routed || "$TB_NET" == l2 ]] || { tb_die "TB_NET must be routed or l2 (got '$TB_NET')"; return 1; }
}

# Roles of this test bed, in creation order.
tb_roles() {
    echo client $(tb_nodes) ep1 ep2
}
tb_nodes() {
    case "$NODES" in
        3) echo llb1 llb2 llb3 ;;
        2) echo llb1 llb2 ;;
        *) echo llb1 ;;
    esac
}
tb_endpoints() { echo ep1 ep2; }

tb_ns() { echo "${TB}-$1"; }                 # namespace of a role
tb_link() { echo "v-$1"; }                   # vcn-side interface name of a host
tb_exec() { local role="$1"; shift; ip netns exec "$(tb_ns "$role")" "$@"; }

tb_ip() {
    case "$1" in
        client) echo 10.0.20.10 ;;
        llb1) echo 10.0.10.141 ;;
        llb2) echo 10.0.10.88 ;;
        llb3) echo 10.0.10.89 ;;
        ep1) echo 10.0.10.21 ;;
        ep2) echo 10.0.10.22 ;;
        out) echo 198.51.100.10 ;;
        vcn) echo "$TB_GW_HOSTS" ;;
        *) tb_die "unknown role '$1'" ;;
    esac
}
tb_prefix() { echo 24; }                  # every host has a /24 on eth0
tb_gw() {
    case "$1" in
        client) echo "$TB_GW_CLIENT" ;;
        out) echo "$TB_GW_OUTSIDE" ;;
        *) echo "$TB_GW_HOSTS" ;;
    esac
}

tb_ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$1"; }

# True if any namespace or the state dir of this TB exists.
tb_exists() {
    local r
    [[ -d "$TB_STATE" ]] && return 0
    for r in "${TB_ALL_ROLES[@]}"; do tb_ns_exists "$(tb_ns "$r")" && return 0; done
    return 1
}

# Moves the floating IP's /32 in the vcn to NODE (llb1 or llb2). The fake OCI calls this.
#   tb_route_vip NODE [IP]   (IP defaults to the VIP 10.0.10.143)
# On a NAT-gateway bed (natgw.sh: $TB_STATE/natgw exists) the inside hosts' route to the outside
# (policy table TB_NATGW_TABLE) follows the VIP to NODE too, as an OCI route rule targeting the
# floating private IP would.
tb_route_vip() {
    local node="$1" ip="${2:-$TB_VIP}"
    [[ "$node" == llb1 || "$node" == llb2 || "$node" == llb3 ]] || { tb_die "tb_route_vip: node must be llb1, llb2 or llb3"; return 1; }
    ip -n "$(tb_ns vcn)" route replace "$ip/32" via "$(tb_ip "$node")" dev "$(tb_link "$node")"
    if [[ "$ip" == "$TB_VIP" && -f "$TB_STATE_ROOT/$TB/natgw" ]]; then
        ip -n "$(tb_ns vcn)" route replace "$TB_NATGW_OUTSIDE" via "$(tb_ip "$node")" dev "$(tb_link "$node")" table "$TB_NATGW_TABLE"
    fi
}

# Removes the floating IP's route (nobody owns it).
tb_unroute_vip() {
    local ip="${1:-$TB_VIP}"
    ip -n "$(tb_ns vcn)" route del "$ip/32" 2>/dev/null || true
}

# Which node the vcn currently sends the VIP to (empty if none): by its /32 route (routed), or
# by the MAC its neighbour entry for the VIP holds (l2).
tb_vip_owner() {
    local ip="${1:-$TB_VIP}" via r mac
    if [[ "$TB_NET" == l2 ]]; then
        # The vcn learns the VIP's MAC only when it talks to it (gratuitous ARP updates an entry
        # but does not create one): one ping makes sure there is an entry to read.
        ip netns exec "$(tb_ns vcn)" ping -c 1 -W 1 "$ip" >/dev/null 2>&1 || true
        mac="$(ip -n "$(tb_ns vcn)" neigh show "$ip" dev br0 2>/dev/null | awk '{for(i=1;i<NF;i++) if($i=="lladdr") print $(i+1)}')"
        for r in llb1 llb2 llb3; do
            tb_ns_exists "$(tb_ns "$r")" || continue
            [[ -n "$mac" && "$mac" == "$(ip -n "$(tb_ns "$r")" -br link show eth0 2>/dev/null | awk '{print $3}')" ]] && echo "$r"
        done
        return 0
    fi
    via="$(ip -n "$(tb_ns vcn)" route show "$ip/32" 2>/dev/null | awk '{for(i=1;i<NF;i++) if($i=="via") print $(i+1)}')"
    for r in llb1 llb2 llb3; do [[ -n "$via" && "$via" == "$(tb_ip "$r")" ]] && echo "$r"; done
    return 0
}

tb_sysctl() { local role="$1"; shift; tb_exec "$role" sysctl -qw "$@" >/dev/null; }

# Readies the bed for Tandem's XDP fast path on node $1: the senders (client, endpoints) compute
# full checksums, as a NIC delivers them (XDP sees no checksum metadata, so veth's partial
# checksums would leave wrong); the vcn side of the node's link runs an XDP program, so XDP_TX
# frames are delivered (veth hands XDP frames only to a peer in NAPI mode); the node forwards
# (the kernel's FIB lookup from XDP refuses on an interface that does not).
tb_xdp_ready() {
    local node="$1" obj="$TB_REPO/bpf/obj/testbed_xdp_pass.o" r
    [[ -f "$obj" ]] || { tb_die "missing $obj: run make bpf"; return 1; }
    command -v ethtool >/dev/null || { tb_die "ethtool not installed: apt-get install -y ethtool"; return 1; }
    for r in client $(tb_endpoints); do
        tb_exec "$r" ethtool -K eth0 tx off >/dev/null || { tb_die "ethtool -K eth0 tx off failed in $r"; return 1; }
    done
    tb_exec vcn ip link set dev "$(tb_link "$node")" xdpdrv obj "$obj" sec xdp ||
        { tb_die "cannot attach the XDP pass program to $(tb_link "$node")"; return 1; }
    tb_sysctl "$node" net.ipv4.conf.all.forwarding=1 net.ipv4.conf.eth0.forwarding=1 \
        net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.eth0.send_redirects=0
}

tb_create_vcn() {
    local ns; ns="$(tb_ns vcn)"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    tb_sysctl vcn net.ipv4.ip_forward=1
    tb_sysctl vcn net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
    tb_sysctl vcn net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.default.send_redirects=0
    tb_sysctl vcn net.ipv4.conf.default.proxy_arp=1   # proxy_delay is set per link (no netns default)
    tb_sysctl vcn net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    # The gateways are local addresses of the router; ARP for them is answered on every link.
    ip -n "$ns" addr add "$TB_GW_CLIENT/32" dev lo
    if [[ "$TB_NET" == l2 ]]; then
        # One broadcast domain for the 10.0.10.0/24 hosts, like an on-premises VLAN.
        ip -n "$ns" link add br0 type bridge
        tb_sysctl vcn net.ipv4.conf.br0.rp_filter=0
        ip -n "$ns" addr add "$TB_GW_HOSTS/24" dev br0
        ip -n "$ns" link set br0 up
    else
        ip -n "$ns" addr add "$TB_GW_HOSTS/32" dev lo
    fi
}

# Whether a host role sits on the 10.0.10.0/24 segment (everything but the client and natgw.sh's out).
tb_on_segment() { [[ "$1" != client && "$1" != out ]]; }

# Creates host ROLE: its namespace, a veth pair (v-ROLE in vcn, eth0 in the host), addresses,
# the host's default route and the vcn's /32 route to it.
tb_add_host() {
    local role="$1" ns vns link ip gw
    ns="$(tb_ns "$role")"; vns="$(tb_ns vcn)"; link="$(tb_link "$role")"
    ip="$(tb_ip "$role")"; gw="$(tb_gw "$role")"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    tb_sysctl "$role" net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    ip link add "$link" netns "$vns" type veth peer name eth0 netns "$ns"
    if [[ "$TB_NET" == l2 ]] && tb_on_segment "$role"; then
        ip -n "$vns" link set "$link" master br0
        ip -n "$vns" link set "$link" up
    else
        # vcn side: proxy ARP, no reverse-path filter, no ARP proxy delay.
        tb_sysctl vcn "net.ipv4.conf.$link.proxy_arp=1" "net.ipv4.conf.$link.rp_filter=0" \
            "net.ipv4.neigh.$link.proxy_delay=0" "net.ipv4.conf.$link.send_redirects=0"
        ip -n "$vns" link set "$link" up
    fi
    ip -n "$ns" addr add "$ip/$(tb_prefix "$role")" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via "$gw" dev eth0
    if ! { [[ "$TB_NET" == l2 ]] && tb_on_segment "$role"; }; then
        ip -n "$vns" route add "$ip/32" dev "$link" src "$gw"
    fi
}

tb_nginx_conf() {
    local ep="$1" dir="$2" user=nobody
    id www-data >/dev/null 2>&1 && user=www-data
    cat <<EOF
# Generated by testbed/lib.sh for test bed $TB, endpoint $ep.
user $user;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    server {
        listen 80 default_server backlog=4096;
        server_name _;
        root $dir/html;
        index index.html;
        add_header X-Tandem-Endpoint $ep always;
        location = /whoami {
            default_type text/plain;
            return 200 "$ep\n";
        }
        location / { try_files \$uri \$uri/ =404; }
    }
}
EOF
}

tb_start_nginx() {
    local ep="$1" dir="$TB_STATE/$1" page
    mkdir -p "$dir/html" "$dir/logs" "$dir/tmp"
    chmod 755 "$dir" "$dir/html"
    for page in /usr/share/nginx/html/index.html /var/www/html/index.nginx-debian.html; do
        [[ -f "$page" ]] && { cp "$page" "$dir/html/index.html"; break; }
    done
    [[ -f "$dir/html/index.html" ]] || { tb_die "no stock nginx welcome page found"; return 1; }
    chmod 644 "$dir/html/index.html"
    tb_nginx_conf "$ep" "$dir" >"$dir/nginx.conf"
    nginx -t -q -e "$dir/logs/error.log" -p "$dir/" -c "$dir/nginx.conf" ||
        { tb_die "nginx config for $ep is invalid ($dir/nginx.conf)"; return 1; }
    tb_exec "$ep" nginx -e "$dir/logs/error.log" -p "$dir/" -c "$dir/nginx.conf" </dev/null
}

tb_start_echo() {
    local ep="$1" dir="$TB_STATE/$1" pid
    mkdir -p "$dir"
    # setsid: own session, so the caller's terminal signals do not reach it. In a script without
    # job control setsid does not fork, and `ip netns exec` execs: $! is the server's pid.
    setsid ip netns exec "$(tb_ns "$ep")" "$TANDEM_ECHO" serve --name "$ep" --address 0.0.0.0 --port "$TB_ECHO_PORT" \
        </dev/null >"$dir/echo.log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/echo.pid"
}

# Waits (bounded) until a command succeeds. tb_wait_for SECONDS DESCRIPTION CMD...
tb_wait_for() {
    local secs="$1" what="$2" deadline; shift 2
    deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        # Explicit return: callers may run this where errexit is off (if !, ||).
        ((SECONDS < deadline)) || { tb_die "timed out after ${secs}s waiting for $what"; return 1; }
        sleep 0.1
    done
}

# Checks from the vcn ns that endpoint EP answers HTTP with its own name.
tb_check_http() {
    local ep="$1" body
    body="$(tb_exec vcn curl -fsS -m 2 "http://$(tb_ip "$ep")/whoami")" || return 1
    [[ "$body" == "$ep" ]]
}

tb_check_echo() {
    local ep="$1" ip; ip="$(tb_ip "$ep")"
    tb_exec vcn "$TANDEM_ECHO" probe --target "$ip:$TB_ECHO_PORT" --timeout 1 &&
        tb_exec vcn "$TANDEM_ECHO" probe --udp --target "$ip:$TB_ECHO_PORT" --timeout 1
}

# Builds the whole test bed. Fails (non-zero) on any error; the caller cleans up.
tb_up() {
    local r
    tb_check_name
    command -v nginx >/dev/null || { tb_die "nginx not installed (apt-get install -y nginx-light)"; return 1; }
    command -v curl >/dev/null || { tb_die "curl not installed"; return 1; }
    [[ -x "$TANDEM_ECHO" ]] ||
        { tb_die "echo server not found at TANDEM_ECHO=$TANDEM_ECHO (swift build --product tandem-echo, or set TANDEM_ECHO)"; return 1; }
    mkdir -p "$TB_STATE"
    echo "$NODES" >"$TB_STATE/nodes"
    tb_log "creating namespaces (NODES=$NODES TB_NET=$TB_NET)"
    tb_create_vcn
    for r in $(tb_roles); do tb_add_host "$r"; done
    for r in $(tb_endpoints); do
        tb_start_nginx "$r"
        tb_start_echo "$r"
    done
    tb_log "waiting for nginx and tandem-echo on the endpoints"
    for r in $(tb_endpoints); do
        tb_wait_for "$TB_WAIT" "nginx on $r" tb_check_http "$r"
        tb_wait_for "$TB_WAIT" "tandem-echo on $r" tb_check_echo "$r"
    done
    # Routed: the vcn sends the VIP to llb1 until someone moves it. L2: whoever answers ARP.
    [[ "$TB_NET" == l2 ]] || tb_route_vip llb1
}

tb_summary() {
    local r
    echo "test bed '$TB' is up (state: $TB_STATE)"
    printf '  %-14s %-13s %-10s %s\n' namespace address vcn-link runs
    for r in $(tb_roles); do
        local runs=""
        case "$r" in ep*) runs="nginx :80 (X-Tandem-Endpoint: $r, /whoami), tandem-echo :$TB_ECHO_PORT tcp+udp" ;; esac
        printf '  %-14s %-13s %-10s %s\n' "$(tb_ns "$r")" "$(tb_ip "$r")" "$(tb_link "$r")" "$runs"
    done
    printf '  %-14s %-13s %-10s %s\n' "$(tb_ns vcn)" "$TB_GW_HOSTS,$TB_GW_CLIENT" "-" "router, proxy ARP"
    echo "  floating IP $TB_VIP/32 routed to: $(tb_vip_owner "$TB_VIP")"
    echo "  try: ip netns exec $(tb_ns client) curl -si http://$(tb_ip ep1)/whoami"
}

# Kills every process in the namespace (TERM, then KILL after a bounded wait).
tb_kill_ns_pids() {
    local ns="$1" pids _
    pids="$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')" || true
    [[ -z "${pids// /}" ]] && return 0
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 1 30); do
        pids="$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')" || true
        [[ -z "${pids// /}" ]] && return 0
        sleep 0.1
    done
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.1
}

# tb_alive PID: the process exists and has not exited. `kill -0` also succeeds on a zombie, and a
# daemon started from a subshell is reaped by PID 1, which here can take seconds: waiting on
# `kill -0` measured the reaper, not the exit (a restart looked 2 s long when it took 7 ms to exit).
tb_alive() {
    local st
    st="$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ -n "$st" && "${st%% *}" != Z ]]
}

# Kills the process named in a pid file if it is still alive, then removes the file.
tb_kill_pidfile() {
    local f="$1" pid
    [[ -f "$f" ]] || return 0
    pid="$(cat "$f" 2>/dev/null || true)"
    if [[ "$pid" =~ ^[0-9]+$ ]] && tb_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

# Tears everything of this TB down. Never fails; safe to call repeatedly.
# The timeline plots' library (Debian's python3-matplotlib), installed when missing. Sets
# TB_PLOT_PYTHON to an interpreter that has it (Debian's /usr/bin/python3 when the python3 on
# PATH is another one, e.g. pyenv's).
tb_need_matplotlib() {
    local py
    for py in python3 /usr/bin/python3; do
        if "$py" -c 'import matplotlib' 2>/dev/null; then TB_PLOT_PYTHON="$py"; return 0; fi
    done
    tb_log "installing python3-matplotlib for the timeline plot"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-matplotlib >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-matplotlib >/dev/null; }
    /usr/bin/python3 -c 'import matplotlib' 2>/dev/null || { tb_die "python3-matplotlib could not be installed (apt-get install python3-matplotlib)"; return 1; }
    TB_PLOT_PYTHON=/usr/bin/python3
}

# A BPF filesystem of the test bed's own, for daemons run with persistDatapath: pins made inside
# `ip netns exec` (which remounts /sys, hiding /sys/fs/bpf) land here, visible from the root
# namespace, and tb_down's unmount frees every one of them. Prints its path.
tb_bpffs() {
    local dir="$TB_STATE/bpffs"
    mkdir -p "$dir"
    mountpoint -q "$dir" || mount -t bpf bpf "$dir"
    echo "$dir"
}

tb_down() {
    local r ns f
    [[ "$TB" =~ ^[a-z][a-z0-9]{0,5}$ ]] || { tb_log "refusing to tear down odd TB='$TB'"; return 0; }
    if [[ -d "$TB_STATE" ]]; then
        while IFS= read -r f; do tb_kill_pidfile "$f"; done < <(find "$TB_STATE" -name '*.pid' 2>/dev/null)
    fi
    # Pinned datapaths: unmounting the bed's bpffs unpins them (programs go with the interfaces).
    if mountpoint -q "$TB_STATE/bpffs" 2>/dev/null; then umount -l "$TB_STATE/bpffs" 2>/dev/null || true; fi
    for r in "${TB_ALL_ROLES[@]}"; do
        ns="$(tb_ns "$r")"
        tb_ns_exists "$ns" || continue
        tb_kill_ns_pids "$ns"
    done
    for r in "${TB_ALL_ROLES[@]}"; do
        ns="$(tb_ns "$r")"
        tb_ns_exists "$ns" || continue
        ip netns del "$ns" 2>/dev/null || tb_log "could not delete namespace $ns"
    done
    rm -rf "$TB_STATE" 2>/dev/null || true
    rmdir "$TB_STATE_ROOT" 2>/dev/null || true
    return 0
}
