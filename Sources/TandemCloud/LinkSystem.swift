import CLibMnl
import Foundation
import TandemCore
#if canImport(Glibc)
import Glibc
#endif

/// An Ethernet MAC address.
public struct MACAddress: Sendable, Hashable, CustomStringConvertible {
    public var bytes: [UInt8]
    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public static let broadcast = MACAddress([0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
    public var isZero: Bool { bytes.allSatisfy { $0 == 0 } }
    public var description: String { bytes.map { String(format: "%02x", $0) }.joined(separator: ":") }
}

/// What the L2 provider needs to know about its interface, read in this process's network namespace.
public struct LinkInfo: Sendable, Equatable {
    public var name: String
    public var index: Int32
    public var mac: MACAddress
    public var isUp: Bool
    public var isRunning: Bool
}

/// Netlink, ioctl and packet-socket calls, all blocking but short (the kernel answers at once).
enum LinkSystem {
    static func errorText(_ code: Int32) -> String { String(cString: strerror(code)) }

    /// Looks the interface up by name: index (if_nametoindex), hardware address (SIOCGIFHWADDR),
    /// flags (SIOCGIFFLAGS). Only Ethernet interfaces qualify (gratuitous ARP needs them).
    static func link(_ name: String) throws(CloudError) -> LinkInfo {
        let index = if_nametoindex(name)
        guard index != 0 else {
            let code = errno
            if code == ENODEV || code == ENXIO || code == 0 {
                throw CloudError("interface \(name) does not exist in this network namespace")
            }
            throw CloudError("cannot look up interface \(name): \(errorText(code))")
        }
        var mac = [UInt8](repeating: 0, count: 6)
        var hwtype: UInt16 = 0
        let rc = mac.withUnsafeMutableBufferPointer { tdm_if_hwaddr(name, $0.baseAddress, &hwtype) }
        guard rc == 0 else { throw CloudError("cannot read the hardware address of \(name): \(errorText(-rc))") }
        guard hwtype == UInt16(TDM_ARPHRD_ETHER) else {
            throw CloudError("interface \(name) is not Ethernet (hardware type \(hwtype)); the l2 cloud announces the floating IP by ARP, which needs an Ethernet interface")
        }
        let address = MACAddress(mac)
        guard !address.isZero else { throw CloudError("interface \(name) has no MAC address (00:00:00:00:00:00)") }
        var flags: UInt32 = 0
        let frc = tdm_if_flags(name, &flags)
        guard frc == 0 else { throw CloudError("cannot read the flags of \(name): \(errorText(-frc))") }
        return LinkInfo(name: name, index: Int32(bitPattern: index), mac: address,
                        isUp: flags & tdm_iff_up() != 0, isRunning: flags & tdm_iff_running() != 0)
    }

    /// IPv4 addresses (with prefix lengths) on each interface, through getifaddrs.
    static func ipv4Addresses() -> [String: [(IPv4Address, Int)]] {
        var head: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&head) == 0, let first = head else { return [:] }
        defer { freeifaddrs(first) }
        var out: [String: [(IPv4Address, Int)]] = [:]
        var cursor: UnsafeMutablePointer<ifaddrs>? = first
        while let entry = cursor {
            defer { cursor = entry.pointee.ifa_next }
            guard let sa = entry.pointee.ifa_addr, sa.pointee.sa_family == sa_family_t(AF_INET),
                  let namePtr = entry.pointee.ifa_name else { continue }
            let address = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                IPv4Address(networkOrder: $0.pointee.sin_addr.s_addr)
            }
            var length = 32
            if let nm = entry.pointee.ifa_netmask {
                let mask = nm.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt32(bigEndian: $0.pointee.sin_addr.s_addr) }
                length = mask.nonzeroBitCount
            }
            out[String(cString: namePtr), default: []].append((address, length))
        }
        return out
    }

    /// Effective capabilities of this process (CapEff in /proc/self/status), nil if unreadable.
    static func effectiveCapabilities() -> UInt64? {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("CapEff:") {
            return UInt64(line.dropFirst("CapEff:".count).trimmingCharacters(in: .whitespaces), radix: 16)
        }
        return nil
    }

    static let capNetAdmin: UInt64 = 1 << 12
    static let capNetRaw: UInt64 = 1 << 13

    // MARK: Netlink (libmnl)

    enum AddressChange { case add, delete }

    /// Adds or deletes `vip`/32 on interface `index` with one RTM_NEWADDR / RTM_DELADDR and reads
    /// the kernel's ack. Returns 0 on success, else the errno the kernel answered with.
    static func changeAddress(_ change: AddressChange, vip: IPv4Address, index: Int32) -> Int32 {
        guard let nl = mnl_socket_open(NETLINK_ROUTE) else { return errno }
        defer { mnl_socket_close(nl) }
        guard mnl_socket_bind(nl, 0, pid_t(MNL_SOCKET_AUTOPID)) >= 0 else { return errno }
        // The kernel answers synchronously; the timeout only bounds a kernel that never does.
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        _ = setsockopt(mnl_socket_get_fd(nl), SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let portid = mnl_socket_get_portid(nl)
        let seq = UInt32(truncatingIfNeeded: time(nil)) &+ UInt32.random(in: 0...0xffff)

        let bufferSize = 8192
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: bufferSize, alignment: 8)
        defer { buffer.deallocate() }
        memset(buffer, 0, bufferSize)
        guard let nlh = mnl_nlmsg_put_header(buffer) else { return ENOMEM }
        switch change {
        case .add:
            nlh.pointee.nlmsg_type = UInt16(RTM_NEWADDR)
            nlh.pointee.nlmsg_flags = UInt16(NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK)
        case .delete:
            nlh.pointee.nlmsg_type = UInt16(RTM_DELADDR)
            nlh.pointee.nlmsg_flags = UInt16(NLM_F_REQUEST | NLM_F_ACK)
        }
        nlh.pointee.nlmsg_seq = seq
        guard let extra = mnl_nlmsg_put_extra_header(nlh, MemoryLayout<ifaddrmsg>.size) else { return ENOMEM }
        let ifa = extra.bindMemory(to: ifaddrmsg.self, capacity: 1)
        ifa.pointee.ifa_family = UInt8(AF_INET)
        ifa.pointee.ifa_prefixlen = 32
        ifa.pointee.ifa_flags = 0
        ifa.pointee.ifa_scope = UInt8(RT_SCOPE_UNIVERSE.rawValue)
        ifa.pointee.ifa_index = UInt32(bitPattern: index)
        // Both, as iproute2 sends them: IFA_LOCAL is the address, IFA_ADDRESS the peer (= local).
        mnl_attr_put_u32(nlh, UInt16(IFA_LOCAL), vip.networkOrder)
        mnl_attr_put_u32(nlh, UInt16(IFA_ADDRESS), vip.networkOrder)

        guard mnl_socket_sendto(nl, nlh, Int(nlh.pointee.nlmsg_len)) >= 0 else { return errno }
        while true {
            let n = mnl_socket_recvfrom(nl, buffer, bufferSize)
            if n < 0 {
                let code = errno
                if code == EINTR { continue }
                return code
            }
            errno = 0
            let rc = mnl_cb_run(buffer, n, seq, portid, nil, nil)
            if rc == MNL_CB_ERROR { return errno == 0 ? EPROTO : errno }
            if rc == MNL_CB_STOP { return 0 }
            // MNL_CB_OK: more to read (not expected for a single ack).
        }
    }
}
