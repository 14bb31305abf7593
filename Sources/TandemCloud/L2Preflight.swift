import CLibMnl
import Foundation
import TandemCore
import TandemOCI
#if canImport(Glibc)
import Glibc
#endif

/// `tandem cloud check --cloud=l2`: read-only checks, in the style of `OCIPreflight` (same
/// `CheckResult` lines, render with `OCIPreflight.render`, pass with `OCIPreflight.passed`).
/// Changes nothing: it opens sockets and reads interface state only.
public enum L2Preflight {
    public static func run(interface: String, vip: String?) -> [CheckResult] {
        var results: [CheckResult] = []

        // 1. The VIP's spelling.
        var address: IPv4Address?
        if let vip {
            if let a = IPv4Address(vip) {
                if a.isUnspecified || a.isLoopback || a.isMulticastOrBroadcast {
                    results.append(CheckResult("vip", .failed, "\(vip) can't be a floating IP (unspecified, loopback, multicast or broadcast)"))
                } else {
                    address = a
                    results.append(CheckResult("vip", .ok, "\(a) is an IPv4 address"))
                }
            } else {
                results.append(CheckResult("vip", .failed, "'\(vip)' is not an IPv4 address (dotted quad, e.g. 10.0.10.143)"))
            }
        } else {
            results.append(CheckResult("vip", .skipped, "no --vip given"))
        }

        // 2. The interface: exists, Ethernet with a MAC, up.
        let link: LinkInfo?
        do {
            let found = try LinkSystem.link(interface)
            link = found
            results.append(CheckResult("interface", .ok, "\(interface) is index \(found.index), MAC \(found.mac)"))
            if !found.isUp {
                results.append(CheckResult("link", .failed, "\(interface) is down (ip link set \(interface) up)"))
            } else if !found.isRunning {
                results.append(CheckResult("link", .warning, "\(interface) is up but has no carrier"))
            } else {
                results.append(CheckResult("link", .ok, "\(interface) is up"))
            }
        } catch {
            link = nil
            results.append(CheckResult("interface", .failed, error.message))
            results.append(CheckResult("link", .skipped, "no usable interface"))
        }

        // 3. Privileges: adding addresses needs CAP_NET_ADMIN, raw ARP needs CAP_NET_RAW.
        if let caps = LinkSystem.effectiveCapabilities() {
            var missing: [String] = []
            if caps & LinkSystem.capNetAdmin == 0 { missing.append("CAP_NET_ADMIN (to add and remove addresses)") }
            if caps & LinkSystem.capNetRaw == 0 { missing.append("CAP_NET_RAW (to send gratuitous ARP)") }
            results.append(missing.isEmpty
                ? CheckResult("privileges", .ok, geteuid() == 0 ? "root" : "CAP_NET_ADMIN and CAP_NET_RAW")
                : CheckResult("privileges", .failed, "missing \(missing.joined(separator: " and ")); run as root"))
        } else {
            results.append(CheckResult("privileges", geteuid() == 0 ? .ok : .warning,
                                       geteuid() == 0 ? "root" : "cannot read /proc/self/status; not root"))
        }

        // 4. A route netlink socket (what adds and removes the addresses).
        if let nl = mnl_socket_open(NETLINK_ROUTE) {
            let bound = mnl_socket_bind(nl, 0, pid_t(MNL_SOCKET_AUTOPID)) >= 0
            let code = errno
            mnl_socket_close(nl)
            results.append(bound ? CheckResult("netlink", .ok, "route netlink socket opens")
                                 : CheckResult("netlink", .failed, "cannot bind a route netlink socket: \(LinkSystem.errorText(code))"))
        } else {
            results.append(CheckResult("netlink", .failed, "cannot open a route netlink socket: \(LinkSystem.errorText(errno))"))
        }

        // 5. A packet socket on the interface (what sends the gratuitous ARP).
        if let link {
            let fd = tdm_packet_open(link.index)
            if fd >= 0 {
                close(fd)
                results.append(CheckResult("packet-socket", .ok, "raw packet socket on \(interface) opens"))
            } else {
                let hint = -fd == EPERM ? " (needs root or CAP_NET_RAW)" : ""
                results.append(CheckResult("packet-socket", .failed, "cannot open a raw packet socket on \(interface): \(LinkSystem.errorText(-fd))\(hint)"))
            }
        } else {
            results.append(CheckResult("packet-socket", .skipped, "no usable interface"))
        }

        // 6. Where the VIP is now, in this namespace (informational).
        if let address {
            let all = LinkSystem.ipv4Addresses()
            let holders = all.filter { $0.value.contains { $0.0 == address } }.keys.sorted()
            if holders.isEmpty {
                results.append(CheckResult("vip-address", .ok, "\(address) is on no interface here yet; assign-vip adds it to \(interface)"))
            } else if holders == [interface] {
                let length = all[interface]?.first { $0.0 == address }?.1 ?? 32
                results.append(CheckResult("vip-address", .ok, "\(address)/\(length) is on \(interface): this node holds it"))
            } else {
                results.append(CheckResult("vip-address", .warning, "\(address) is on \(holders.joined(separator: ", ")) here, not only on \(interface)"))
            }
        } else {
            results.append(CheckResult("vip-address", .skipped, vip == nil ? "no --vip given" : "no valid VIP"))
        }
        return results
    }
}
