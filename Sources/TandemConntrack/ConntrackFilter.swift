import TandemCore

/// Which kernel conntrack entries the source passes on. Pure; built from the config's text form
/// (`ConntrackFilter.Config`) with validation, or directly.
///
/// An entry passes when every configured criterion holds:
/// - `protocols`: its L4 protocol is listed (nil: any);
/// - `exclude`: neither its original source nor its original destination is in an excluded
///   prefix (exclusions win over inclusions: for example the node's own management traffic);
/// - `include`: when not empty, its original source or original destination is in a prefix;
/// - `zones`: its zone is listed (nil: any);
/// - `marks`: when not empty, `mark & mask == value` for at least one;
/// - `nat`: the NAT selection holds for the NAT derived from its tuples.
public struct ConntrackFilter: Hashable, Sendable {
    public var protocols: Set<UInt8>?
    public var include: [IPv4Prefix]
    public var exclude: [IPv4Prefix]
    public var zones: Set<UInt16>?
    public var marks: [MarkMatch]
    public var nat: NATSelection

    public struct MarkMatch: Hashable, Sendable, CustomStringConvertible {
        public var value: UInt32
        public var mask: UInt32
        public init(value: UInt32, mask: UInt32 = .max) {
            self.value = value
            self.mask = mask
        }
        public func matches(_ mark: UInt32) -> Bool { mark & mask == value }
        public var description: String { "0x\(String(value, radix: 16))/0x\(String(mask, radix: 16))" }
    }

    public enum NATSelection: String, Hashable, Sendable, CaseIterable {
        /// Every entry, translated or not.
        case all
        /// Entries with SNAT or DNAT (or both).
        case nat
        /// Entries with SNAT (with or without DNAT).
        case snat
        /// Entries with DNAT (with or without SNAT).
        case dnat
        /// Entries without any translation.
        case none

        func matches(_ v: NATView) -> Bool {
            switch self {
            case .all: true
            case .nat: v.isNATed
            case .snat: v.snat != nil
            case .dnat: v.dnat != nil
            case .none: !v.isNATed
            }
        }
    }

    /// Passes everything.
    public static let all = ConntrackFilter()

    public init(protocols: Set<UInt8>? = nil, include: [IPv4Prefix] = [], exclude: [IPv4Prefix] = [],
                zones: Set<UInt16>? = nil, marks: [MarkMatch] = [], nat: NATSelection = .all) {
        self.protocols = protocols
        self.include = include
        self.exclude = exclude
        self.zones = zones
        self.marks = marks
        self.nat = nat
    }

    /// This filter, also excluding what is each node's own: loopback (127.0.0.0/8) and the
    /// cluster's node addresses. Such entries never cross a gateway, and a copy on a peer collides
    /// with that peer's own entries: for the traffic between two nodes (their sync and gossip)
    /// the peer tracks the same connection from its side, so the copy's tuples are already taken.
    /// NATed flows masqueraded to a node address still pass: only original directions are tested.
    public func excludingNodeTraffic(_ nodeAddresses: [IPv4Address]) -> ConntrackFilter {
        var f = self
        let own = [IPv4Prefix(address: IPv4Address(127, 0, 0, 0), length: 8)]
            + nodeAddresses.map { IPv4Prefix(address: $0, length: 32) }
        for p in own where !f.exclude.contains(p) { f.exclude.append(p) }
        return f
    }

    public func matches(_ c: KernelConnection) -> Bool {
        if let protocols, !protocols.contains(c.proto) { return false }
        if let zones, !zones.contains(c.zone) { return false }
        let src = c.original.source, dst = c.original.destination
        if exclude.contains(where: { $0.contains(src) || $0.contains(dst) }) { return false }
        if !include.isEmpty, !include.contains(where: { $0.contains(src) || $0.contains(dst) }) { return false }
        if !marks.isEmpty, !marks.contains(where: { $0.matches(c.mark) }) { return false }
        return nat == .all || nat.matches(c.nat)
    }

    /// The config file's form: every field optional, text as a user writes it.
    /// `protocols: [tcp, udp, icmp, 132]`, `include: [10.0.0.0/8]`, `exclude: [10.0.10.141/32]`,
    /// `zones: [0, 7]`, `marks: ["0x10/0xff", "7"]`, `nat: all | nat | snat | dnat | none`.
    public struct Config: Hashable, Sendable, Codable {
        public var protocols: [String]?
        public var include: [String]?
        public var exclude: [String]?
        public var zones: [Int]?
        public var marks: [String]?
        public var nat: String?

        public init(protocols: [String]? = nil, include: [String]? = nil, exclude: [String]? = nil,
                    zones: [Int]? = nil, marks: [String]? = nil, nat: String? = nil) {
            self.protocols = protocols
            self.include = include
            self.exclude = exclude
            self.zones = zones
            self.marks = marks
            self.nat = nat
        }
    }

    public init(config: Config) throws(ConntrackFilterError) {
        self.init()
        if let names = config.protocols {
            guard !names.isEmpty else { throw .emptyList("protocols") }
            var set = Set<UInt8>()
            for n in names {
                guard let p = ConntrackFilter.protocolNumber(n) else { throw .unknownProtocol(n) }
                set.insert(p)
            }
            protocols = set
        }
        include = try ConntrackFilter.prefixes(config.include, field: "include")
        exclude = try ConntrackFilter.prefixes(config.exclude, field: "exclude")
        if let zs = config.zones {
            guard !zs.isEmpty else { throw .emptyList("zones") }
            var set = Set<UInt16>()
            for z in zs {
                guard let v = UInt16(exactly: z) else { throw .zoneOutOfRange(z) }
                set.insert(v)
            }
            zones = set
        }
        if let ms = config.marks {
            guard !ms.isEmpty else { throw .emptyList("marks") }
            marks = try ms.map { m throws(ConntrackFilterError) in try ConntrackFilter.mark(m) }
        }
        if let n = config.nat {
            guard let sel = NATSelection(rawValue: n.lowercased()) else { throw .unknownNATSelection(n) }
            nat = sel
        }
    }

    static func protocolNumber(_ text: String) -> UInt8? {
        switch text.lowercased() {
        case "icmp": 1
        case "tcp": 6
        case "udp": 17
        case "dccp": 33
        case "gre": 47
        case "sctp": 132
        case "udplite": 136
        default: UInt8(text)
        }
    }

    static func prefixes(_ texts: [String]?, field: String) throws(ConntrackFilterError) -> [IPv4Prefix] {
        guard let texts else { return [] }
        guard !texts.isEmpty else { throw .emptyList(field) }
        return try texts.map { t throws(ConntrackFilterError) in
            guard let p = IPv4Prefix(t) else { throw .badPrefix(field: field, t) }
            guard p.address.value & ~p.mask == 0 else { throw .hostBitsSet(field: field, t) }
            return p
        }
    }

    /// `value` or `value/mask`, decimal or 0x-hex, 32 bits; the value may not have bits outside
    /// the mask (it could never match).
    static func mark(_ text: String) throws(ConntrackFilterError) -> MarkMatch {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let v = number(parts[0]) else { throw .badMark(text) }
        let m = parts.count == 2 ? number(parts[1]) : UInt32.max
        guard let m else { throw .badMark(text) }
        guard m != 0 else { throw .zeroMarkMask(text) }
        guard v & ~m == 0 else { throw .markOutsideMask(text) }
        return MarkMatch(value: v, mask: m)
    }

    static func number(_ s: Substring) -> UInt32? {
        let t = s.trimmingSpaces
        if t.hasPrefix("0x") || t.hasPrefix("0X") { return UInt32(t.dropFirst(2), radix: 16) }
        return UInt32(t)
    }
}

extension Substring {
    fileprivate var trimmingSpaces: Substring {
        var s = self
        while s.first == " " { s.removeFirst() }
        while s.last == " " { s.removeLast() }
        return s
    }
}

public enum ConntrackFilterError: Error, Equatable, CustomStringConvertible {
    case emptyList(String)
    case unknownProtocol(String)
    case badPrefix(field: String, String)
    case hostBitsSet(field: String, String)
    case zoneOutOfRange(Int)
    case badMark(String)
    case zeroMarkMask(String)
    case markOutsideMask(String)
    case unknownNATSelection(String)

    public var description: String {
        switch self {
        case .emptyList(let f): "conntrack filter: '\(f)' is an empty list, which would match nothing; leave it out to match everything"
        case .unknownProtocol(let p): "conntrack filter: unknown protocol '\(p)' (tcp, udp, icmp, sctp, dccp, gre, udplite or a number 0-255)"
        case .badPrefix(let f, let t): "conntrack filter: '\(t)' in '\(f)' is not an IPv4 address or prefix (a.b.c.d or a.b.c.d/len)"
        case .hostBitsSet(let f, let t): "conntrack filter: '\(t)' in '\(f)' has bits set past its prefix length (did you mean the network address?)"
        case .zoneOutOfRange(let z): "conntrack filter: zone \(z) is out of range (0-65535)"
        case .badMark(let m): "conntrack filter: mark '\(m)' is not value or value/mask (decimal or 0x hex, 32 bits)"
        case .zeroMarkMask(let m): "conntrack filter: mark '\(m)' has a zero mask, which matches every entry; leave 'marks' out instead"
        case .markOutsideMask(let m): "conntrack filter: mark '\(m)' has value bits outside its mask, so it can never match"
        case .unknownNATSelection(let n): "conntrack filter: nat '\(n)' is not one of all, nat, snat, dnat, none"
        }
    }
}
