#!/usr/bin/env bash
# The Debian package end to end, as root (scripts/test.sh runs it after the privileged suite):
# `make package`; `dpkg -i`; the installed files, binary and man page; `systemd-analyze verify`
# (and the offline security score) of the installed unit; the unit's own ExecStart run from the
# installed paths (no --bpf-object, the installed /etc/tandem/config.yaml) inside a test-bed
# namespace, under exactly the unit's capability set with no new privileges, in systemd's
# environment and with the Swift toolchain's libraries hidden; a service created through the
# installed CLI serving nginx through the VIP to the client namespace; the unit's ExecReload
# picking up a service added to the config; `dpkg -r` (the conffile and the state stay), then
# `dpkg -P`, after which /usr, /etc and /var/lib hold exactly the files they held before.
# Everything it made is removed on every path; the whole run is bounded (PACKAGE_TEST_TIMEOUT
# seconds, default 2700, which includes the release build).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PACKAGE_TEST_BOUNDED:-}" ]]; then
    exec timeout --kill-after=30 "${PACKAGE_TEST_TIMEOUT:-2700}" env PACKAGE_TEST_BOUNDED=1 bash "$0" "$@"
fi
cd "$REPO"
[[ $EUID -eq 0 ]] || { echo "package-test: must run as root (dpkg -i, namespaces, BPF)" >&2; exit 1; }

log() { printf '[package-test %s] %s\n' "$(date +%T)" "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }
UNIT=/lib/systemd/system/tandem.service

# Never touch an installation this test did not make.
if dpkg-query -W -f='${Status}' tandem 2>/dev/null | grep -qE 'installed|config-files'; then
    fail "a tandem package is installed already (dpkg -P tandem first)"
fi
for p in /usr/bin/tandem /usr/lib/tandem /etc/tandem /var/lib/tandem "$UNIT"; do
    [[ ! -e "$p" ]] || fail "$p exists already; this test installs and purges the package and would remove it"
done

export TB="pk$(printf '%04d' $((RANDOM % 10000)))" NODES=1
export TANDEM_ECHO="$REPO/.build/debug/tandem-echo"
# shellcheck source=testbed/lib.sh
source "$REPO/testbed/lib.sh"
WORK="$(mktemp -d /tmp/tandem-package-test.XXXXXX)"
NODE_PID="" INSTALLED=0
# Whether a child still runs (an exited one stays a zombie until waited for).
running() { [[ -e "/proc/$1/stat" && "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }
# SIGTERM, up to $2 seconds, then SIGKILL; returns the exit status (137 when it had to be killed).
stop_child() {
    local pid="$1" secs="$2" i rc=0
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < secs * 10; i++)); do running "$pid" || break; sleep 0.1; done
    running "$pid" && kill -KILL "$pid" 2>/dev/null
    wait "$pid" || rc=$?
    return "$rc"
}
cleanup() {
    local rc=$?
    set +e
    [[ -n "$NODE_PID" ]] && stop_child "$NODE_PID" 5
    ((rc == 0)) || { echo "--- node log (tail)" >&2; tail -n 40 "$WORK/node.log" >&2 2>/dev/null; }
    tb_down
    ((INSTALLED)) && dpkg -P tandem >/dev/null 2>&1
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# What /usr, /etc and /var/lib hold, less what dpkg and apt keep about themselves.
snapshot() {
    find /usr /etc /var/lib -xdev \( -path /var/lib/dpkg -o -path /var/lib/apt -o -path /var/lib/systemd \
        -o -path /var/lib/ucf -o -path /var/lib/man-db -o -path /etc/ld.so.cache \) -prune -o -print 2>/dev/null | sort
}

log "make package"
t0=$SECONDS
make -s package >"$WORK/package.log" 2>&1 || { tail -n 40 "$WORK/package.log" >&2; fail "make package"; }
build_s=$((SECONDS - t0))
grep '^\[package\]' "$WORK/package.log" >&2 || true
deb="$(tail -n 1 "$WORK/package.log")"
[[ "$deb" == dist/tandem_*.deb && -f "$deb" ]] || fail "make package printed no package ($deb)"
log "built $deb in ${build_s} s"
dpkg-deb --info "$deb" >"$WORK/info"
grep -E '^ (Package|Version|Architecture|Depends|Installed-Size):' "$WORK/info" >&2
dpkg-deb --contents "$deb" | awk '{print $1, $6}' >&2

snapshot >"$WORK/before"
log "dpkg -i"
dpkg -i "$deb" >"$WORK/dpkg-i.log" 2>&1 || { cat "$WORK/dpkg-i.log" >&2; fail "dpkg -i"; }
INSTALLED=1
for f in /usr/bin/tandem /usr/lib/tandem/tandem_lb.o "$UNIT" /etc/tandem/config.yaml /usr/share/man/man8/tandem.8.gz; do
    dpkg -L tandem | grep -qx "$f" || fail "dpkg -L tandem does not list $f"
    [[ -f "$f" ]] || fail "$f not installed"
done
[[ "$(stat -c %a /var/lib/tandem)" == 700 ]] || fail "/var/lib/tandem is not mode 0700"
dpkg-query -W -f='${Conffiles}' tandem | grep -q '/etc/tandem/config.yaml' || fail "config.yaml is not a conffile"

# The binary: no Swift runtime, every library from a Debian package, and it runs with the
# toolchain's libraries hidden.
readelf -d /usr/bin/tandem | grep -E 'NEEDED.*(libswift|libFoundation|libdispatch|libBlocksRuntime)' && fail "links Swift runtime libraries"
ldd /usr/bin/tandem >"$WORK/ldd"
grep -q 'not found' "$WORK/ldd" && { cat "$WORK/ldd" >&2; fail "unresolved libraries"; }
while read -r lib; do
    real="$(readlink -f "$lib")"
    dpkg -S "$lib" >/dev/null 2>&1 || dpkg -S "$real" >/dev/null 2>&1 || dpkg -S "${real#/usr}" >/dev/null 2>&1 ||
        fail "$lib belongs to no Debian package"
done < <(awk '/=> \//{print $3} /^\t\//{print $1}' "$WORK/ldd")
# A prefix that runs a command with the toolchain's library directory hidden under an empty
# tmpfs (in a mount namespace of its own), as on a machine without Swift; every step execs.
hidden=()
if command -v swift >/dev/null; then
    toolchain_lib="$(dirname "$(dirname "$(readlink -f "$(command -v swift)")")")/lib"
    [[ -d "$toolchain_lib" ]] &&
        hidden=(unshare --mount --propagation private -- bash -c 'mount -t tmpfs -o ro,size=4k tmpfs "$1" && shift && exec "$@"' _ "$toolchain_lib")
fi
hidden() { "${hidden[@]}" "$@"; }
hidden /usr/bin/tandem --help >"$WORK/help" || fail "tandem --help"
grep -q "FILES: /etc/tandem/config.yaml" "$WORK/help" || fail "tandem --help lacks its discussion"
# To a file first: with pipefail, `| grep -q` fails whenever grep exits before the writer is done
# (SIGPIPE, status 141), which happened once in CI with the long node run help.
hidden /usr/bin/tandem node run --help >"$WORK/node-help" || fail "tandem node run --help"
grep -q "SIGHUP" "$WORK/node-help" || fail "tandem node run --help does not describe SIGHUP"
if command -v man >/dev/null; then
    MANWIDTH=100 man -l /usr/share/man/man8/tandem.8.gz 2>/dev/null >"$WORK/man" || fail "man -l tandem.8.gz"
    grep -q "SIGHUP" "$WORK/man" && grep -q -- "--bpf-object" "$WORK/man" || fail "the man page lacks node run's options"
fi
log "binary: runs without the toolchain ($(grep -c '=>' "$WORK/ldd") shared libraries, all from Debian packages); --help and man page ok"

if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify "$UNIT" >"$WORK/verify" 2>&1 || { cat "$WORK/verify" >&2; fail "systemd-analyze verify"; }
    if grep -i "tandem" "$WORK/verify"; then fail "systemd-analyze verify complains about the unit"; fi
    score="$(systemd-analyze security --offline=true --no-pager "$UNIT" 2>/dev/null | sed -n 's/.*Overall exposure level for .*: \([0-9.]* [A-Z]*\).*/\1/p')"
    log "systemd-analyze verify: ok; offline security exposure: ${score:-n/a}"
elif [[ "${CI:-}" == true ]]; then
    fail "systemd-analyze not installed (make deps)"
fi

# The unit's own commands and capability set.
exec_start="$(sed -n 's/^ExecStart=//p' "$UNIT")"
exec_reload="$(sed -n 's/^ExecReload=//p' "$UNIT")"
caps="$(sed -n 's/^CapabilityBoundingSet=//p' "$UNIT" | tr 'A-Z' 'a-z' | sed 's/cap_/+/g; s/ /,/g')"
[[ "$exec_start" == "/usr/bin/tandem node run --config /etc/tandem/config.yaml"* && -n "$caps" && -n "$exec_reload" ]] ||
    fail "unexpected unit: ExecStart='$exec_start' ExecReload='$exec_reload' caps='$caps'"
grep -q '^NoNewPrivileges=yes' "$UNIT" || fail "the unit does not set NoNewPrivileges"

log "test bed $TB"
bash "$REPO/testbed/up.sh" >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; fail "testbed/up.sh"; }
# The unit pins under /sys/fs/bpf, which `ip netns exec` hides (it mounts a fresh sysfs): the test
# bed's own bpffs stands in for it; tb_down unmounts it, and every pin with it.
PIN_DIR="$(tb_bpffs)"
printf '# package test: a bpffs that ip netns exec does not hide\npinDirectory: %s\n' "$PIN_DIR" >>/etc/tandem/config.yaml
log "starting the unit's ExecStart in $(tb_ns llb1) with capabilities ${caps//+/}"
# As systemd would start it: an empty environment, /, the memlock limit lifted (LimitMEMLOCK;
# where this shell may not raise it, as here, the kernel's memcg accounting makes it moot),
# then the bounding set cut to the unit's, nothing inheritable, no new privileges. Every step
# execs the next, so the background job's pid is the daemon's ($MAINPID).
start_unit() {
    # shellcheck disable=SC2086
    (cd / && { ulimit -l unlimited 2>/dev/null || true; } && exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        "${hidden[@]}" ip netns exec "$(tb_ns llb1)" \
        setpriv --bounding-set -all,$caps --inh-caps -all --no-new-privs -- $exec_start </dev/null >>"$WORK/node.log" 2>&1) &
    NODE_PID=$!
}
start_unit
api_up() { running "$NODE_PID" && tb_exec llb1 /usr/bin/tandem get lb; }
tb_wait_for 30 "the installed node's API" api_up || fail "the node did not come up"
pid="$NODE_PID"
[[ "$(readlink "/proc/$pid/exe")" == /usr/bin/tandem ]] || fail "pid $pid is $(readlink "/proc/$pid/exe"), not the daemon"
eff="$(awk '/^CapEff/{print $2}' "/proc/$pid/status")"
nnp="$(awk '/^NoNewPrivs/{print $2}' "/proc/$pid/status")"
got="$(capsh --decode="$eff" | cut -d= -f2 | tr ',' '\n' | sort | tr '\n' ' ')"
want="$(tr ',' '\n' <<<"${caps//+/cap_}" | sort | tr '\n' ' ')"
[[ "$got" == "$want" && "$nnp" == 1 ]] || fail "daemon capabilities: '$got' (want '$want'), NoNewPrivs $nnp"
log "daemon pid $pid runs with exactly: $got(NoNewPrivs $nnp, /usr/lib/tandem/tandem_lb.o found by default)"

tb_exec llb1 /usr/bin/tandem create lb "$TB_VIP" --tcp=56002:80 --endpoints=10.0.10.21:1,10.0.10.22:1 --mode=fullnat --name web \
    >"$WORK/create" 2>&1 || { cat "$WORK/create" >&2; fail "tandem create lb"; }
page="$(tb_exec client curl -fsS -m 3 "http://$TB_VIP:56002/")" || fail "curl through the VIP"
grep -q "Welcome to nginx!" <<<"$page" || fail "the VIP did not serve nginx's page"
seen="$(for _ in 1 2 3 4; do tb_exec client curl -fsS -m 3 "http://$TB_VIP:56002/whoami"; done | sort -u | tr '\n' ' ')"
[[ "$seen" == "ep1 ep2 " ]] || fail "round robin through the VIP reached: $seen"
grep -q '56002' /var/lib/tandem/state.jsonl || fail "the API change is not in /var/lib/tandem/state.jsonl"
log "nginx through the VIP $TB_VIP:56002 from the client: both endpoints; state file written"

# ExecReload: a service added to the config file appears without a restart.
cat >>/etc/tandem/config.yaml <<'YAML'
services:
  - {externalIP: 10.0.10.143, port: 56003, mode: fullnat, endpoints: [{ip: 10.0.10.22, port: 80}]}
YAML
MAINPID="$pid" bash -c "$exec_reload" || fail "ExecReload ($exec_reload)"
reloaded() { tb_exec client curl -fsS -m 2 "http://$TB_VIP:56003/whoami" | grep -qx ep2; }
tb_wait_for 15 "the reloaded service 56003" reloaded || fail "ExecReload did not add the config's service"
grep -q "config reloaded" "$WORK/node.log" || fail "no reload in the log"
log "ExecReload: the config's new service serves through the VIP"

# `systemctl restart`: SIGTERM leaves the datapath forwarding with no daemon; the next start
# adopts it.
rc=0
stop_child "$NODE_PID" 10 || rc=$?
NODE_PID=""
((rc == 0)) || fail "the daemon exited with status $rc after SIGTERM (137: it had to be killed)"
grep -q "stopped for a restart; datapath pinned and forwarding" "$WORK/node.log" || fail "SIGTERM was no graceful restart"
tb_exec client curl -fsS -m 3 "http://$TB_VIP:56002/whoami" >/dev/null || fail "the pinned datapath did not serve the VIP with no daemon"
log "SIGTERM: daemon gone, the pinned datapath still serves the VIP"
start_unit
tb_wait_for 30 "the restarted node's API" api_up || fail "the node did not come back"
grep -q "datapath adopted" "$WORK/node.log" || fail "the restarted daemon did not adopt the pinned datapath"
tb_exec client curl -fsS -m 3 "http://$TB_VIP:56002/whoami" >/dev/null || fail "curl through the VIP after the restart"
log "restarted: the datapath was adopted and serves"
# A real stop (what the unit's ExecStop sends at system shutdown): SIGINT releases everything.
kill -INT "$NODE_PID"
rc=0
for ((i = 0; i < 100; i++)); do running "$NODE_PID" || break; sleep 0.1; done
wait "$NODE_PID" || rc=$?
NODE_PID=""
((rc == 0)) || fail "the daemon exited with status $rc after SIGINT"
grep -q "tandem node stopped; datapath detached" "$WORK/node.log" || fail "no release after SIGINT"
# (A bpffs root always holds the kernel's maps.debug and progs.debug.)
left="$(find "$PIN_DIR" -mindepth 1 ! -name '*.debug' 2>/dev/null)"
[[ -z "$left" ]] || fail "pins left after the release: $left"
log "SIGINT: datapath detached, no pin left"
tb_down

log "dpkg -r"
dpkg -r tandem >"$WORK/dpkg-r.log" 2>&1 || { cat "$WORK/dpkg-r.log" >&2; fail "dpkg -r"; }
for f in /usr/bin/tandem /usr/lib/tandem "$UNIT" /usr/share/man/man8/tandem.8.gz /usr/share/doc/tandem; do
    [[ ! -e "$f" ]] || fail "$f left after dpkg -r"
done
[[ -f /etc/tandem/config.yaml && -f /var/lib/tandem/state.jsonl ]] || fail "dpkg -r removed the config or the state"
dpkg-query -W -f='${Status}' tandem | grep -q 'config-files' || fail "not in config-files state after dpkg -r"
log "dpkg -P"
dpkg -P tandem >"$WORK/dpkg-p.log" 2>&1 || { cat "$WORK/dpkg-p.log" >&2; fail "dpkg -P"; }
INSTALLED=0
if dpkg-query -W -f='${Status}' tandem 2>/dev/null | grep -qE 'installed|config-files'; then fail "still known to dpkg after purge"; fi
dpkg -L tandem >/dev/null 2>&1 && fail "dpkg -L still lists files"
for f in /etc/tandem /var/lib/tandem /usr/lib/tandem; do [[ ! -e "$f" ]] || fail "$f left after dpkg -P"; done
snapshot >"$WORK/after"
if ! diff "$WORK/before" "$WORK/after" >"$WORK/diff"; then
    cat "$WORK/diff" >&2
    fail "/usr, /etc or /var/lib changed between before dpkg -i and after dpkg -P"
fi
log "OK: package built in ${build_s} s, installed, served, reloaded, removed and purged leaving nothing behind ($((SECONDS)) s in all)"
