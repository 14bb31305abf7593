import TandemCore
import TandemSyncWire
import TandemStatus

/// What the node must do to its service table after a merge.
public enum ServiceSyncAction: Hashable, Sendable {
    /// Install or replace the service this record describes (its spec is set).
    case apply(ServiceRecord)
    /// Remove the service with this key, if the node has it.
    case remove(ServiceKey)
}

/// The cluster-shared service table's merge rule (proto/SPEC.md §14): per service key the newest
/// write wins, (version, origin) ordered, deletes kept as tombstones for a while. Pure: the
/// caller passes the wall clock in microseconds and carries out the returned actions.
public struct ServiceSyncCore: Sendable {
    public struct Held: Hashable, Sendable {
        public var record: ServiceRecord
        /// Whether the node's table holds this record's content (false: the node could not
        /// install it, so it is retried and left out of the digest).
        public var applied: Bool
        /// When the tombstone was made or learned (wall clock µs); 0 for live records.
        public var tombstonedAt: UInt64
    }

    public let selfID: UInt32
    public private(set) var held: [ServiceKey: Held] = [:]
    /// Highest version written or seen anywhere: the hybrid logical clock.
    public private(set) var clock: UInt64 = 0
    public private(set) var counters = ServiceSyncCounters()
    public var tombstoneLifetimeMicros: UInt64 = 24 * 3600 * 1_000_000
    public var maxTombstones = 4096

    public init(selfID: UInt32) {
        self.selfID = selfID
    }

    /// Puts back what the state file held (live records the node installed, or failed to, and
    /// tombstones), without actions.
    public mutating func seed(_ records: [(record: ServiceRecord, applied: Bool, tombstonedAt: UInt64)]) {
        for r in records {
            held[r.record.key] = Held(record: r.record, applied: r.applied, tombstonedAt: r.tombstonedAt)
            clock = max(clock, r.record.version)
        }
    }

    /// The version the next local write gets: max(wall clock, highest seen + 1).
    public mutating func nextVersion(nowMicros: UInt64) -> UInt64 {
        clock = max(nowMicros, clock &+ 1)
        return clock
    }

    /// Moves the clock past a peer's newest version, so this node's next write outranks it.
    public mutating func observe(maxVersion: UInt64) {
        clock = max(clock, maxVersion)
    }

    /// A write made through this node's API (a create, a change, or a delete when `spec` is nil),
    /// already applied to the node's table. Returns the record peers will receive.
    @discardableResult
    public mutating func recordLocal(_ key: ServiceKey, spec: [UInt8]?, nowMicros: UInt64) -> ServiceRecord {
        let record = ServiceRecord(key: key, version: nextVersion(nowMicros: nowMicros), origin: selfID, spec: spec)
        held[key] = Held(record: record, applied: true, tombstonedAt: spec == nil ? nowMicros : 0)
        return record
    }

    /// A service this node holds that no write has versioned yet (one from the config file):
    /// version 1, so any API write anywhere beats it, and between config files the higher node id
    /// wins. Kept as is when a record for the key exists already.
    public mutating func recordBaseline(_ key: ServiceKey, spec: [UInt8]) {
        guard held[key] == nil else { return }
        held[key] = Held(record: ServiceRecord(key: key, version: 1, origin: selfID, spec: spec), applied: true,
                         tombstonedAt: 0)
        clock = max(clock, 1)
    }

    /// Merges a peer's records. Newer ones are held and returned as actions; a held record the
    /// node failed to apply is returned again when a peer sends it, so it is retried.
    public mutating func merge(_ incoming: [ServiceRecord], nowMicros: UInt64) -> [ServiceSyncAction] {
        var actions: [ServiceSyncAction] = []
        for r in incoming {
            clock = max(clock, r.version)
            if let mine = held[r.key], !r.supersedes(mine.record) {
                if mine.record == r && !mine.applied, mine.record.spec != nil {
                    actions.append(.apply(r))
                } else {
                    counters.stale &+= 1
                }
                continue
            }
            counters.accepted &+= 1
            if r.spec == nil {
                held[r.key] = Held(record: r, applied: true, tombstonedAt: nowMicros)
                actions.append(.remove(r.key))
            } else {
                // Not applied until the node says so.
                held[r.key] = Held(record: r, applied: false, tombstonedAt: 0)
                actions.append(.apply(r))
            }
        }
        return actions
    }

    /// The node's answer to an `.apply` action.
    public mutating func applied(_ record: ServiceRecord, ok: Bool) {
        guard var h = held[record.key], h.record == record else { return }
        h.applied = ok
        held[record.key] = h
        if !ok { counters.applyFailed &+= 1 }
    }

    /// Forgets tombstones older than the lifetime, and the oldest beyond the cap.
    public mutating func expireTombstones(nowMicros: UInt64) {
        let cutoff = nowMicros > tombstoneLifetimeMicros ? nowMicros - tombstoneLifetimeMicros : 0
        var stones = held.filter { $0.value.record.spec == nil }
        for (k, h) in stones where h.tombstonedAt < cutoff {
            held[k] = nil
            stones[k] = nil
            counters.tombstonesExpired &+= 1
        }
        if stones.count > maxTombstones {
            let oldest = stones.sorted { ($0.value.tombstonedAt, $0.key) < ($1.value.tombstonedAt, $1.key) }
            for (k, _) in oldest.prefix(stones.count - maxTombstones) {
                held[k] = nil
                counters.tombstonesExpired &+= 1
            }
        }
    }

    /// Summary of the live services this node serves (applied records only).
    public func digest() -> ServiceDigest {
        var count: UInt32 = 0
        var sum: UInt64 = 0
        for h in held.values where h.applied {
            guard let spec = h.record.spec else { continue }
            count &+= 1
            sum &+= SyncHashing.serviceHash(key: h.record.key, spec: spec)
        }
        return ServiceDigest(count: count, digest: sum, maxVersion: clock)
    }

    /// Every held record, tombstones included, in key order: what an exchange sends.
    public func records() -> [ServiceRecord] {
        held.values.map(\.record).sorted { $0.key < $1.key }
    }

    /// Records as `serviceRecords` messages that each fit one stream frame.
    public static func frames(_ records: [ServiceRecord]) -> [ServiceRecords] {
        let budget = SyncChannel.config.maxPayload - 2
        var out: [ServiceRecords] = []
        var current: [ServiceRecord] = []
        var size = 0
        for r in records {
            let s = SyncCodec.serviceRecordSize(r)
            if !current.isEmpty && (size + s > budget || current.count == Int(UInt16.max)) {
                out.append(ServiceRecords(records: current))
                current = []
                size = 0
            }
            current.append(r)
            size += s
        }
        if !current.isEmpty { out.append(ServiceRecords(records: current)) }
        return out
    }
}
