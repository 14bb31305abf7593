import TandemCore

// MARK: - Membership and election (gossip channel)

/// A member's liveness as SWIM disseminates it. A higher incarnation always wins; at equal
/// incarnation left > dead > restarting > suspect > alive (left is final, like dead, but announced
/// by the node itself; restarting too is announced by the node itself: its daemon is restarting
/// and its datapath keeps forwarding, so peers hold it for a bounded time instead of electing).
public enum MemberStatus: UInt8, Sendable, CaseIterable, Hashable {
    case alive = 1
    case suspect = 2
    case dead = 3
    case left = 4
    case restarting = 5
}

/// One membership fact, piggybacked on probes and acks.
public struct MemberUpdate: Hashable, Sendable {
    public var node: UInt32
    public var incarnation: UInt32
    public var status: MemberStatus
    public init(node: UInt32, incarnation: UInt32, status: MemberStatus) {
        self.node = node
        self.incarnation = incarnation
        self.status = status
    }
}

/// A node's role in one HA instance.
public enum HARole: UInt8, Sendable, CaseIterable, Hashable {
    case backup = 1
    case master = 2
    case fault = 3
}

/// What the sender says about itself in one HA instance: carried in every gossip message, so a
/// higher term fences an old master as soon as any message reaches it.
public struct InstanceAdvert: Hashable, Sendable {
    public struct Flags: OptionSet, Sendable, Hashable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// The sender's connection table is in sync (replication), so it may become master.
        public static let inSync = Flags(rawValue: 0x01)
        /// The role was set from outside (cistate API), not by the election.
        public static let external = Flags(rawValue: 0x02)
        /// The sender is MASTER or was within the last recentMasterNanos (30 s): a MASTER that
        /// hears from a peer it held as dead reasserts the floating IPs only then (the peer may
        /// have moved them while apart); a peer that merely returned costs no cloud call.
        public static let recentMaster = Flags(rawValue: 0x04)
        public static let known: Flags = [.inSync, .external, .recentMaster]
    }
    /// FNV-1a 32 of the instance name (SyncHashing.instanceID).
    public var instance: UInt32
    /// Fencing epoch: raised by every node that becomes master.
    public var term: UInt64
    public var role: HARole
    public var priority: UInt8
    public var flags: Flags
    public init(instance: UInt32, term: UInt64, role: HARole, priority: UInt8, flags: Flags) {
        self.instance = instance
        self.term = term
        self.role = role
        self.priority = priority
        self.flags = flags
    }
}

/// What every gossip message carries besides its probe fields: membership updates (the sender's
/// own alive update first) and the sender's adverts, one per HA instance.
public struct Gossip: Hashable, Sendable {
    public var updates: [MemberUpdate]
    public var adverts: [InstanceAdvert]
    public init(updates: [MemberUpdate] = [], adverts: [InstanceAdvert] = []) {
        self.updates = updates
        self.adverts = adverts
    }
}

/// SWIM ping. `requester` is 0 for a direct probe, or the node that asked for this indirect
/// probe (then `probeID` is the requester's id and the ack goes back through the sender).
public struct Probe: Hashable, Sendable {
    public var probeID: UInt32
    public var target: UInt32
    public var requester: UInt32
    public var gossip: Gossip
    public init(probeID: UInt32, target: UInt32, requester: UInt32, gossip: Gossip) {
        self.probeID = probeID
        self.target = target
        self.requester = requester
        self.gossip = gossip
    }
}

/// SWIM ping-req: asks the receiver to probe `target` on the sender's behalf.
public struct ProbeRequest: Hashable, Sendable {
    public var probeID: UInt32
    public var target: UInt32
    public var gossip: Gossip
    public init(probeID: UInt32, target: UInt32, gossip: Gossip) {
        self.probeID = probeID
        self.target = target
        self.gossip = gossip
    }
}

/// SWIM ack: `target` answered probe `probeID` of `requester` (0: the ack's receiver probed
/// directly). The same fields as a probe, so the same type.
public typealias ProbeAck = Probe

// MARK: - Codec

extension SyncCodec {
    /// Gossip section: update count u8, advert count u8.
    static let gossipFixed = 2
    /// Member update: node u32, incarnation u32, status u8.
    public static let memberUpdateSize = 9
    /// Instance advert: instance u32, term u64, role u8, priority u8, flags u8, reserved u8.
    public static let advertSize = 16
    /// Most member updates in one gossip section (the sender's own plus piggybacked ones).
    public static let maxGossipUpdates = 32
    /// Most instance adverts in one gossip section (one per HA instance).
    public static let maxGossipAdverts = 16
}

extension Gossip {
    var wireSize: Int {
        SyncCodec.gossipFixed + updates.count * SyncCodec.memberUpdateSize + adverts.count * SyncCodec.advertSize
    }

    func encode(into w: inout ByteWriter) {
        precondition(updates.count <= SyncCodec.maxGossipUpdates && adverts.count <= SyncCodec.maxGossipAdverts,
                     "gossip with \(updates.count) updates and \(adverts.count) adverts")
        w.u8(UInt8(updates.count))
        w.u8(UInt8(adverts.count))
        for u in updates {
            w.u32(u.node)
            w.u32(u.incarnation)
            w.u8(u.status.rawValue)
        }
        for a in adverts {
            w.u32(a.instance)
            w.u64(a.term)
            w.u8(a.role.rawValue)
            w.u8(a.priority)
            w.u8(a.flags.rawValue)
            w.u8(0)  // reserved
        }
    }

    static func decode(from r: inout ByteReader) throws(SyncDecodeError) -> Gossip {
        let updateCount = Int(try r.u8("updateCount"))
        let advertCount = Int(try r.u8("advertCount"))
        guard updateCount <= SyncCodec.maxGossipUpdates else {
            throw r.fail("updateCount \(updateCount) exceeds \(SyncCodec.maxGossipUpdates)")
        }
        guard advertCount <= SyncCodec.maxGossipAdverts else {
            throw r.fail("advertCount \(advertCount) exceeds \(SyncCodec.maxGossipAdverts)")
        }
        try r.expectItems(updateCount * SyncCodec.memberUpdateSize + advertCount * SyncCodec.advertSize, size: 1,
                          "counts")
        var g = Gossip()
        g.updates.reserveCapacity(updateCount)
        g.adverts.reserveCapacity(advertCount)
        for _ in 0..<updateCount {
            let node = try nodeID(&r, "update node")
            let incarnation = try r.u32("incarnation")
            let raw = try r.u8("status")
            guard let status = MemberStatus(rawValue: raw) else { throw r.fail("unknown member status \(raw)") }
            g.updates.append(MemberUpdate(node: node, incarnation: incarnation, status: status))
        }
        for _ in 0..<advertCount {
            let instance = try r.u32("instance")
            let term = try r.u64("term")
            let rawRole = try r.u8("role")
            guard let role = HARole(rawValue: rawRole) else { throw r.fail("unknown role \(rawRole)") }
            let priority = try r.u8("priority")
            let flags = InstanceAdvert.Flags(rawValue: try r.u8("flags"))
            guard InstanceAdvert.Flags.known.isSuperset(of: flags) else {
                throw r.fail("undefined advert flag bits 0x\(hex(flags.subtracting(.known).rawValue))")
            }
            let reserved = try r.u8("reserved")
            guard reserved == 0 else { throw r.fail("advert reserved is 0x\(hex(reserved)), must be 0") }
            g.adverts.append(InstanceAdvert(instance: instance, term: term, role: role, priority: priority, flags: flags))
        }
        return g
    }
}

/// Probes and probe acks share one layout.
extension Probe: WirePayload {
    var wireSize: Int { 12 + gossip.wireSize }

    func encode(into w: inout ByteWriter) {
        w.u32(probeID)
        w.u32(target)
        w.u32(requester)
        gossip.encode(into: &w)
    }

    static func decode(from r: inout ByteReader) throws(SyncDecodeError) -> Probe {
        let id = try r.u32("probeID")
        let target = try nodeID(&r, "target")
        let requester = try r.u32("requester")
        return Probe(probeID: id, target: target, requester: requester, gossip: try Gossip.decode(from: &r))
    }
}

extension ProbeRequest: WirePayload {
    var wireSize: Int { 8 + gossip.wireSize }

    func encode(into w: inout ByteWriter) {
        w.u32(probeID)
        w.u32(target)
        gossip.encode(into: &w)
    }

    static func decode(from r: inout ByteReader) throws(SyncDecodeError) -> ProbeRequest {
        let id = try r.u32("probeID")
        let target = try nodeID(&r, "target")
        return ProbeRequest(probeID: id, target: target, gossip: try Gossip.decode(from: &r))
    }
}
