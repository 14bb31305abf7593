import TandemCore
import TandemSyncWire

/// The sending half of the delta stream. Changes queue here, coalesced per flow (only the newest
/// change of a flow is sent), and go out numbered in batches that fill a datagram. Sent deltas
/// stay in a bounded retransmit window until every peer acknowledged them; a nack resends them.
/// One sequence space per node and boot epoch, shared by all peers.
public struct DeltaSender<Entry: ReplicatedEntry>: Sendable {
    public typealias Config = DeltaSenderConfig

    public let config: Config
    /// Entries per batch: the configured number, at most what fits one datagram of this kind.
    private let batchSize: Int
    /// The next delta's sequence; the stream starts at 1 in every boot epoch.
    public private(set) var nextSequence: UInt64 = 1
    /// Queued changes not yet numbered, in first-change order, one per flow.
    private var pending: [Entry] = []
    private var pendingIndex: [Entry.Key: Int] = [:]
    /// Sent deltas: window[i] has sequence windowStart + i.
    private var window: [Entry] = []
    private var windowHead = 0
    public private(set) var windowStart: UInt64 = 1
    /// Highest cumulative ack per peer.
    public private(set) var acked: [UInt32: UInt64] = [:]
    public private(set) var coalesced: UInt64 = 0

    public init(config: Config = Config()) {
        self.config = config
        batchSize = max(1, min(config.maxEntriesPerBatch ?? Entry.maxEntriesPerDatagram, Entry.maxEntriesPerDatagram))
    }

    public var pendingCount: Int { pending.count }
    public var windowCount: Int { window.count - windowHead }

    /// Queues a change; a queued change of the same flow is replaced by the newer one.
    public mutating func enqueue(_ entry: Entry) {
        let key = entry.key
        if let i = pendingIndex[key] {
            if !ReplicaTable<Entry>.supersedes(entry, pending[i]) && entry != pending[i] { return }
            pending[i] = entry
            coalesced += 1
        } else {
            pendingIndex[key] = pending.count
            pending.append(entry)
        }
    }

    /// Numbers the queued changes and returns them as batches to send to every peer.
    public mutating func flush() -> [DeltaRun<Entry>] {
        guard !pending.isEmpty else { return [] }
        var batches: [DeltaRun<Entry>] = []
        var i = 0
        while i < pending.count {
            let chunk = Array(pending[i..<min(i + batchSize, pending.count)])
            batches.append(DeltaRun(firstSequence: nextSequence, entries: chunk))
            nextSequence += UInt64(chunk.count)
            window.append(contentsOf: chunk)
            i += chunk.count
        }
        pending.removeAll(keepingCapacity: true)
        pendingIndex.removeAll(keepingCapacity: true)
        trimWindow(to: config.windowCapacity)
        return batches
    }

    public mutating func onAck(from peer: UInt32, _ cumulative: UInt64) {
        let c = min(cumulative, nextSequence - 1)
        if c > acked[peer] ?? 0 { acked[peer] = c }
        trimAcknowledged()
    }

    /// Resends what a peer reports missing. Ranges older than the window cannot be repaired here:
    /// the answer's `unrepairable` tells the caller (the peer will ask for a bulk transfer).
    public mutating func onNack(from peer: UInt32, _ nack: Nack) -> (batches: [DeltaRun<Entry>], unrepairable: Bool) {
        onAck(from: peer, nack.cumulative)
        var batches: [DeltaRun<Entry>] = []
        var unrepairable = false
        for range in nack.missing {
            if range.lowerBound < windowStart { unrepairable = true }
            let lo = max(range.lowerBound, windowStart)
            let hi = min(range.upperBound, nextSequence - 1)
            guard lo <= hi else { continue }
            var seq = lo
            while seq <= hi {
                let n = Int(min(UInt64(batchSize), hi - seq + 1))
                let start = windowHead + Int(seq - windowStart)
                batches.append(DeltaRun(firstSequence: seq, entries: Array(window[start..<(start + n)])))
                seq += UInt64(n)
            }
        }
        return (batches, unrepairable)
    }

    /// Forgets a peer (it left the cluster), so it no longer holds the window open.
    public mutating func removePeer(_ peer: UInt32) {
        acked[peer] = nil
        trimAcknowledged()
    }

    /// Registers a peer whose acks gate trimming: until it acks, the window keeps everything.
    public mutating func addPeer(_ peer: UInt32) {
        if acked[peer] == nil { acked[peer] = windowStart - 1 }
    }

    private mutating func trimAcknowledged() {
        guard let minAck = acked.values.min(), minAck >= windowStart else { return }
        let drop = Int(min(minAck - windowStart + 1, UInt64(windowCount)))
        dropFront(drop)
    }

    private mutating func trimWindow(to capacity: Int) {
        if windowCount > capacity { dropFront(windowCount - capacity) }
    }

    private mutating func dropFront(_ n: Int) {
        guard n > 0 else { return }
        windowHead += n
        windowStart += UInt64(n)
        // Compact once the dead prefix dominates, so removal stays amortised O(1).
        if windowHead > 4096 && windowHead * 2 > window.count {
            window.removeFirst(windowHead)
            windowHead = 0
        }
    }
}

/// How a delta stream batches and how much it keeps for retransmission (the same for every kind).
public struct DeltaSenderConfig: Sendable {
    /// Entries per batch; nil fills a datagram.
    public var maxEntriesPerBatch: Int?
    /// Deltas kept for retransmission; older ones can only be repaired by a bulk transfer.
    public var windowCapacity: Int
    public init(maxEntriesPerBatch: Int? = nil, windowCapacity: Int = 1 << 18) {
        self.maxEntriesPerBatch = maxEntriesPerBatch.map { max(1, $0) }
        self.windowCapacity = max(1, windowCapacity)
    }
}
