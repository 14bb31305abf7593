import Foundation
import Glibc
import TandemCore

/// Start-up checks against the running system, each with a message a user can act on.
public enum SystemChecks {
    public static var isRoot: Bool { geteuid() == 0 }

    public static func interfaceExists(_ name: String) -> Bool { if_nametoindex(name) != 0 }

    /// Whether the interface forwards IPv4 (net.ipv4.conf.<if>.forwarding), nil if unreadable.
    public static func forwardsIPv4(_ name: String) -> Bool? {
        guard !name.contains("/"), let text = try? String(contentsOfFile: "/proc/sys/net/ipv4/conf/\(name)/forwarding", encoding: .utf8)
        else { return nil }
        return text.trimmingCharacters(in: .whitespacesAndNewlines) == "1"
    }

    /// Whether the interface is a software device (veth, bridge, ...) rather than a NIC.
    public static func isVirtual(_ name: String) -> Bool {
        guard !name.contains("/") else { return false }
        return !FileManager.default.fileExists(atPath: "/sys/class/net/\(name)/device")
    }

    /// The first IPv4 address of an interface.
    public static func ipv4Address(of name: String) -> IPv4Address? {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0, let first = list else { return nil }
        defer { freeifaddrs(list) }
        var cur: UnsafeMutablePointer<ifaddrs>? = first
        while let p = cur {
            defer { cur = p.pointee.ifa_next }
            guard let addr = p.pointee.ifa_addr, addr.pointee.sa_family == sa_family_t(AF_INET),
                  String(cString: p.pointee.ifa_name) == name else { continue }
            let sin = UnsafeRawPointer(addr).loadUnaligned(as: sockaddr_in.self)
            return IPv4Address(networkOrder: sin.sin_addr.s_addr)
        }
        return nil
    }

    /// Asks the kernel for a route to `ip` by connecting a UDP socket (which sends nothing).
    @Sendable public static func routeProblem(_ ip: IPv4Address) -> String? {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { return "socket: \(String(cString: strerror(errno)))" }
        defer { close(fd) }
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = UInt16(9).bigEndian
        sin.sin_addr.s_addr = ip.networkOrder
        let rc = withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        return rc == 0 ? nil : String(cString: strerror(errno))
    }
}
