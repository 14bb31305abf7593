#!/usr/bin/env bash
# Installs what building, testing and the test bed need on a fresh Debian 12 machine.
# Skips apt when everything is already there, so repeated runs are fast.
set -euo pipefail

packages=(
    clang llvm libbpf-dev bpftool pkg-config linux-libc-dev libelf-dev zlib1g-dev  # BPF build + libbpf
    libmnl-dev libnetfilter-conntrack-dev                                          # netlink libraries (conntrack)
    libcurl4-openssl-dev libssl-dev                                                # URLSession (CLI), OpenSSL (OCI keys)
    iproute2 nftables iptables iputils-ping procps util-linux                      # test bed
    nginx-light curl wrk haproxy socat conntrack conntrackd keepalived openssl ethtool     # peers and benchmark tools
    gcc libc6-dev                                                                  # bench/cost.sh builds its paced generator
    dpkg-dev binutils systemd libcap2-bin man-db                                   # make package and its test
    python3-matplotlib                                                             # timeline plots (failover, restart, health.sh --plot)
    python3-cryptography                                                           # proto/vectors/verify.py: the vectors opened by a second implementation
    bird2                                                                          # BGP: each node's speaker, and the test bed's router
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $EUID -ne 0 ]]; then
        echo "deps: missing packages (${missing[*]}); run as root: make deps" >&2
        exit 1
    fi
    echo "deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# nginx, conntrackd, keepalived and bird from Debian start system instances on install; the test bed and the
# benchmark run their own per namespace.
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now nginx conntrackd keepalived bird >/dev/null 2>&1 || true; fi
command -v swift >/dev/null || { echo "deps: swift 6 toolchain not found on PATH" >&2; exit 1; }
echo "deps: ok"
