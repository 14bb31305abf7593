import CNetfilterConntrack
import TandemCore

/// Conversion between `KernelConnection` and libnetfilter_conntrack's `nf_conntrack` object
/// (`nfct_get_attr_*` / `nfct_set_attr_*`). Addresses and ports are in network byte order there.
///
/// ICMP: libnetfilter_conntrack exposes the id, type and code of the original tuple only (a
/// parsed reply tuple's ICMP fields are stored but flagged as the original's), so the reply
/// tuple's ICMP part is taken as the original's inverted: an ICMP id rewritten by NAT is not seen.
extension KernelConnection {
    /// Reads an entry; nil when it is not IPv4 or lacks an original or reply address.
    public init?(nfct ct: OpaquePointer) {
        func has(_ a: nf_conntrack_attr) -> Bool { nfct_attr_is_set(ct, a) > 0 }
        guard has(ATTR_ORIG_L3PROTO), nfct_get_attr_u8(ct, ATTR_ORIG_L3PROTO) == UInt8(AF_INET),
              has(ATTR_ORIG_IPV4_SRC), has(ATTR_ORIG_IPV4_DST),
              has(ATTR_REPL_IPV4_SRC), has(ATTR_REPL_IPV4_DST) else { return nil }
        let proto = has(ATTR_ORIG_L4PROTO) ? nfct_get_attr_u8(ct, ATTR_ORIG_L4PROTO) : 0
        let origL4: KernelTuple.L4
        let replL4: KernelTuple.L4
        if proto == 1 {
            origL4 = .icmp(id: UInt16(bigEndian: nfct_get_attr_u16(ct, ATTR_ICMP_ID)),
                           type: nfct_get_attr_u8(ct, ATTR_ICMP_TYPE), code: nfct_get_attr_u8(ct, ATTR_ICMP_CODE))
            replL4 = .none   // replaced below with the inverted original
        } else if has(ATTR_ORIG_PORT_SRC) || has(ATTR_ORIG_PORT_DST) {
            origL4 = .ports(source: UInt16(bigEndian: nfct_get_attr_u16(ct, ATTR_ORIG_PORT_SRC)),
                            destination: UInt16(bigEndian: nfct_get_attr_u16(ct, ATTR_ORIG_PORT_DST)))
            replL4 = .ports(source: UInt16(bigEndian: nfct_get_attr_u16(ct, ATTR_REPL_PORT_SRC)),
                            destination: UInt16(bigEndian: nfct_get_attr_u16(ct, ATTR_REPL_PORT_DST)))
        } else {
            origL4 = .none
            replL4 = .none
        }
        let original = KernelTuple(source: IPv4Address(networkOrder: nfct_get_attr_u32(ct, ATTR_ORIG_IPV4_SRC)),
                                   destination: IPv4Address(networkOrder: nfct_get_attr_u32(ct, ATTR_ORIG_IPV4_DST)),
                                   proto: proto, l4: origL4)
        var reply = KernelTuple(source: IPv4Address(networkOrder: nfct_get_attr_u32(ct, ATTR_REPL_IPV4_SRC)),
                                destination: IPv4Address(networkOrder: nfct_get_attr_u32(ct, ATTR_REPL_IPV4_DST)),
                                proto: proto, l4: replL4)
        if proto == 1 { reply.l4 = original.inverted.l4 }
        var tcp: TCPInfo?
        if proto == 6, has(ATTR_TCP_STATE) {
            func u8(_ a: nf_conntrack_attr) -> UInt8? { has(a) ? nfct_get_attr_u8(ct, a) : nil }
            tcp = TCPInfo(state: TCPConntrackState(rawValue: nfct_get_attr_u8(ct, ATTR_TCP_STATE)),
                          flagsOriginal: u8(ATTR_TCP_FLAGS_ORIG), flagsReply: u8(ATTR_TCP_FLAGS_REPL),
                          maskOriginal: u8(ATTR_TCP_MASK_ORIG), maskReply: u8(ATTR_TCP_MASK_REPL),
                          windowScaleOriginal: u8(ATTR_TCP_WSCALE_ORIG), windowScaleReply: u8(ATTR_TCP_WSCALE_REPL))
        }
        self.init(original: original, reply: reply, tcp: tcp,
                  status: ConntrackStatus(rawValue: has(ATTR_STATUS) ? nfct_get_attr_u32(ct, ATTR_STATUS) : 0),
                  mark: has(ATTR_MARK) ? nfct_get_attr_u32(ct, ATTR_MARK) : 0,
                  zone: has(ATTR_ZONE) ? nfct_get_attr_u16(ct, ATTR_ZONE) : 0,
                  timeout: has(ATTR_TIMEOUT) ? nfct_get_attr_u32(ct, ATTR_TIMEOUT) : nil,
                  id: has(ATTR_ID) ? nfct_get_attr_u32(ct, ATTR_ID) : 0)
    }

    /// Sets this entry's attributes on `ct` (both tuples, state, status, mark, zone, timeout, id
    /// when non-zero). What the sink will build its create/update requests from.
    public func write(to ct: OpaquePointer) {
        original.setOriginal(on: ct)
        reply.setReply(on: ct)
        tcp?.set(on: ct)
        nfct_set_attr_u32(ct, ATTR_STATUS, status.rawValue)
        nfct_set_attr_u32(ct, ATTR_MARK, mark)
        nfct_set_attr_u16(ct, ATTR_ZONE, zone)
        if let timeout { nfct_set_attr_u32(ct, ATTR_TIMEOUT, timeout) }
        if id != 0 { nfct_set_attr_u32(ct, ATTR_ID, id) }
    }
}

extension KernelTuple {
    /// Sets this tuple as the original direction on `ct` (network byte order there).
    func setOriginal(on ct: OpaquePointer) {
        nfct_set_attr_u8(ct, ATTR_ORIG_L3PROTO, UInt8(AF_INET))
        nfct_set_attr_u32(ct, ATTR_ORIG_IPV4_SRC, source.networkOrder)
        nfct_set_attr_u32(ct, ATTR_ORIG_IPV4_DST, destination.networkOrder)
        nfct_set_attr_u8(ct, ATTR_ORIG_L4PROTO, proto)
        switch l4 {
        case .ports(let s, let d):
            nfct_set_attr_u16(ct, ATTR_ORIG_PORT_SRC, s.bigEndian)
            nfct_set_attr_u16(ct, ATTR_ORIG_PORT_DST, d.bigEndian)
        case .icmp(let id, let type, let code):
            nfct_set_attr_u16(ct, ATTR_ICMP_ID, id.bigEndian)
            nfct_set_attr_u8(ct, ATTR_ICMP_TYPE, type)
            nfct_set_attr_u8(ct, ATTR_ICMP_CODE, code)
        case .none: break
        }
    }

    /// Sets this tuple as the reply direction on `ct`: addresses, protocol and, for a port tuple,
    /// the ports (libnetfilter_conntrack keeps ICMP's fields with the original).
    func setReply(on ct: OpaquePointer) {
        nfct_set_attr_u8(ct, ATTR_REPL_L3PROTO, UInt8(AF_INET))
        nfct_set_attr_u32(ct, ATTR_REPL_IPV4_SRC, source.networkOrder)
        nfct_set_attr_u32(ct, ATTR_REPL_IPV4_DST, destination.networkOrder)
        nfct_set_attr_u8(ct, ATTR_REPL_L4PROTO, proto)
        if case .ports(let s, let d) = l4 {
            nfct_set_attr_u16(ct, ATTR_REPL_PORT_SRC, s.bigEndian)
            nfct_set_attr_u16(ct, ATTR_REPL_PORT_DST, d.bigEndian)
        }
    }
}

extension TCPInfo {
    /// Sets the TCP state and whichever flags, masks and window scales are known on `ct`.
    func set(on ct: OpaquePointer) {
        nfct_set_attr_u8(ct, ATTR_TCP_STATE, state.rawValue)
        if let v = flagsOriginal { nfct_set_attr_u8(ct, ATTR_TCP_FLAGS_ORIG, v) }
        if let v = flagsReply { nfct_set_attr_u8(ct, ATTR_TCP_FLAGS_REPL, v) }
        if let v = maskOriginal { nfct_set_attr_u8(ct, ATTR_TCP_MASK_ORIG, v) }
        if let v = maskReply { nfct_set_attr_u8(ct, ATTR_TCP_MASK_REPL, v) }
        if let v = windowScaleOriginal { nfct_set_attr_u8(ct, ATTR_TCP_WSCALE_ORIG, v) }
        if let v = windowScaleReply { nfct_set_attr_u8(ct, ATTR_TCP_WSCALE_REPL, v) }
    }
}

/// One ctnetlink message of a datagram, located and classified (pure; see `NetlinkWalk`).
struct NetlinkMessage: Hashable, Sendable {
    var offset: Int
    var length: Int
    var type: UInt16
    var flags: UInt16
    /// The netlink port the change came from: 0 for the kernel's own (traffic, timeouts), a
    /// socket's port id for a change that socket requested (the sink's injections).
    var portID: UInt32 = 0
}

/// Splitting a netlink datagram into messages, checking every length: pure, so malformed
/// input is unit-tested.
enum NetlinkWalk {
    static let headerSize = 16
    static let nfgenSize = 4
    static let done: UInt16 = 3
    static let error: UInt16 = 2
    static let overrun: UInt16 = 4
    static let ctnetlinkSubsystem: UInt16 = 1
    static let ctNew: UInt16 = 0
    static let ctDelete: UInt16 = 2
    static let flagCreate: UInt16 = 0x400
    static let flagExcl: UInt16 = 0x200

    /// The messages, and whether the datagram ended in garbage (a length that does not fit).
    static func split(_ buf: UnsafeRawBufferPointer) -> (messages: [NetlinkMessage], malformed: Bool) {
        var out: [NetlinkMessage] = []
        var off = 0
        while buf.count - off >= headerSize {
            let len = Int(buf.loadUnaligned(fromByteOffset: off, as: UInt32.self))
            guard len >= headerSize, len <= buf.count - off else { return (out, true) }
            let type = buf.loadUnaligned(fromByteOffset: off + 4, as: UInt16.self)
            let flags = buf.loadUnaligned(fromByteOffset: off + 6, as: UInt16.self)
            let port = buf.loadUnaligned(fromByteOffset: off + 12, as: UInt32.self)
            out.append(NetlinkMessage(offset: off, length: len, type: type, flags: flags, portID: port))
            off += (len + 3) & ~3
        }
        return (out, off < buf.count)   // 1-15 stray bytes
    }

    enum Kind: Equatable {
        case event(ConntrackEventKind)
        case done
        /// NLMSG_ERROR with this errno (0 is an ack).
        case error(Int32)
        /// Not a ctnetlink conntrack message, or not IPv4.
        case other
        case malformed
    }

    static func classify(_ m: NetlinkMessage, in buf: UnsafeRawBufferPointer) -> Kind {
        switch m.type {
        case done: return .done
        case error:
            guard m.length >= headerSize + 4 else { return .malformed }
            return .error(-buf.loadUnaligned(fromByteOffset: m.offset + headerSize, as: Int32.self))
        case overrun: return .other
        default: break
        }
        guard m.type >> 8 == ctnetlinkSubsystem else { return .other }
        guard m.length >= headerSize + nfgenSize else { return .malformed }
        guard buf[m.offset + headerSize] == UInt8(2) else { return .other }   // nfgen_family AF_INET
        switch m.type & 0xff {
        case ctNew: return .event(m.flags & (flagCreate | flagExcl) != 0 ? .new : .update)
        case ctDelete: return .event(.destroy)
        default: return .other
        }
    }
}
