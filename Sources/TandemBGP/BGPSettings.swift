import TandemCore

/// How the nodes of a cluster share a service VIP over BGP.
public enum BGPMode: String, Sendable, CaseIterable, Codable {
    /// Every node announces every VIP with the same attributes; the routers spread flows over
    /// them by ECMP. No election (`cluster.election: false`).
    case activeActive = "active-active"
    /// Every node announces; the MASTER of the VIP's HA instance with the primary attributes, the
    /// others with the backup ones, so routers send everything to the MASTER (LoxiLB's
    /// LocalPref 5000/100, MED 10/20). `cluster.cloud: bgp`.
    case masterBackup = "master-backup"
}

/// A BGP community: two 16-bit halves (RFC 1997) or, with three parts, a large community of three
/// 32-bit numbers (RFC 8092).
public enum BGPCommunity: Hashable, Sendable, CustomStringConvertible {
    case standard(UInt16, UInt16)
    case large(UInt32, UInt32, UInt32)

    /// `65000:100` or `65000:1:2`; nil when it is neither.
    public init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        switch parts.count {
        case 2:
            guard let a = UInt16(parts[0]), let b = UInt16(parts[1]) else { return nil }
            self = .standard(a, b)
        case 3:
            guard let a = UInt32(parts[0]), let b = UInt32(parts[1]), let c = UInt32(parts[2]) else { return nil }
            self = .large(a, b, c)
        default:
            return nil
        }
    }

    public var description: String {
        switch self {
        case .standard(let a, let b): "\(a):\(b)"
        case .large(let a, let b, let c): "\(a):\(b):\(c)"
        }
    }
}

/// The path attributes one announcement carries. LocalPref reaches iBGP neighbours only; eBGP
/// routers compare MED (between paths from one neighbouring AS) and AS-path length.
public struct BGPAttributes: Hashable, Sendable {
    public var localPref: UInt32
    public var med: UInt32
    /// How many extra times the local ASN is put in front of the AS path.
    public var prepend: Int

    public init(localPref: UInt32, med: UInt32, prepend: Int = 0) {
        self.localPref = localPref
        self.med = med
        self.prepend = prepend
    }

    /// LoxiLB's MASTER attributes.
    public static let primary = BGPAttributes(localPref: 5000, med: 10)
    /// LoxiLB's BACKUP attributes.
    public static let backup = BGPAttributes(localPref: 100, med: 20)
}

public struct BGPNeighbor: Hashable, Sendable {
    public var address: IPv4Address
    public var asn: UInt32
    public var port: UInt16
    /// TCP MD5 signature key (RFC 2385), as BIRD's `password`.
    public var password: String?
    /// nil: a directly connected neighbour; n: reachable in at most n hops.
    public var multihop: Int?

    public init(address: IPv4Address, asn: UInt32, port: UInt16 = 179, password: String? = nil, multihop: Int? = nil) {
        self.address = address
        self.asn = asn
        self.port = port
        self.password = password
        self.multihop = multihop
    }
}

/// A node's BGP settings, validated (`NodeConfig.bgpSettings`).
public struct BGPSettings: Hashable, Sendable {
    public var asn: UInt32
    public var routerID: IPv4Address
    /// The address the sessions are made from (the node's address on the routers' network).
    public var sourceAddress: IPv4Address?
    public var mode: BGPMode
    public var neighbors: [BGPNeighbor]
    public var holdSeconds: Int
    public var bfd: Bool
    /// BFD's transmit and receive interval, ms; a session is down after `bfdMultiplier` missed.
    public var bfdIntervalMillis: Int
    public var bfdMultiplier: Int
    public var communities: [BGPCommunity]
    public var primary: BGPAttributes
    public var backup: BGPAttributes
    /// active-active: this node's own fullnat source address, announced with the primary
    /// attributes, so replies come back to the node that made the flow (not wherever the
    /// router's hash sends them, which may be a node its entry has not reached yet).
    public var snatAddress: IPv4Address?
    /// The other nodes' source addresses, announced with the backup attributes: when a node
    /// goes, replies to its address reach the nodes that hold its flows by replication.
    public var peerSNATAddresses: [IPv4Address] = []

    public init(asn: UInt32, routerID: IPv4Address, sourceAddress: IPv4Address? = nil, mode: BGPMode,
                neighbors: [BGPNeighbor], holdSeconds: Int = 9, bfd: Bool = false, bfdIntervalMillis: Int = 100,
                bfdMultiplier: Int = 3, communities: [BGPCommunity] = [], primary: BGPAttributes = .primary,
                backup: BGPAttributes = .backup) {
        self.asn = asn
        self.routerID = routerID
        self.sourceAddress = sourceAddress
        self.mode = mode
        self.neighbors = neighbors
        self.holdSeconds = holdSeconds
        self.bfd = bfd
        self.bfdIntervalMillis = bfdIntervalMillis
        self.bfdMultiplier = bfdMultiplier
        self.communities = communities
        self.primary = primary
        self.backup = backup
    }

    /// A neighbour password BIRD's config can carry as a string: printable ASCII without quotes
    /// or backslashes, 1-80 bytes (the TCP MD5 key limit).
    public static func isValidPassword(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.count <= 80
            && text.utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "\"") && $0 != UInt8(ascii: "\\") }
    }
}

/// One route the speaker announces: a VIP as a /32 with its attributes.
public struct BGPRoute: Hashable, Sendable, Comparable {
    public var vip: IPv4Address
    public var attributes: BGPAttributes

    public init(vip: IPv4Address, attributes: BGPAttributes) {
        self.vip = vip
        self.attributes = attributes
    }

    public static func < (l: Self, r: Self) -> Bool { l.vip < r.vip }
}
