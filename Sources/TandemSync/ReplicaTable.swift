import TandemCore
import TandemSyncWire

/// Where a replica came from: made by this node's datapath, or learned from a peer.
public enum ReplicaSource: Sendable, Hashable {
    case local
    case peer
}

/// The latest known change of one entry (a flow, a kernel conntrack entry), and local bookkeeping around it.
public struct ReplicaRecord<Entry: ReplicatedEntry>: Sendable, Hashable {
    /// An upsert, or a delete kept as a tombstone so an older upsert cannot resurrect the flow.
    public var entry: Entry
    public var source: ReplicaSource
    /// Local monotonic milliseconds when this record last changed (tombstone expiry).
    public var changedAt: UInt64
    /// Local monotonic milliseconds by which peers will expire the flow unless refreshed.
    public var peerDeadline: UInt64
    /// The local-table scan that last saw this flow in the datapath (bookkeeping only).
    public var scanned: UInt32 = 0

    public var isTombstone: Bool { entry.operation == .delete }
}

/// What merging an entry did.
public enum MergeOutcome<Entry: ReplicatedEntry>: Sendable, Hashable {
    /// Newer than what we held: the table changed.
    case applied(previous: Entry?)
    /// The same version and operation as held already.
    case duplicate
    /// Older than what we hold (or a delete of a flow we never saw, kept as a tombstone).
    case stale
}

/// Every node's view of the cluster's connection table, one record per flow (keyed by the
/// original tuple), with a two-level digest maintained incrementally for anti-entropy.
/// Newest version wins; at equal versions a delete wins over an upsert.
///
/// Records are kept in one small dictionary per digest leaf (16384 of them), so an anti-entropy
/// pull of a few leaves reads only those leaves instead of filtering the whole table on the
/// event loop, and the table grows a leaf at a time instead of rehashing a million records at
/// once (hundreds of milliseconds on the loop).
public struct ReplicaTable<Entry: ReplicatedEntry>: Sendable {
    public typealias Key = Entry.Key
    public typealias Record = ReplicaRecord<Entry>
    private var parts: [[Key: Record]]
    /// Wrapping sum of entry hashes per level-0 bucket and per leaf (bucket * fanout + sub).
    public private(set) var level0: [UInt64]
    public private(set) var leaves: [UInt64]
    public private(set) var count = 0
    public private(set) var liveCount = 0
    /// Tombstones in the order they were written, so expiry pops the old ones off the front
    /// instead of sweeping every record each second (tens of milliseconds on the event loop at a
    /// million flows). An item whose record has changed since is skipped when it comes up.
    private var tombstoneQueue: [(key: Key, changedAt: UInt64)] = []
    private var tombstoneHead = 0

    public static var fanout: Int { ReplicaLeaves.fanout }
    public static var leafCount: Int { ReplicaLeaves.count }

    public init() {
        level0 = [UInt64](repeating: 0, count: Self.fanout)
        leaves = [UInt64](repeating: 0, count: Self.leafCount)
        parts = [[Key: Record]](repeating: [:], count: Self.leafCount)
    }

    public var tombstoneCount: Int { count - liveCount }

    public subscript(key: Key) -> Record? { parts[Self.leaf(of: key)][key] }

    /// Every record, leaf by leaf.
    public var allRecords: some Sequence<(key: Key, value: Record)> { parts.lazy.flatMap { $0 } }

    /// The digest leaf (0..<fanout*fanout) a flow belongs to, as the spec defines it.
    public static func leaf(of key: Key) -> Int { Entry.leaf(of: key) }

    public static func bucket(ofLeaf leaf: Int) -> Int { leaf / ReplicaLeaves.fanout }

    /// Whether `candidate` should replace `current`.
    public static func supersedes(_ candidate: Entry, _ current: Entry) -> Bool {
        if candidate.version != current.version { return candidate.version > current.version }
        return candidate.operation == .delete && current.operation == .upsert
    }

    /// Merges a change. A delete of an unknown flow is still recorded (as a tombstone) so that a
    /// reordered older upsert of it is refused. One dictionary probe when the entry is new or
    /// newer (nearly always); a duplicate or stale one puts the held record back.
    @discardableResult
    public mutating func merge(_ entry: Entry, source: ReplicaSource, now: UInt64,
                               peerDeadline: UInt64 = 0) -> MergeOutcome<Entry> {
        let key = entry.key
        let leaf = Self.leaf(of: key)
        let new = Record(entry: entry, source: source, changedAt: now, peerDeadline: peerDeadline)
        let current = parts[leaf].updateValue(new, forKey: key)
        if let current {
            let duplicate = current.entry.version == entry.version && current.entry.operation == entry.operation
            if duplicate || !Self.supersedes(entry, current.entry) {
                parts[leaf][key] = current
                return duplicate ? .duplicate : .stale
            }
        }
        account(key, leaf: leaf, old: current, new: new)
        return .applied(previous: current?.entry)
    }

    /// Records a change this node's datapath made and returns it as sent to peers: its version is
    /// `clock`, or one past the version held when that is not older (a hybrid logical clock). The
    /// same as reading the held version and merging, in one dictionary probe instead of three.
    public mutating func recordLocal(_ operation: SyncEntry.Operation, _ record: Entry.Record, clock: UInt64,
                                     origin: UInt32, now: UInt64, peerDeadline: UInt64) -> Entry {
        let key = Entry.key(of: record)
        let leaf = Self.leaf(of: key)
        var new = Record(entry: Entry(operation: operation, record: record, version: clock, origin: origin),
                                source: .local, changedAt: now, peerDeadline: peerDeadline)
        let old = parts[leaf].updateValue(new, forKey: key)
        if let old, old.entry.version >= clock {
            new.entry.version = old.entry.version &+ 1
            parts[leaf][key] = new
        }
        account(key, leaf: leaf, old: old, new: new)
        return new.entry
    }

    /// Updates bookkeeping without changing the entry (and so without changing digests).
    public mutating func setPeerDeadline(_ key: Key, _ deadline: UInt64) {
        parts[Self.leaf(of: key)][key]?.peerDeadline = deadline
    }

    /// Grows the table once ahead of a bulk transfer instead of rehashing its leaves as they fill.
    public mutating func reserve(_ capacity: Int) {
        let perLeaf = capacity / Self.leafCount + capacity / Self.leafCount / 4 + 1
        for i in parts.indices where parts[i].capacity < perLeaf { parts[i].reserveCapacity(perLeaf) }
    }

    /// Notes that a scan of the local datapath saw this flow.
    public mutating func markScanned(_ key: Key, scan: UInt32) {
        parts[Self.leaf(of: key)][key]?.scanned = scan
    }

    /// Forgets a flow outright (tombstone expiry, or a learned flow that timed out locally).
    public mutating func remove(_ key: Key) {
        let leaf = Self.leaf(of: key)
        if let current = parts[leaf][key] { replace(key, leaf: leaf, old: current, new: nil) }
    }

    /// Drops tombstones older than `ttl` milliseconds; returns how many. Callers pass a clock that
    /// does not go backwards (the tombstones queue in the order they were written).
    @discardableResult
    public mutating func expireTombstones(now: UInt64, ttl: UInt64) -> Int {
        var gone = 0
        while tombstoneHead < tombstoneQueue.count, now >= tombstoneQueue[tombstoneHead].changedAt &+ ttl {
            let (k, at) = tombstoneQueue[tombstoneHead]
            tombstoneHead += 1
            if let r = self[k], r.isTombstone, r.changedAt == at {
                remove(k)
                gone += 1
            }
        }
        if tombstoneHead > 4096 && tombstoneHead * 2 > tombstoneQueue.count {
            tombstoneQueue.removeFirst(tombstoneHead)
            tombstoneHead = 0
        }
        return gone
    }

    private mutating func replace(_ key: Key, leaf: Int, old: Record?, new: Record?) {
        account(key, leaf: leaf, old: old, new: new)
        parts[leaf][key] = new
    }

    /// Digests, counts and the tombstone queue for `old` giving way to `new` (the dictionary
    /// itself is written by the caller).
    private mutating func account(_ key: Key, leaf: Int, old: Record?, new: Record?) {
        let bucket = Self.bucket(ofLeaf: leaf)
        if let old {
            let h = old.entry.digestHash
            leaves[leaf] &-= h
            level0[bucket] &-= h
            if !old.isTombstone { liveCount -= 1 }
            count -= 1
        }
        if let new {
            let h = new.entry.digestHash
            leaves[leaf] &+= h
            level0[bucket] &+= h
            if new.isTombstone {
                tombstoneQueue.append((key, new.changedAt))
            } else {
                liveCount += 1
            }
            count += 1
        }
    }

    /// The level-0 digest (128 hashes), or level 1 for one bucket.
    public func digest(level: UInt8, bucket: Int = 0) -> Digest {
        if level == 0 {
            return Digest(level: 0, bucket: 0, entryCount: UInt64(count), hashes: level0)
        }
        let b = max(0, min(bucket, Self.fanout - 1))
        return Digest(level: 1, bucket: UInt16(b), entryCount: UInt64(count),
                      hashes: Array(leaves[(b * Self.fanout)..<((b + 1) * Self.fanout)]))
    }

    /// Level-0 buckets where `remote` differs from ours.
    public func differingBuckets(_ remote: Digest) -> [UInt16] {
        guard remote.level == 0, remote.hashes.count == Self.fanout else { return [] }
        return (0..<Self.fanout).filter { level0[$0] != remote.hashes[$0] }.map { UInt16($0) }
    }

    /// Leaves under `remote.bucket` where `remote` differs from ours.
    public func differingLeaves(_ remote: Digest) -> [UInt16] {
        guard remote.level == 1, remote.hashes.count == Self.fanout, Int(remote.bucket) < Self.fanout else { return [] }
        let base = Int(remote.bucket) * Self.fanout
        return (0..<Self.fanout).filter { leaves[base + $0] != remote.hashes[$0] }.map { UInt16(base + $0) }
    }

    /// Every record (live and tombstones), for a full bulk transfer.
    public func allEntries() -> [Entry] {
        var out: [Entry] = []
        out.reserveCapacity(count)
        for part in parts { for r in part.values { out.append(r.entry) } }
        return out
    }

    /// The records in the given leaves, for an anti-entropy pull.
    public func entries(inLeaves wanted: [UInt16]) -> [Entry] {
        Set(wanted).filter { Int($0) < Self.leafCount }.sorted().flatMap { parts[Int($0)].values.map(\.entry) }
    }

    /// The records held in a range of leaves (a slice of a scan), copied out so the caller may
    /// change the table while it goes through them.
    public func records(inLeafRange range: Range<Int>) -> [(key: Key, value: Record)] {
        let r = range.clamped(to: 0..<Self.leafCount)
        var out: [(key: Key, value: Record)] = []
        for leaf in r { out.append(contentsOf: parts[leaf]) }
        return out
    }

    /// Keys held in the given leaves (to find what a pulled leaf no longer has).
    public func keys(inLeaves wanted: Set<Int>) -> [Key] {
        wanted.filter { $0 >= 0 && $0 < Self.leafCount }.sorted().flatMap { Array(parts[$0].keys) }
    }
}

/// The digest's shape, the same for every kind of entry (proto/SPEC.md §10).
public enum ReplicaLeaves {
    public static let fanout = SyncWire.digestFanout
    public static let count = fanout * fanout
}
