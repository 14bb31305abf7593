import TandemCore

/// The sync protocol's messages as values. The byte layouts, limits and the receiver's handling of
/// every malformed case are specified in proto/SPEC.md; the codec is in Codec.swift.
public enum SyncWire {
    /// First two bytes of every message: "TS".
    public static let magic: UInt16 = 0x5453
    public static let version: UInt8 = 1
    public static let headerSize = 28
    /// Poly1305 tag appended to every sealed payload.
    public static let tagSize = 16
    /// Largest UDP datagram we send or accept: 1500-byte MTU minus IPv4 and UDP headers.
    public static let maxDatagram = 1472
    /// Largest sealed frame on the TCP (bulk) channel, header and tag included.
    public static let maxStreamFrame = 65_536
    /// Encoded size of one SyncEntry.
    public static let entrySize = 52
    /// Level-0 and level-1 digest fan-out (buckets per level).
    public static let digestFanout = 128
    /// Most nack ranges in one message.
    public static let maxNackRanges = 64
    /// Largest service spec (its JSON) in one service record.
    public static let maxServiceSpec = 32_768
    /// Fixed part of a service record: vip u32, port u16, proto u8, flags u8, version u64,
    /// origin u32, specLength u16.
    public static let serviceRecordFixed = 22
    /// Fixed part of an endpoint-verdicts part: generation u64, flags u8, part u8,
    /// serviceCount u16, hostCount u16.
    public static let endpointVerdictsFixed = 14
    /// Fixed part of one service's verdicts: vip u32, port u16, proto u8, count u8.
    public static let serviceVerdictFixed = 8
    /// One endpoint held down: address u32, port u16, reasons u8, reserved u8, since u64.
    public static let downEndpointSize = 16
    /// One host state: address u32, state u8, reserved u8, version u64, origin u32.
    public static let hostVerdictSize = 18
    /// Most parts one verdict set is split into (a whole set of 256 services with every
    /// endpoint down and 16384 host states takes 9).
    public static let maxVerdictParts = 16
}

public enum SyncMessageType: UInt8, Sendable, CaseIterable {
    case hello = 1
    case deltaBatch = 2
    case ack = 3
    case nack = 4
    case bulkRequest = 5
    case bulkBegin = 6
    case bulkChunk = 7
    case bulkEnd = 8
    case keepalive = 9
    case digest = 10
    case digestRequest = 11
    // Membership and election (gossip channel, proto/SPEC.md §12).
    case probe = 12
    case probeRequest = 13
    case probeAck = 14
    // Service table sharing (config channel, proto/SPEC.md §14).
    case serviceDigest = 15
    case serviceRecords = 16
    // Endpoint health verdicts (config channel, proto/SPEC.md §14.5).
    case endpointVerdicts = 17
}

/// Header flag bits.
public struct SyncHeaderFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// Sent on the TCP (bulk) channel: its own nonce space and replay rule.
    public static let stream = SyncHeaderFlags(rawValue: 0x01)
    /// Sealed for the gossip channel (membership and election); never together with `stream`.
    public static let gossip = SyncHeaderFlags(rawValue: 0x02)
    /// Sealed for the config channel (service table sharing); never with another channel flag.
    public static let config = SyncHeaderFlags(rawValue: 0x04)
    public static let known: SyncHeaderFlags = [.stream, .gossip, .config]
}

/// The clear-text header, authenticated as AEAD associated data.
public struct SyncHeader: Hashable, Sendable {
    public var type: SyncMessageType
    public var flags: SyncHeaderFlags
    /// The sender's node id (unique in the cluster).
    public var sender: UInt32
    /// The sender's boot epoch: grows on every restart (microseconds of wall-clock time at start).
    public var epoch: UInt64
    /// Per (sender, epoch, channel) message counter; the AEAD nonce, and the replay window's index.
    public var sequence: UInt64
    /// Bytes of sealed payload after the header, tag included.
    public var length: UInt16

    public init(type: SyncMessageType, flags: SyncHeaderFlags = [], sender: UInt32, epoch: UInt64, sequence: UInt64,
                length: UInt16) {
        self.type = type
        self.flags = flags
        self.sender = sender
        self.epoch = epoch
        self.sequence = sequence
        self.length = length
    }
}

/// One replicated change of one connection.
public struct SyncEntry: Hashable, Sendable {
    public enum Operation: UInt8, Sendable {
        case upsert = 1
        case delete = 2
    }
    public var operation: Operation
    /// For a delete only `record.key` is meaningful; the codec writes the other fields as sent.
    public var record: FlowRecord
    /// Orders updates of the same flow, newest wins: a hybrid logical clock in microseconds,
    /// max(wall clock, previous version + 1) at the node that made the change.
    public var version: UInt64
    /// Node id of the node that made this change (the flow's current owner).
    public var origin: UInt32

    public init(operation: Operation, record: FlowRecord, version: UInt64, origin: UInt32) {
        self.operation = operation
        self.record = record
        self.version = version
        self.origin = origin
    }
}

public struct Hello: Hashable, Sendable {
    /// TCP port the sender serves bulk transfers on.
    public var bulkPort: UInt16
    /// The sender holds the cluster's full table.
    public var inSync: Bool
    /// Next delta sequence the sender will use.
    public var nextSequence: UInt64
    public init(bulkPort: UInt16, inSync: Bool, nextSequence: UInt64) {
        self.bulkPort = bulkPort
        self.inSync = inSync
        self.nextSequence = nextSequence
    }
}

/// Consecutive deltas: entry i has delta sequence firstSequence + i.
public struct DeltaBatch: Hashable, Sendable {
    public var firstSequence: UInt64
    public var entries: [SyncEntry]
    public init(firstSequence: UInt64, entries: [SyncEntry]) {
        self.firstSequence = firstSequence
        self.entries = entries
    }
}

/// Receiver -> sender: every delta up to `cumulative` of the sender's stream `streamEpoch` arrived.
public struct Ack: Hashable, Sendable {
    public var streamEpoch: UInt64
    public var cumulative: UInt64
    public init(streamEpoch: UInt64, cumulative: UInt64) {
        self.streamEpoch = streamEpoch
        self.cumulative = cumulative
    }
}

/// Receiver -> sender: an ack plus the ranges still missing above it (inclusive bounds).
public struct Nack: Hashable, Sendable {
    public var streamEpoch: UInt64
    public var cumulative: UInt64
    /// At most `maxNackRanges`, each above `cumulative`, ascending, not overlapping.
    public var missing: [ClosedRange<UInt64>]
    public init(streamEpoch: UInt64, cumulative: UInt64, missing: [ClosedRange<UInt64>]) {
        self.streamEpoch = streamEpoch
        self.cumulative = cumulative
        self.missing = missing
    }
}

/// Opens a bulk transfer on the TCP channel: the whole table, or only the listed digest leaves
/// (leaf = level-0 bucket * fanout + level-1 bucket), for anti-entropy pulls.
public struct BulkRequest: Hashable, Sendable {
    public var requestID: UInt32
    public var leaves: [UInt16]
    public init(requestID: UInt32, leaves: [UInt16]) {
        self.requestID = requestID
        self.leaves = leaves
    }
}

public struct BulkBegin: Hashable, Sendable {
    public var requestID: UInt32
    /// The sender's delta stream this snapshot is consistent with, and the first delta sequence
    /// not contained in it: the receiver continues the stream from there.
    public var streamEpoch: UInt64
    public var resumeSequence: UInt64
    public var entryCount: UInt64
    public init(requestID: UInt32, streamEpoch: UInt64, resumeSequence: UInt64, entryCount: UInt64) {
        self.requestID = requestID
        self.streamEpoch = streamEpoch
        self.resumeSequence = resumeSequence
        self.entryCount = entryCount
    }
}

public struct BulkChunk: Hashable, Sendable {
    public var requestID: UInt32
    public var entries: [SyncEntry]
    public init(requestID: UInt32, entries: [SyncEntry]) {
        self.requestID = requestID
        self.entries = entries
    }
}

public struct BulkEnd: Hashable, Sendable {
    public var requestID: UInt32
    public var entryCount: UInt64
    public init(requestID: UInt32, entryCount: UInt64) {
        self.requestID = requestID
        self.entryCount = entryCount
    }
}

/// Sent when the delta stream is idle, so receivers notice lost tail deltas and dead peers.
public struct Keepalive: Hashable, Sendable {
    public var nextSequence: UInt64
    public var inSync: Bool
    public var entryCount: UInt64
    public init(nextSequence: UInt64, inSync: Bool, entryCount: UInt64) {
        self.nextSequence = nextSequence
        self.inSync = inSync
        self.entryCount = entryCount
    }
}

/// Anti-entropy digest: level 0 hashes the whole table in `digestFanout` buckets; level 1 hashes
/// the sub-buckets of one level-0 bucket (`bucket`). A bucket's hash is the wrapping sum of its
/// entries' hashes (flow key, version and operation), so it is maintained incrementally.
public struct Digest: Hashable, Sendable {
    /// 0 or 1.
    public var level: UInt8
    /// Level 1: the level-0 bucket (< digestFanout). Level 0: always 0.
    public var bucket: UInt16
    /// Entries (upserts and retained delete tombstones) in the sender's whole table, at both levels.
    public var entryCount: UInt64
    /// Exactly `digestFanout` hashes (SyncHashing.entryHash sums; proto/SPEC.md §10).
    public var hashes: [UInt64]
    public init(level: UInt8, bucket: UInt16, entryCount: UInt64, hashes: [UInt64]) {
        self.level = level
        self.bucket = bucket
        self.entryCount = entryCount
        self.hashes = hashes
    }
}

/// Asks for the level-1 digests of these level-0 buckets.
public struct DigestRequest: Hashable, Sendable {
    public var buckets: [UInt16]
    public init(buckets: [UInt16]) { self.buckets = buckets }
}

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

// MARK: - Service table sharing (config channel)

/// One service as the cluster shares it: the newest write of its key, or a tombstone.
public struct ServiceRecord: Hashable, Sendable {
    public var key: ServiceKey
    /// A hybrid logical clock in microseconds at the node that made the write; newest wins, ties
    /// go to the higher origin.
    public var version: UInt64
    /// Node id of the node where the write was made (non-zero).
    public var origin: UInt32
    /// The service's full configuration as UTF-8 JSON (the API's load-balancer entry); nil for a
    /// delete (tombstone). Opaque to the codec; the node validates it as an API request.
    public var spec: [UInt8]?

    public init(key: ServiceKey, version: UInt64, origin: UInt32, spec: [UInt8]?) {
        self.key = key
        self.version = version
        self.origin = origin
        self.spec = spec
    }

    public var isTombstone: Bool { spec == nil }

    /// Whether this write beats `other` of the same key: newer version, then higher origin.
    public func supersedes(_ other: ServiceRecord) -> Bool {
        (version, origin) > (other.version, other.origin)
    }
}

/// A summary of the sender's live service table: equal digests mean equal tables.
public struct ServiceDigest: Hashable, Sendable {
    /// Live services (tombstones not counted).
    public var count: UInt32
    /// Wrapping sum of SyncHashing.serviceHash over the live services.
    public var digest: UInt64
    /// Highest record version the sender holds, tombstones included (moves peers' clocks).
    public var maxVersion: UInt64
    public init(count: UInt32, digest: UInt64, maxVersion: UInt64) {
        self.count = count
        self.digest = digest
        self.maxVersion = maxVersion
    }
}

/// Part of the sender's service table; an empty one ends the table.
public struct ServiceRecords: Hashable, Sendable {
    public var records: [ServiceRecord]
    public init(records: [ServiceRecord]) { self.records = records }
}

// MARK: - Endpoint health verdicts (config channel)

/// Why a node holds an endpoint out of rotation.
public struct VerdictReasons: OptionSet, Hashable, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// The node's own probes found it dead.
    public static let probe = VerdictReasons(rawValue: 0x01)
    /// Its host's external state (endpointhoststate) is red.
    public static let hostState = VerdictReasons(rawValue: 0x02)
    public static let known: VerdictReasons = [.probe, .hostState]
}

/// An endpoint of one service that the sender holds down.
public struct DownEndpoint: Hashable, Sendable {
    public var address: IPv4Address
    public var port: UInt16
    /// Non-empty.
    public var reasons: VerdictReasons
    /// When the endpoint went down at the sender (wall clock µs; non-zero).
    public var sinceMicros: UInt64

    public init(address: IPv4Address, port: UInt16, reasons: VerdictReasons, sinceMicros: UInt64) {
        self.address = address
        self.port = port
        self.reasons = reasons
        self.sinceMicros = sinceMicros
    }

    /// The endpoint's identity as services name it ("ip:port").
    public var identity: String { "\(address):\(port)" }
}

/// One service the sender serves and the endpoints of it that it holds down (none: all in
/// rotation). Listing every service lets a receiver tell "none down" from "not served".
public struct ServiceVerdict: Hashable, Sendable {
    public var key: ServiceKey
    /// At most `DatapathLimits.maxEndpoints`, ascending by (address, port).
    public var down: [DownEndpoint]
    public init(key: ServiceKey, down: [DownEndpoint]) {
        self.key = key
        self.down = down
    }
}

/// An endpoint host's external state, as `POST config/endpointhoststate` sets it.
public enum HostVerdictState: UInt8, Sendable, CaseIterable, Hashable {
    case green = 1
    case yellow = 2
    case red = 3

    public var name: String {
        switch self {
        case .green: "green"
        case .yellow: "yellow"
        case .red: "red"
        }
    }

    public init?(name: String) {
        guard let s = Self.allCases.first(where: { $0.name == name.lowercased() }) else { return nil }
        self = s
    }
}

/// The newest write of one host's external state: shared cluster-wide, newest (version, origin)
/// wins, like a service record.
public struct HostVerdict: Hashable, Sendable {
    public var host: IPv4Address
    public var state: HostVerdictState
    /// Hybrid logical clock in µs at the node where the state was posted; non-zero.
    public var version: UInt64
    /// That node's id; non-zero.
    public var origin: UInt32

    public init(host: IPv4Address, state: HostVerdictState, version: UInt64, origin: UInt32) {
        self.host = host
        self.state = state
        self.version = version
        self.origin = origin
    }

    /// Whether this write beats `other` of the same host: newer version, then higher origin.
    public func supersedes(_ other: HostVerdict) -> Bool {
        (version, origin) > (other.version, other.origin)
    }
}

/// One part of the sender's verdict set: the services it serves with the endpoints it holds
/// down, and the host states it knows. A set is one or more parts sent back to back, all with
/// the same generation; every part but the last has `more` set.
public struct EndpointVerdicts: Hashable, Sendable {
    /// The set's version at the sender: a hybrid logical clock in µs that grows with every change
    /// of the set; non-zero.
    public var generation: UInt64
    /// Index of this part, from 0; below `SyncWire.maxVerdictParts`.
    public var part: UInt8
    /// Another part of this set follows.
    public var more: Bool
    /// Ascending by service key (vip, port, proto), across the parts of a set too.
    public var services: [ServiceVerdict]
    /// Ascending by address, across the parts of a set too.
    public var hosts: [HostVerdict]

    public init(generation: UInt64, part: UInt8 = 0, more: Bool = false, services: [ServiceVerdict],
                hosts: [HostVerdict]) {
        self.generation = generation
        self.part = part
        self.more = more
        self.services = services
        self.hosts = hosts
    }
}

public enum SyncMessage: Hashable, Sendable {
    case hello(Hello)
    case deltaBatch(DeltaBatch)
    case ack(Ack)
    case nack(Nack)
    case bulkRequest(BulkRequest)
    case bulkBegin(BulkBegin)
    case bulkChunk(BulkChunk)
    case bulkEnd(BulkEnd)
    case keepalive(Keepalive)
    case digest(Digest)
    case digestRequest(DigestRequest)
    case probe(Probe)
    case probeRequest(ProbeRequest)
    case probeAck(ProbeAck)
    case serviceDigest(ServiceDigest)
    case serviceRecords(ServiceRecords)
    case endpointVerdicts(EndpointVerdicts)

    public var type: SyncMessageType {
        switch self {
        case .hello: .hello
        case .deltaBatch: .deltaBatch
        case .ack: .ack
        case .nack: .nack
        case .bulkRequest: .bulkRequest
        case .bulkBegin: .bulkBegin
        case .bulkChunk: .bulkChunk
        case .bulkEnd: .bulkEnd
        case .keepalive: .keepalive
        case .digest: .digest
        case .digestRequest: .digestRequest
        case .probe: .probe
        case .probeRequest: .probeRequest
        case .probeAck: .probeAck
        case .serviceDigest: .serviceDigest
        case .serviceRecords: .serviceRecords
        case .endpointVerdicts: .endpointVerdicts
        }
    }
}

/// Why a received message was dropped; each has its own counter.
public enum SyncDropReason: String, Sendable, CaseIterable, Hashable {
    case truncated          // shorter than a header, or than the header's length says
    case oversized          // longer than maxDatagram / maxStreamFrame
    case badMagic
    case badVersion
    case unknownType
    case badFlags           // undefined flag bits, a non-zero reserved byte, or the stream flag disagrees with the channel
    case badLength          // header length disagrees with the bytes received
    case authFailed         // AEAD tag did not verify: forged, corrupted, or a different key
    case replayed           // sequence already seen or below the replay window
    case staleEpoch         // an epoch older than one already seen from that sender
    case malformedPayload   // authenticated but does not decode (bad count, bad field value, trailing bytes)
    case unknownSender      // a node id that is not in the cluster
    case selfSent           // our own node id
}

/// A decode failure with the counter it goes to and a human-readable detail.
public struct SyncDecodeError: Error, Hashable, Sendable, CustomStringConvertible {
    public var reason: SyncDropReason
    public var detail: String
    public init(_ reason: SyncDropReason, _ detail: String) {
        self.reason = reason
        self.detail = detail
    }
    public var description: String { "\(reason.rawValue): \(detail)" }
}
