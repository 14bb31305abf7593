import TandemCore
import TandemSyncWire

/// What the replication machinery (replica table, delta stream, bulk transfers, anti-entropy)
/// needs of one kind of replicated entry. Two kinds exist: the BPF datapath's flows (`SyncEntry`)
/// and the kernel's conntrack entries (`KernelSyncEntry`). Each kind runs its own instance of the
/// machinery, with its own sequences, acks and transfers, on its own channels (proto/SPEC.md §15).
public protocol ReplicatedEntry: Hashable, Sendable {
    /// What the local table holds for one key.
    associatedtype Record: Hashable & Sendable
    /// What identifies an entry across nodes.
    associatedtype Key: Hashable & Sendable

    init(operation: SyncEntry.Operation, record: Record, version: UInt64, origin: UInt32)
    var operation: SyncEntry.Operation { get }
    var record: Record { get }
    var version: UInt64 { get set }
    var origin: UInt32 { get }

    static func key(of record: Record) -> Key
    /// The digest leaf (0..<fanout²) a key belongs to, as the spec defines it.
    static func leaf(of key: Key) -> Int
    /// This entry's contribution to the digests (§10).
    var digestHash: UInt64 { get }
    /// Milliseconds the record has left before its table would expire it unrefreshed.
    static func lifetimeMillis(of record: Record) -> UInt64
    /// The record as this node's table will hold it once learned from a peer.
    static func learnedFromPeer(_ record: Record) -> Record
    /// The record as it goes to peers: without local bookkeeping.
    static func forPeers(_ record: Record) -> Record

    /// Whether a local delete of an entry this node only learned (and never changed here) is
    /// the local table expiring its copy, not a change to replicate. True for the kernel table,
    /// whose copies on a standby see no traffic and time out; the owner still holds the entry.
    static var localDeleteOfLearnedIsExpiry: Bool { get }
    /// Whether a learned entry the local table has refreshed on its own (its lifetime grew
    /// past what it was given) is taken over: traffic passes here now, so this node keeps it alive
    /// on peers. The kernel refreshes an entry's timeout on every packet without an event.
    static var adoptsLocallyRefreshed: Bool { get }
    /// Whether a local record repeats a learned one (lifetime aside): a local "change" that only
    /// reports what a peer sent is none (the kernel's events for entries injected from peers).
    static func sameState(_ local: Record, asLearned learned: Record) -> Bool

    /// What logs and status call this kind's table.
    static var tableName: String { get }
    /// The datagram and stream channels this kind travels on.
    static var datagramChannel: SyncChannel { get }
    static var streamChannel: SyncChannel { get }
    /// Most entries in one delta batch datagram, and in one bulk chunk frame.
    static var maxEntriesPerDatagram: Int { get }
    static var maxEntriesPerStreamFrame: Int { get }
    static func deltaMessage(firstSequence: UInt64, entries: [Self]) -> SyncMessage
    static func bulkChunkMessage(requestID: UInt32, entries: [Self]) -> SyncMessage
    /// The entries a message of this kind's channels carries, if it is a delta batch or chunk of this kind.
    static func deltas(in message: SyncMessage) -> (firstSequence: UInt64, entries: [Self])?
    static func bulkChunk(in message: SyncMessage) -> (requestID: UInt32, entries: [Self])?
}

extension ReplicatedEntry {
    public var key: Key { Self.key(of: record) }
}

extension SyncEntry: ReplicatedEntry {
    // The datapath marks learned flows and takes them over by its own events (proto/SPEC.md §8).
    public static var localDeleteOfLearnedIsExpiry: Bool { false }
    public static var adoptsLocallyRefreshed: Bool { false }
    public static func sameState(_ local: FlowRecord, asLearned learned: FlowRecord) -> Bool { false }
    public static func key(of record: FlowRecord) -> FlowTuple { record.key }
    public static func leaf(of key: FlowTuple) -> Int { SyncHashing.leaf(of: key) }
    public var digestHash: UInt64 { SyncHashing.entryHash(self) }
    public static func lifetimeMillis(of record: FlowRecord) -> UInt64 { UInt64(record.remainingMilliseconds) }
    public static func learnedFromPeer(_ record: FlowRecord) -> FlowRecord {
        var r = record
        r.flags.insert(.fromPeer)
        return r
    }
    public static func forPeers(_ record: FlowRecord) -> FlowRecord {
        var r = record
        r.flags.remove(.fromPeer)
        return r
    }
    public static var tableName: String { "flows" }
    public static var datagramChannel: SyncChannel { .datagram }
    public static var streamChannel: SyncChannel { .stream }
    public static var maxEntriesPerDatagram: Int { SyncCodec.maxEntriesPerDatagram }
    public static var maxEntriesPerStreamFrame: Int { SyncCodec.maxEntriesPerStreamFrame }
    public static func deltaMessage(firstSequence: UInt64, entries: [SyncEntry]) -> SyncMessage {
        .deltaBatch(DeltaBatch(firstSequence: firstSequence, entries: entries))
    }
    public static func bulkChunkMessage(requestID: UInt32, entries: [SyncEntry]) -> SyncMessage {
        .bulkChunk(BulkChunk(requestID: requestID, entries: entries))
    }
    public static func deltas(in message: SyncMessage) -> (firstSequence: UInt64, entries: [SyncEntry])? {
        if case .deltaBatch(let b) = message { (b.firstSequence, b.entries) } else { nil }
    }
    public static func bulkChunk(in message: SyncMessage) -> (requestID: UInt32, entries: [SyncEntry])? {
        if case .bulkChunk(let c) = message { (c.requestID, c.entries) } else { nil }
    }
}

extension KernelSyncEntry: ReplicatedEntry {
    public init(operation: SyncEntry.Operation, record: KernelConnection, version: UInt64, origin: UInt32) {
        self.init(operation: operation, connection: record, version: version, origin: origin)
    }
    public var record: KernelConnection { connection }
    public static var localDeleteOfLearnedIsExpiry: Bool { true }
    public static var adoptsLocallyRefreshed: Bool { true }
    /// The sink writes TCP entries liberal (IP_CT_TCP_FLAG_BE_LIBERAL, 0x08: a copy has seen
    /// none of the window, so the kernel must not judge its sequence numbers), so the local copy
    /// of a learned entry carries that flag where the peer's does not; it is not a change. A
    /// peer's delete carries the entry as its destroy event had it, marked dying (IPS_DYING),
    /// which the local copy is not. The flag masks say only what a write changed.
    public static func sameState(_ local: KernelConnection, asLearned learned: KernelConnection) -> Bool {
        func withoutLiberal(_ c: KernelConnection) -> KernelConnection {
            var c = c
            c.status.remove(.dying)
            guard var t = c.tcp else { return c }
            t.flagsOriginal = t.flagsOriginal.map { $0 & ~liberalFlag }
            t.flagsReply = t.flagsReply.map { $0 & ~liberalFlag }
            // Which flags a write changes: the wire does not carry it, the kernel reports 0.
            t.maskOriginal = nil
            t.maskReply = nil
            c.tcp = t
            return c
        }
        return withoutLiberal(local).sameState(as: withoutLiberal(learned))
    }
    static let liberalFlag: UInt8 = 0x08
    public static func key(of record: KernelConnection) -> KernelConnection.Key { record.key }
    public static func leaf(of key: KernelConnection.Key) -> Int { SyncHashing.leaf(of: key) }
    public var digestHash: UInt64 { SyncHashing.entryHash(self) }
    /// The kernel reports whole seconds left; an entry without a timeout (a fixed one) never
    /// needs refreshing for expiry's sake.
    public static func lifetimeMillis(of record: KernelConnection) -> UInt64 { UInt64(record.timeout ?? 0) * 1000 }
    /// The kernel's entry id is meaningful on one node only (the wire does not carry it).
    public static func learnedFromPeer(_ record: KernelConnection) -> KernelConnection {
        var r = record
        r.id = 0
        return r
    }
    public static func forPeers(_ record: KernelConnection) -> KernelConnection {
        var r = record
        r.id = 0
        return r
    }
    public static var tableName: String { "conntrack" }
    public static var datagramChannel: SyncChannel { .kernelDatagram }
    public static var streamChannel: SyncChannel { .kernelStream }
    public static var maxEntriesPerDatagram: Int { SyncCodec.maxKernelEntriesPerDatagram }
    public static var maxEntriesPerStreamFrame: Int { SyncCodec.maxKernelEntriesPerStreamFrame }
    public static func deltaMessage(firstSequence: UInt64, entries: [KernelSyncEntry]) -> SyncMessage {
        .kernelDeltaBatch(KernelDeltaBatch(firstSequence: firstSequence, entries: entries))
    }
    public static func bulkChunkMessage(requestID: UInt32, entries: [KernelSyncEntry]) -> SyncMessage {
        .kernelBulkChunk(KernelBulkChunk(requestID: requestID, entries: entries))
    }
    public static func deltas(in message: SyncMessage) -> (firstSequence: UInt64, entries: [KernelSyncEntry])? {
        if case .kernelDeltaBatch(let b) = message { (b.firstSequence, b.entries) } else { nil }
    }
    public static func bulkChunk(in message: SyncMessage) -> (requestID: UInt32, entries: [KernelSyncEntry])? {
        if case .kernelBulkChunk(let c) = message { (c.requestID, c.entries) } else { nil }
    }
}

/// Consecutive deltas of one kind's stream, as the sender numbered them: entry i has sequence
/// firstSequence + i.
public struct DeltaRun<Entry: ReplicatedEntry>: Sendable, Hashable {
    public var firstSequence: UInt64
    public var entries: [Entry]
    public init(firstSequence: UInt64, entries: [Entry]) {
        self.firstSequence = firstSequence
        self.entries = entries
    }
    public var message: SyncMessage { Entry.deltaMessage(firstSequence: firstSequence, entries: entries) }
}

/// The replication of the BPF datapath's flows, and of the kernel's conntrack table.
public typealias FlowReplicationCore = ReplicationCore<SyncEntry>
public typealias KernelReplicationCore = ReplicationCore<KernelSyncEntry>
public typealias FlowReplicationAction = ReplicationAction<SyncEntry>
