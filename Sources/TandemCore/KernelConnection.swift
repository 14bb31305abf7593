/// One kernel conntrack entry (IPv4), as ctnetlink reports it in an event or a dump: both tuples,
/// the L4 protocol state, status bits, mark, zone, remaining timeout and the kernel's id. A plain
/// value (no libnetfilter_conntrack types), in the core so that the sync protocol's wire format
/// (TandemSyncWire) and the conntrack source and sink (TandemConntrack, whose
/// NFConntrackMapping.swift converts from and to `nf_conntrack` attributes) share one definition.
public struct KernelConnection: Hashable, Sendable, CustomStringConvertible {
    /// Original (initiator to responder) direction.
    public var original: KernelTuple
    /// Reply direction: the original tuple inverted, then rewritten by NAT.
    public var reply: KernelTuple
    /// TCP state and window-tracking data; nil for other protocols or when the message had none.
    public var tcp: TCPInfo?
    /// IPS_* bits (`ConntrackStatus`).
    public var status: ConntrackStatus
    public var mark: UInt32
    public var zone: UInt16
    /// Remaining lifetime in seconds; nil when the message carried none (destroy events).
    public var timeout: UInt32?
    /// The kernel's entry id (CTA_ID); 0 when absent. Not part of the identity: `key` is.
    public var id: UInt32

    public init(original: KernelTuple, reply: KernelTuple, tcp: TCPInfo? = nil, status: ConntrackStatus = [],
                mark: UInt32 = 0, zone: UInt16 = 0, timeout: UInt32? = nil, id: UInt32 = 0) {
        self.original = original
        self.reply = reply
        self.tcp = tcp
        self.status = status
        self.mark = mark
        self.zone = zone
        self.timeout = timeout
        self.id = id
    }

    /// What identifies an entry in the kernel table: the original tuple within its zone.
    public struct Key: Hashable, Sendable, CustomStringConvertible {
        public var original: KernelTuple
        public var zone: UInt16
        public init(original: KernelTuple, zone: UInt16) {
            self.original = original
            self.zone = zone
        }
        public var description: String { zone == 0 ? "\(original)" : "\(original) zone \(zone)" }
    }

    public var key: Key { Key(original: original, zone: zone) }
    public var proto: UInt8 { original.proto }

    /// The NAT the kernel applies, derived from where the reply tuple differs from the inverted
    /// original (not from the status bits, which say only that NAT was set up).
    public var nat: NATView {
        var view = NATView()
        let expected = original.inverted
        if reply.source != expected.source || reply.sourceID != expected.sourceID {
            view.dnat = NATView.Target(address: reply.source, port: reply.sourceID)
        }
        if reply.destination != expected.destination || reply.destinationID != expected.destinationID {
            view.snat = NATView.Target(address: reply.destination, port: reply.destinationID)
        }
        return view
    }

    /// Equal in everything but the remaining timeout and the id: a dump that finds only these
    /// changed has nothing to correct.
    public func sameState(as other: KernelConnection) -> Bool {
        var a = self, b = other
        a.timeout = nil
        b.timeout = nil
        a.id = 0
        b.id = 0
        return a == b
    }

    public var description: String {
        var s = "\(original) reply \(reply)"
        if let tcp { s += " \(tcp.state)" }
        let n = nat
        if let d = n.dnat { s += " dnat \(d)" }
        if let sn = n.snat { s += " snat \(sn)" }
        if mark != 0 { s += " mark 0x\(String(mark, radix: 16))" }
        if zone != 0 { s += " zone \(zone)" }
        if let timeout { s += " timeout \(timeout)" }
        return s
    }
}

/// One direction of a conntrack entry. For TCP, UDP, SCTP, DCCP and UDP-Lite the L4 fields are
/// the ports; for ICMP the id (source side) and type/code (destination side), as the kernel
/// stores them; for other protocols both are 0.
public struct KernelTuple: Hashable, Sendable, CustomStringConvertible {
    public var source: IPv4Address
    public var destination: IPv4Address
    public var proto: UInt8
    public var l4: L4

    public enum L4: Hashable, Sendable {
        case ports(source: UInt16, destination: UInt16)
        case icmp(id: UInt16, type: UInt8, code: UInt8)
        case none
    }

    public init(source: IPv4Address, destination: IPv4Address, proto: UInt8, l4: L4) {
        self.source = source
        self.destination = destination
        self.proto = proto
        self.l4 = l4
    }

    /// TCP or UDP (or any port-carrying protocol) tuple.
    public static func ports(_ proto: UInt8, _ source: IPv4Address, _ sport: UInt16,
                             _ destination: IPv4Address, _ dport: UInt16) -> KernelTuple {
        KernelTuple(source: source, destination: destination, proto: proto, l4: .ports(source: sport, destination: dport))
    }

    /// The port or ICMP id on the source side (0 when none): what SNAT may rewrite.
    public var sourceID: UInt16 {
        switch l4 {
        case .ports(let s, _): s
        case .icmp(let id, _, _): id
        case .none: 0
        }
    }

    /// The port on the destination side (0 for ICMP and portless protocols): what DNAT may rewrite.
    public var destinationID: UInt16 {
        if case .ports(_, let d) = l4 { return d }
        return 0
    }

    /// The tuple a packet of the other direction carries when nothing is translated. For ICMP
    /// echo, the type becomes the reply's (8 echo request <-> 0 echo reply, and the timestamp,
    /// information and address-mask pairs); other ICMP types keep theirs.
    public var inverted: KernelTuple {
        switch l4 {
        case .ports(let s, let d):
            return KernelTuple(source: destination, destination: source, proto: proto, l4: .ports(source: d, destination: s))
        case .icmp(let id, let type, let code):
            return KernelTuple(source: destination, destination: source, proto: proto,
                               l4: .icmp(id: id, type: KernelTuple.icmpReplyType(type), code: code))
        case .none:
            return KernelTuple(source: destination, destination: source, proto: proto, l4: .none)
        }
    }

    static func icmpReplyType(_ t: UInt8) -> UInt8 {
        switch t {
        case 8: 0
        case 0: 8
        case 13: 14
        case 14: 13
        case 15: 16
        case 16: 15
        case 17: 18
        case 18: 17
        default: t
        }
    }

    public var description: String {
        let p = KernelTuple.protoName(proto)
        switch l4 {
        case .ports(let s, let d): return "\(p) \(source):\(s) -> \(destination):\(d)"
        case .icmp(let id, let type, let code): return "\(p) \(source) -> \(destination) id \(id) type \(type) code \(code)"
        case .none: return "\(p) \(source) -> \(destination)"
        }
    }

    public static func protoName(_ p: UInt8) -> String {
        switch p {
        case 1: "icmp"
        case 6: "tcp"
        case 17: "udp"
        case 33: "dccp"
        case 47: "gre"
        case 132: "sctp"
        case 136: "udplite"
        default: "proto \(p)"
        }
    }
}

/// The translation derived from a connection's tuples.
public struct NATView: Hashable, Sendable {
    public struct Target: Hashable, Sendable, CustomStringConvertible {
        public var address: IPv4Address
        /// Port (ICMP id for SNAT of ICMP); 0 for portless protocols.
        public var port: UInt16
        public init(address: IPv4Address, port: UInt16) {
            self.address = address
            self.port = port
        }
        public var description: String { "\(address):\(port)" }
    }

    /// Where the original destination is translated to (the reply comes from here).
    public var dnat: Target?
    /// What the original source is translated to (the reply goes back to here).
    public var snat: Target?

    public init(dnat: Target? = nil, snat: Target? = nil) {
        self.dnat = dnat
        self.snat = snat
    }

    public var isNATed: Bool { dnat != nil || snat != nil }
}

/// TCP protocol info from CTA_PROTOINFO_TCP. `flags`/`mask` are the IP_CT_TCP_FLAG_* bits per
/// direction (window scale seen, SACK permitted, close initiated, be liberal, ...): `mask` is
/// what a request sets, a kernel message reports flags only.
public struct TCPInfo: Hashable, Sendable {
    public var state: TCPConntrackState
    public var flagsOriginal: UInt8?
    public var flagsReply: UInt8?
    public var maskOriginal: UInt8?
    public var maskReply: UInt8?
    public var windowScaleOriginal: UInt8?
    public var windowScaleReply: UInt8?

    public init(state: TCPConntrackState, flagsOriginal: UInt8? = nil, flagsReply: UInt8? = nil,
                maskOriginal: UInt8? = nil, maskReply: UInt8? = nil,
                windowScaleOriginal: UInt8? = nil, windowScaleReply: UInt8? = nil) {
        self.state = state
        self.flagsOriginal = flagsOriginal
        self.flagsReply = flagsReply
        self.maskOriginal = maskOriginal
        self.maskReply = maskReply
        self.windowScaleOriginal = windowScaleOriginal
        self.windowScaleReply = windowScaleReply
    }

    /// IP_CT_TCP_FLAG_* (linux/netfilter/nf_conntrack_tcp.h).
    public static let flagWindowScale: UInt8 = 0x01
    public static let flagSACKPermitted: UInt8 = 0x02
    public static let flagCloseInit: UInt8 = 0x04
    public static let flagBeLiberal: UInt8 = 0x08
    public static let flagDataUnacknowledged: UInt8 = 0x10
    public static let flagMaxACKSet: UInt8 = 0x20
}

/// The kernel's TCP conntrack states (enum tcp_conntrack); unknown numbers are kept as they are.
public struct TCPConntrackState: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let none = Self(rawValue: 0)
    public static let synSent = Self(rawValue: 1)
    public static let synRecv = Self(rawValue: 2)
    public static let established = Self(rawValue: 3)
    public static let finWait = Self(rawValue: 4)
    public static let closeWait = Self(rawValue: 5)
    public static let lastAck = Self(rawValue: 6)
    public static let timeWait = Self(rawValue: 7)
    public static let close = Self(rawValue: 8)
    public static let synSent2 = Self(rawValue: 9)

    public var description: String {
        switch rawValue {
        case 0: "NONE"
        case 1: "SYN_SENT"
        case 2: "SYN_RECV"
        case 3: "ESTABLISHED"
        case 4: "FIN_WAIT"
        case 5: "CLOSE_WAIT"
        case 6: "LAST_ACK"
        case 7: "TIME_WAIT"
        case 8: "CLOSE"
        case 9: "SYN_SENT2"
        default: "state \(rawValue)"
        }
    }
}

/// Conntrack status bits (enum ip_conntrack_status, linux/netfilter/nf_conntrack_common.h).
public struct ConntrackStatus: OptionSet, Hashable, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let expected = Self(rawValue: 1 << 0)
    public static let seenReply = Self(rawValue: 1 << 1)
    public static let assured = Self(rawValue: 1 << 2)
    public static let confirmed = Self(rawValue: 1 << 3)
    public static let srcNAT = Self(rawValue: 1 << 4)
    public static let dstNAT = Self(rawValue: 1 << 5)
    public static let seqAdjust = Self(rawValue: 1 << 6)
    public static let srcNATDone = Self(rawValue: 1 << 7)
    public static let dstNATDone = Self(rawValue: 1 << 8)
    public static let dying = Self(rawValue: 1 << 9)
    public static let fixedTimeout = Self(rawValue: 1 << 10)
    public static let template = Self(rawValue: 1 << 11)
    public static let natClash = Self(rawValue: 1 << 12)
    public static let helper = Self(rawValue: 1 << 13)
    public static let offload = Self(rawValue: 1 << 14)
    public static let hwOffload = Self(rawValue: 1 << 15)
}

/// What a ctnetlink event says happened to an entry.
public enum ConntrackEventKind: String, Hashable, Sendable, CaseIterable {
    case new
    case update
    case destroy
}
