import TandemCore
import TandemSyncWire
import TandemStatus

/// Both clocks the core needs, read by the shell and passed in (tests drive them by hand).
public struct SyncTime: Sendable, Hashable {
    /// Local monotonic milliseconds: timers, deadlines.
    public var monotonicMillis: UInt64
    /// Wall-clock microseconds: versions (comparable across nodes) and lag.
    public var wallMicros: UInt64
    public init(monotonicMillis: UInt64, wallMicros: UInt64) {
        self.monotonicMillis = monotonicMillis
        self.wallMicros = wallMicros
    }
}

/// What the core asks its shell to do.
public enum ReplicationAction<Entry: ReplicatedEntry>: Sendable, Hashable {
    /// Install or update an entry learned from a peer in the local table (the datapath's maps, the kernel's conntrack table).
    case install(Entry.Record)
    /// Remove an entry (a flow: both directions) from the local table.
    case remove(Entry.Key)
    /// Send a datagram to one peer, or to every peer.
    case send(SyncMessage, to: UInt32)
    case broadcast(SyncMessage)
    /// Open a bulk transfer (TCP) from a peer: the whole table, or some digest leaves.
    case pull(from: UInt32, BulkRequest)
    /// Give up a transfer (it timed out or failed): close its connection, if still open.
    case abortPull(requestID: UInt32)
    /// This node now holds (or no longer holds) the cluster's table.
    case inSyncChanged(Bool)
}

public struct ReplicationConfig: Sendable {
    public var selfID: UInt32
    public var peers: [UInt32]
    /// TCP port this node serves bulk transfers on (announced in hellos).
    public var bulkPort: UInt16 = 0
    public var sender = DeltaSenderConfig()
    public var receiver = DeltaReceiver.Config()
    /// Milliseconds between keepalives (they carry the stream's next sequence).
    public var keepaliveInterval: UInt64 = 100
    /// Milliseconds between acks while deltas arrive.
    public var ackInterval: UInt64 = 10
    /// Milliseconds between anti-entropy rounds (level-0 digest to a random peer).
    public var antiEntropyInterval: UInt64 = 1000
    /// Milliseconds a delete is remembered, so an older upsert cannot bring the flow back.
    public var tombstoneTTL: UInt64 = 60_000
    /// A joining node with no in-sync peer in sight declares itself in sync after this long.
    public var joinTimeout: UInt64 = 1500
    /// A peer not heard from for this long is not asked for transfers.
    public var peerTimeout: UInt64 = 1000
    /// A transfer that has not finished after this long is abandoned and retried.
    public var transferTimeout: UInt64 = 30_000
    /// Leaves one anti-entropy pull asks for at most; more differing wait for later rounds.
    public var maxPulledLeaves = 2048
    /// Refresh a live flow on peers once their copy has less than this fraction of its timeout left.
    public var refreshFraction = 0.5

    public init(selfID: UInt32, peers: [UInt32]) {
        self.selfID = selfID
        self.peers = peers.filter { $0 != selfID }
    }
}

/// The replication state machine of one node: the replica table, the outgoing delta stream, one
/// receiver per peer stream, bulk transfers and anti-entropy. Pure: it never does I/O; each
/// `on...` method returns the actions for the shell (NIO sockets, the BPF maps) to perform.
public struct ReplicationCore<Entry: ReplicatedEntry>: Sendable {
    public typealias Action = ReplicationAction<Entry>
    public let config: ReplicationConfig
    public let epoch: UInt64
    public private(set) var table: ReplicaTable<Entry>
    public private(set) var sender: DeltaSender<Entry>
    public private(set) var receivers: [UInt32: DeltaReceiver] = [:]
    public private(set) var peers: [UInt32: PeerView] = [:]
    public private(set) var inSync = false
    public private(set) var counters = ReplicationCounters()
    public private(set) var lag = LagHistogram()
    private var rng: SplitMix64
    private var startedAt: UInt64 = 0
    private var lastKeepalive: UInt64 = 0
    private var lastAck: [UInt32: UInt64] = [:]
    private var lastAckedCumulative: [UInt32: UInt64] = [:]
    private var lastAntiEntropy: UInt64 = 0
    private var lastTombstoneSweep: UInt64 = 0
    private var nextRequestID: UInt32 = 1
    private var scanGeneration: UInt32 = 0
    private var scanStartedAt: UInt64 = 0
    /// When the local table next needs a scan (monotonic ms; .max: nothing needs one): the
    /// earliest point at which a flow this node replicates is due a refresh on its peers (its
    /// copies have `refreshFraction` of their lifetime left), or a copy learned from a peer is as
    /// far through its life (to adopt it if this node refreshes it, or to forget it once gone).
    /// A source that can only see its table by reading all of it (the kernel's, by a dump) scans
    /// when this says, not on a fixed beat, so a quiet table of long-lived flows costs nothing.
    public private(set) var scanDueMillis: UInt64 = .max
    /// The due time gathered over a `finishScan` pass in progress (nil: none in progress).
    private var scanDueInPass: UInt64?
    /// Digest leaves that differ from a peer's, waiting to be pulled.
    private var leavesToPull: [UInt32: Set<UInt16>] = [:]
    /// Transfers in flight, by request id.
    public private(set) var transfers: [UInt32: Transfer] = [:]

    public struct PeerView: Sendable, Hashable {
        public var epoch: UInt64 = 0
        public var lastHeard: UInt64?
        public var inSync = false
        public var bulkPort: UInt16 = 0
        public var entryCount: UInt64 = 0
    }

    public struct Transfer: Sendable, Hashable {
        public var peer: UInt32
        public var request: BulkRequest
        public var startedAt: UInt64
        public var begin: BulkBegin?
        /// Keys seen in a leaf pull, to find what the peer no longer has.
        public var seen: Set<Entry.Key> = []
        public var isFull: Bool { request.leaves.isEmpty }
    }

    /// - Parameters:
    ///   - epoch: this boot's epoch (wall-clock microseconds at start), which must grow across restarts.
    ///   - seed: randomness for peer choice.
    public init(config: ReplicationConfig, epoch: UInt64, seed: UInt64) {
        self.config = config
        self.epoch = epoch
        table = ReplicaTable()
        sender = DeltaSender(config: config.sender)
        rng = SplitMix64(seed: seed)
        for p in config.peers {
            peers[p] = PeerView()
            sender.addPeer(p)
        }
    }

    // MARK: Start

    /// Announces this node. With no peers configured it is trivially in sync.
    public mutating func start(now: SyncTime) -> [Action] {
        startedAt = now.monotonicMillis
        var actions: [Action] = [.broadcast(.hello(hello))]
        if config.peers.isEmpty { actions += setInSync(true) }
        return actions
    }

    private var hello: Hello { Hello(bulkPort: config.bulkPort, inSync: inSync, nextSequence: sender.nextSequence) }

    // MARK: Local changes (this node's datapath)

    /// A change the local datapath made (a ring-buffer event): recorded with a new version and
    /// queued for the peers. Nothing learned from peers comes through here, so nothing echoes.
    /// How long after a peer's delete an unchanged local copy is taken for the stale copy.
    static var deletedCopyGraceMillis: UInt64 { 30_000 }

    public mutating func onLocalChange(_ record: Entry.Record, deleted: Bool, now: SyncTime) -> [Action] {
        onLocalChange(record, deleted: deleted, now: now, adopting: false)
    }

    private mutating func onLocalChange(_ record: Entry.Record, deleted: Bool, now: SyncTime, adopting: Bool) -> [Action] {
        let r = Entry.forPeers(record)
        if !adopting, Entry.localDeleteOfLearnedIsExpiry || Entry.adoptsLocallyRefreshed,
           let held = table[Entry.key(of: r)], held.source == .peer, !held.isTombstone {
            if deleted && Entry.localDeleteOfLearnedIsExpiry {
                counters.learnedExpiredLocally += 1
                return []
            }
            if !deleted && Entry.sameState(r, asLearned: held.entry.record) {
                counters.learnedStateRepeated += 1
                return []
            }
        }
        // A peer deleted this entry a moment ago and the local table still shows the copy it had
        // learned, unchanged: the sink's delete is on its way, or the source lost the events that
        // would have told it the sink wrote it (an overrun) and a dump reports it as new. Sent on,
        // it would bring the entry back on the peer that just deleted it. A copy that changes
        // here (traffic), or that is still here once the tombstone is older, is this node's.
        if !adopting, !deleted, Entry.localDeleteOfLearnedIsExpiry,
           let held = table[Entry.key(of: r)], held.source == .peer, held.isTombstone,
           now.monotonicMillis < held.changedAt &+ Self.deletedCopyGraceMillis,
           Entry.sameState(r, asLearned: held.entry.record) {
            counters.deletedCopyRepeated += 1
            return []
        }
        let entry = table.recordLocal(deleted ? .delete : .upsert, r, clock: now.wallMicros, origin: config.selfID,
                                      now: now.monotonicMillis,
                                      peerDeadline: now.monotonicMillis &+ Entry.lifetimeMillis(of: r))
        if !deleted { noteScanDue(now.monotonicMillis &+ dueOffset(lifetime: Entry.lifetimeMillis(of: r))) }
        sender.enqueue(entry)
        counters.deltasQueued += 1
        return []
    }

    /// The periodic scan of the local datapath's table (original directions, with remaining
    /// lifetimes): catches changes whose events were lost, deletes without events (LRU eviction),
    /// and refreshes long-lived flows on peers before their copies would expire.
    public mutating func onLocalScan(_ live: [(record: Entry.Record, fromPeer: Bool)], now: SyncTime,
                                     readAtMillis: UInt64? = nil) -> [Action] {
        beginScan(now: now, readAtMillis: readAtMillis)
        var actions = onLocalScanChunk(live, now: now)
        actions += finishScan(now: now)
        return actions
    }

    /// A scan in chunks, so a big table never holds the event loop for long: `beginScan` when the
    /// table has been read, `onLocalScanChunk` for each slice of it, then `finishScan`.
    /// `readAtMillis` is when the reading of the datapath's table began (same monotonic clock as
    /// `now`). Only records older than that (by a second) may be judged missing from it: a busy
    /// loop can take a flow's event long after the copy was made, and that flow is not in the copy.
    public mutating func beginScan(now: SyncTime, readAtMillis: UInt64? = nil) {
        scanGeneration &+= 1
        if scanGeneration == 0 { scanGeneration = 1 }
        scanStartedAt = min(readAtMillis ?? now.monotonicMillis, now.monotonicMillis)
    }

    public mutating func onLocalScanChunk(_ live: [(record: Entry.Record, fromPeer: Bool)], now: SyncTime) -> [Action] {
        let nowMs = now.monotonicMillis
        var actions: [Action] = []
        for (r, fromPeer) in live {
            let key = Entry.key(of: r)
            defer { table.markScanned(key, scan: scanGeneration) }
            guard let held = table[key] else {
                if !fromPeer {
                    counters.missedEventsRecovered += 1
                    actions += onLocalChange(r, deleted: false, now: now)
                }
                continue
            }
            if held.isTombstone {
                // Installed before its delete arrived, or opened again since: the datapath's
                // flag tells which.
                if fromPeer { actions.append(.remove(key)) } else {
                    counters.missedEventsRecovered += 1
                    actions += onLocalChange(r, deleted: false, now: now)
                }
                continue
            }
            // Flows we own (including ones taken over from a failed peer) are refreshed by us.
            guard held.source == .local else {
                // Judged at the time the table was read: a dump of a big table can take seconds
                // (9.5 s for 20k entries on a loaded machine), and its first entries' timeouts
                // are that much older than the scan's end.
                if Entry.adoptsLocallyRefreshed, refreshedHere(r, held, now: scanStartedAt) {
                    counters.learnedAdopted += 1
                    actions += onLocalChange(r, deleted: false, now: now, adopting: true)
                }
                continue
            }
            let peerLeft = held.peerDeadline > nowMs ? held.peerDeadline - nowMs : 0
            // The lifetime peers were last given: about the state's full timeout.
            let given = Entry.lifetimeMillis(of: held.entry.record)
            if Double(peerLeft) < Double(given) * config.refreshFraction && Entry.lifetimeMillis(of: r) > peerLeft + 1000 {
                counters.refreshesSent += 1
                actions += onLocalChange(r, deleted: false, now: now)
            }
        }
        return actions
    }

    /// Whether the local table has more lifetime left for a learned entry than it was given,
    /// counted down since: something here refreshed it. Whole seconds and delivery delays are
    /// absorbed by a 5-second margin.
    private func refreshedHere(_ live: Entry.Record, _ held: ReplicaRecord<Entry>, now: UInt64) -> Bool {
        let given = Entry.lifetimeMillis(of: held.entry.record)
        let elapsed = now > held.changedAt ? now - held.changedAt : 0
        let expected = given > elapsed ? given - elapsed : 0
        return Entry.lifetimeMillis(of: live) > expected + 5000
    }

    /// Flows the scan did not see are gone from the datapath without an event (LRU eviction, the
    /// reaper). Only flows that changed a while before the scan began count: a newer one may
    /// simply postdate the read.
    public mutating func finishScan(now: SyncTime) -> [Action] {
        finishScan(leaves: 0..<ReplicaLeaves.count, now: now)
    }

    /// `finishScan` over some digest leaves: a big table is checked a slice of leaves at a time.
    public mutating func finishScan(leaves: Range<Int>, now: SyncTime) -> [Action] {
        var actions: [Action] = []
        if leaves.lowerBound == 0 { scanDueInPass = .max }
        defer {
            if leaves.upperBound >= ReplicaLeaves.count, let due = scanDueInPass {
                scanDueMillis = due
                scanDueInPass = nil
            }
        }
        // Each record is read once; handling one changes only that record.
        for (k, rec) in table.records(inLeafRange: leaves) {
            if rec.isTombstone { continue }
            guard rec.scanned != scanGeneration, scanStartedAt >= rec.changedAt &+ 1000 else {
                noteScanDue(scanDue(of: rec), passOnly: true)
                continue
            }
            if rec.source == .local {
                actions += onLocalChange(rec.entry.record, deleted: true, now: now)
            } else {
                // Our copy timed out: the owner stopped refreshing it. Forget it without telling
                // anyone; anti-entropy brings it back if the owner still has it.
                table.remove(k)
            }
        }
        return actions
    }

    /// How long after a copy is given `lifetime` it is due a look (`scanDueMillis`).
    private func dueOffset(lifetime: UInt64) -> UInt64 {
        UInt64(Double(lifetime) * max(0, min(1, 1 - config.refreshFraction)))
    }

    /// A kept record's due time: a local flow's when its peers' copies reach the refresh point,
    /// a learned copy's when it is as far through the lifetime it was given.
    private func scanDue(of rec: ReplicaRecord<Entry>) -> UInt64 {
        let given = Entry.lifetimeMillis(of: rec.entry.record)
        if rec.source == .local {
            let keep = UInt64(Double(given) * max(0, min(1, config.refreshFraction)))
            return rec.peerDeadline > keep ? rec.peerDeadline - keep : 0
        }
        return rec.changedAt &+ dueOffset(lifetime: given)
    }

    private mutating func noteScanDue(_ due: UInt64, passOnly: Bool = false) {
        if !passOnly { scanDueMillis = min(scanDueMillis, due) }
        if let d = scanDueInPass { scanDueInPass = min(d, due) }
    }

    /// Numbers and sends queued changes. The shell calls this after each burst of events.
    public mutating func flush(now: SyncTime) -> [Action] {
        let before = sender.coalesced
        let batches = sender.flush()
        counters.deltasCoalesced += sender.coalesced - before
        guard !batches.isEmpty else { return [] }
        counters.batchesSent += UInt64(batches.count)
        counters.entriesSent += UInt64(batches.reduce(0) { $0 + $1.entries.count })
        return batches.map { .broadcast($0.message) }
    }

    // MARK: Datagrams from peers

    /// A datagram that passed authentication and decoding.
    public mutating func onMessage(_ message: SyncMessage, from header: SyncHeader, now: SyncTime) -> [Action] {
        let p = header.sender
        guard p != config.selfID else { return [] }
        var actions: [Action] = []
        var view = peers[p] ?? PeerView()
        let newEpoch = view.epoch != header.epoch
        if header.epoch < view.epoch { return [] } // the opener already drops these
        view.epoch = header.epoch
        view.lastHeard = now.monotonicMillis
        peers[p] = view
        if newEpoch {
            sender.addPeer(p)
            // A restarted (or newly met) peer's stream starts over; it also needs our hello.
            receivers[p] = nil
            if case .hello = message {} else { actions.append(.send(.hello(hello), to: p)) }
        }
        switch message {
        case .hello(let h):
            peers[p]?.inSync = h.inSync
            peers[p]?.bulkPort = h.bulkPort
            var r = receiver(for: p, epoch: header.epoch, firstSequence: h.nextSequence)
            r.announce(nextSequence: h.nextSequence, now: now.monotonicMillis)
            receivers[p] = r
            if newEpoch { actions.append(.send(.hello(hello), to: p)) }
        case .deltaBatch, .kernelDeltaBatch:
            // Only this kind's batches: the header decoder keeps the other kind off this channel.
            if let (first, entries) = Entry.deltas(in: message) {
                actions += applyBatch(firstSequence: first, entries: entries, from: p, epoch: header.epoch, now: now)
            }
        case .ack(let a):
            if a.streamEpoch == epoch { sender.onAck(from: p, a.cumulative) }
        case .nack(let n):
            guard n.streamEpoch == epoch else { break }
            counters.nacksReceived += 1
            let (batches, unrepairable) = sender.onNack(from: p, n)
            if unrepairable { counters.unrepairableNacks += 1 }
            counters.retransmittedEntries += UInt64(batches.reduce(0) { $0 + $1.entries.count })
            actions += batches.map { .send($0.message, to: p) }
        case .keepalive(let k):
            peers[p]?.inSync = k.inSync
            peers[p]?.entryCount = k.entryCount
            var r = receiver(for: p, epoch: header.epoch, firstSequence: k.nextSequence)
            r.announce(nextSequence: k.nextSequence, now: now.monotonicMillis)
            receivers[p] = r
        case .digest(let d):
            actions += onDigest(d, from: p, now: now.monotonicMillis)
        case .digestRequest(let req):
            for b in req.buckets.prefix(ReplicaLeaves.fanout) where Int(b) < ReplicaLeaves.fanout {
                actions.append(.send(.digest(table.digest(level: 1, bucket: Int(b))), to: p))
            }
        case .bulkRequest, .bulkBegin, .bulkChunk, .bulkEnd:
            break // stream-channel messages; a datagram carrying one is ignored
        case .probe, .probeRequest, .probeAck:
            break // gossip-channel messages (the header decoder keeps them off this channel)
        case .serviceDigest, .serviceRecords, .endpointVerdicts:
            break // config-channel messages (likewise)
        case .kernelBulkChunk:
            break // stream-channel message (likewise)
        }
        return actions
    }

    /// The receiver for a peer's stream, created on first contact. A node that is joining takes
    /// the stream from where it is now (its bulk transfer covers the past); a node already in sync
    /// expects the stream from its start, so a restarted peer's first deltas are not missed.
    private mutating func receiver(for p: UInt32, epoch e: UInt64, firstSequence: UInt64) -> DeltaReceiver {
        if let r = receivers[p], r.epoch == e { return r }
        let baseline = inSync ? 0 : (firstSequence > 0 ? firstSequence - 1 : 0)
        return DeltaReceiver(epoch: e, baseline: baseline, config: config.receiver)
    }

    private mutating func applyBatch(firstSequence: UInt64, entries: [Entry], from p: UInt32, epoch e: UInt64,
                                     now: SyncTime) -> [Action] {
        var r = receiver(for: p, epoch: e, firstSequence: firstSequence)
        var actions: [Action] = []
        for (i, entry) in entries.enumerated() {
            counters.entriesReceived += 1
            let (seq, overflow) = firstSequence.addingReportingOverflow(UInt64(i))
            if overflow { counters.outOfWindowEntries += 1; continue }
            switch r.receive(seq, now: now.monotonicMillis) {
            case .duplicate: counters.duplicateEntries += 1
            case .outOfWindow: counters.outOfWindowEntries += 1
            case .fresh:
                if now.wallMicros >= entry.version { lag.record(now.wallMicros - entry.version) }
                apply(entry, now: now, into: &actions)
            }
        }
        receivers[p] = r
        return actions
    }

    /// Merges a peer's entry and queues the datapath change (appending: no array per entry).
    private mutating func apply(_ entry: Entry, now: SyncTime, into actions: inout [Action]) {
        switch table.merge(entry, source: .peer, now: now.monotonicMillis) {
        case .duplicate:
            counters.duplicateEntries += 1
        case .stale:
            counters.staleEntries += 1
        case .applied(let previous):
            counters.entriesApplied += 1
            if entry.operation == .upsert {
                noteScanDue(now.monotonicMillis &+ dueOffset(lifetime: Entry.lifetimeMillis(of: entry.record)))
                actions.append(.install(Entry.learnedFromPeer(entry.record)))
            } else if previous?.operation == .upsert {
                actions.append(.remove(entry.key))
            }
        }
    }

    // MARK: Timers

    /// Keepalives, acks, nacks, joining, anti-entropy and tombstone expiry. Call every few ms.
    public mutating func onTick(now: SyncTime) -> [Action] {
        let t = now.monotonicMillis
        var actions: [Action] = []
        if t >= lastKeepalive &+ config.keepaliveInterval {
            lastKeepalive = t
            // While joining, hellos (which also carry the next sequence) ask peers to answer.
            actions.append(.broadcast(inSync
                ? .keepalive(Keepalive(nextSequence: sender.nextSequence, inSync: true, entryCount: UInt64(table.count)))
                : .hello(hello)))
        }
        for p in receivers.keys.sorted() {
            guard var r = receivers[p] else { continue }
            if let nack = r.nackIfDue(now: t) {
                counters.nacksSent += 1
                actions.append(.send(.nack(nack), to: p))
                lastAck[p] = t
            } else if t >= (lastAck[p] ?? 0) &+ config.ackInterval,
                      r.cumulative != lastAckedCumulative[p] || t >= (lastAck[p] ?? 0) &+ 1000 {
                // Ack what is new; repeat an unchanged ack only once a second (acks get lost too).
                lastAck[p] = t
                lastAckedCumulative[p] = r.cumulative
                counters.acksSent += 1
                actions.append(.send(.ack(r.ack), to: p))
            }
            receivers[p] = r
            if r.needsBulk, inSync, !transfers.values.contains(where: { $0.peer == p && $0.isFull }) {
                actions += startPull(from: p, leaves: [], now: t)
            }
        }
        for (id, tr) in transfers where t >= tr.startedAt &+ config.transferTimeout {
            actions += onTransferFailed(requestID: id, now: now)
        }
        if !inSync && !transfers.values.contains(where: \.isFull) {
            if let source = alivePeers(now: t).filter({ peers[$0]?.inSync == true }).first {
                actions += startPull(from: source, leaves: [], now: t)
            } else if t >= startedAt &+ config.joinTimeout {
                // Nobody in sync to learn from: a cold start, or the only survivor.
                actions += setInSync(true)
            }
        }
        actions += startGatheredPulls(now: t)
        if inSync, t >= lastAntiEntropy &+ config.antiEntropyInterval {
            lastAntiEntropy = t
            let candidates = alivePeers(now: t)
            if !candidates.isEmpty {
                let p = candidates[Int(rng.next() % UInt64(candidates.count))]
                counters.antiEntropyRounds += 1
                actions.append(.send(.digest(table.digest(level: 0)), to: p))
            }
        }
        if t >= lastTombstoneSweep &+ 1000 {
            lastTombstoneSweep = t
            counters.tombstonesExpired += UInt64(table.expireTombstones(now: t, ttl: config.tombstoneTTL))
        }
        return actions
    }

    /// Whether the next `onTick` has work that cannot wait (acks or nacks to send, pulls to start,
    /// transfers or joining under way). When false, only keepalives, anti-entropy rounds and
    /// tombstone sweeps are left, which run every 100 ms or slower, so an idle node may tick rarely.
    public var wantsPromptTick: Bool {
        !inSync || !transfers.isEmpty || !leavesToPull.isEmpty
            || receivers.contains { p, r in r.hasGap || r.cumulative != lastAckedCumulative[p] }
    }

    private func alivePeers(now t: UInt64) -> [UInt32] {
        peers.filter { _, v in v.lastHeard.map { t < $0 &+ config.peerTimeout } ?? false }.map(\.key).sorted()
    }

    private mutating func setInSync(_ value: Bool) -> [Action] {
        guard inSync != value else { return [] }
        inSync = value
        return [.inSyncChanged(value)]
    }

    // MARK: Anti-entropy

    private mutating func onDigest(_ d: Digest, from p: UInt32, now t: UInt64) -> [Action] {
        guard inSync else { return [] }
        if d.level == 0 {
            let buckets = table.differingBuckets(d)
            guard !buckets.isEmpty else { return [] }
            return [.send(.digestRequest(DigestRequest(buckets: buckets)), to: p)]
        }
        // Level-1 digests of one round arrive back to back: gather their leaves and pull them in
        // one transfer on the next tick.
        let leaves = table.differingLeaves(d)
        if !leaves.isEmpty { leavesToPull[p, default: []].formUnion(leaves) }
        return []
    }

    private mutating func startGatheredPulls(now t: UInt64) -> [Action] {
        var actions: [Action] = []
        for p in leavesToPull.keys.sorted() where !transfers.values.contains(where: { $0.peer == p }) {
            guard let leaves = leavesToPull.removeValue(forKey: p), !leaves.isEmpty else { continue }
            counters.antiEntropyPulls += 1
            actions += startPull(from: p, leaves: boundedLeaves(leaves), now: t)
        }
        return actions
    }

    /// At most `maxPulledLeaves` of the differing leaves, from a random starting point, in
    /// ascending order; the rest differ again in a later round. Never the whole table: many
    /// leaves differ while a burst is in flight on the delta stream, and pulling the whole table
    /// then would only add load when the nodes are busiest.
    private mutating func boundedLeaves(_ leaves: Set<UInt16>) -> [UInt16] {
        let sorted = leaves.sorted()
        let cap = max(1, config.maxPulledLeaves)
        guard sorted.count > cap else { return sorted }
        let start = Int(rng.next() % UInt64(sorted.count))
        return (0..<cap).map { sorted[(start + $0) % sorted.count] }.sorted()
    }

    /// `leaves` empty pulls the whole table.
    private mutating func startPull(from p: UInt32, leaves: [UInt16], now t: UInt64) -> [Action] {
        let id = nextRequestID
        nextRequestID = nextRequestID == UInt32.max ? 1 : nextRequestID + 1
        let request = BulkRequest(requestID: id, leaves: leaves)
        transfers[id] = Transfer(peer: p, request: request, startedAt: t)
        return [.pull(from: p, request)]
    }

    // MARK: Bulk transfers (TCP)

    /// Serving side: a snapshot consistent with our stream. Flush first so that everything in the
    /// table up to now is either in the snapshot or numbered below resumeSequence.
    public mutating func serveBulk(_ request: BulkRequest, now: SyncTime) -> (begin: BulkBegin, entries: [Entry], flushed: [Action]) {
        let flushed = flush(now: now)
        let entries = request.leaves.isEmpty ? table.allEntries() : table.entries(inLeaves: request.leaves)
        counters.bulkTransfersServed += 1
        let begin = BulkBegin(requestID: request.requestID, streamEpoch: epoch, resumeSequence: sender.nextSequence,
                              entryCount: UInt64(entries.count))
        return (begin, entries, flushed)
    }

    public mutating func onBulkBegin(_ begin: BulkBegin, from p: UInt32) {
        guard var tr = transfers[begin.requestID], tr.peer == p else { return }
        if tr.isFull { table.reserve(table.count + Int(min(begin.entryCount, 1 << 24))) }
        tr.begin = begin
        transfers[begin.requestID] = tr
    }

    public mutating func onBulkChunk(requestID: UInt32, entries: [Entry], from p: UInt32, now: SyncTime) -> [Action] {
        guard var tr = transfers[requestID], tr.peer == p, tr.begin != nil else { return [] }
        var actions: [Action] = []
        actions.reserveCapacity(entries.count)
        for e in entries {
            counters.bulkEntriesReceived += 1
            if !tr.isFull { tr.seen.insert(e.key) }
            let before = counters.entriesApplied
            apply(e, now: now, into: &actions)
            if !tr.isFull && counters.entriesApplied > before { counters.antiEntropyRepaired += 1 }
        }
        transfers[requestID] = tr
        return actions
    }

    public mutating func onBulkEnd(_ end: BulkEnd, from p: UInt32, now: SyncTime) -> [Action] {
        guard let tr = transfers[end.requestID], tr.peer == p, let begin = tr.begin else { return [] }
        transfers[end.requestID] = nil
        counters.bulkTransfersCompleted += 1
        var actions: [Action] = []
        if var r = receivers[p], r.epoch == begin.streamEpoch {
            r.covered(upTo: begin.resumeSequence)
            receivers[p] = r
        } else if peers[p]?.epoch == begin.streamEpoch || peers[p]?.epoch == 0 {
            var r = DeltaReceiver(epoch: begin.streamEpoch, baseline: 0, config: config.receiver)
            r.covered(upTo: begin.resumeSequence)
            receivers[p] = r
        }
        if !tr.isFull {
            // What the peer authored but no longer has, and deleted long enough ago that its
            // tombstone is gone, we drop too. Flows of other origins stay: the peer may simply
            // not have them yet.
            let leaves = Set(tr.request.leaves.map(Int.init))
            let graceMicros = (config.tombstoneTTL + 5000) * 1000
            for k in table.keys(inLeaves: leaves) where !tr.seen.contains(k) {
                guard let rec = table[k], rec.entry.origin == p, rec.source == .peer,
                      now.wallMicros > rec.entry.version &+ graceMicros else { continue }
                table.remove(k)
                counters.antiEntropyRemoved += 1
                if !rec.isTombstone { actions.append(.remove(k)) }
            }
        } else if !inSync {
            actions += setInSync(true)
        }
        return actions
    }

    /// The transfer's connection failed or timed out; the next tick retries where needed. The
    /// shell closes the transfer's connection, so a timed-out pull does not stay open beside
    /// its retry.
    public mutating func onTransferFailed(requestID: UInt32, now: SyncTime) -> [Action] {
        guard transfers.removeValue(forKey: requestID) != nil else { return [] }
        counters.bulkTransfersFailed += 1
        return [.abortPull(requestID: requestID)]
    }
}

/// Lag (change made at the owner -> applied here) in log2 buckets of microseconds.
public struct LagHistogram: Sendable, Hashable {
    public private(set) var buckets = [UInt64](repeating: 0, count: 40)
    public private(set) var count: UInt64 = 0
    public private(set) var max: UInt64 = 0

    public mutating func record(_ micros: UInt64) {
        let b = micros == 0 ? 0 : Swift.min(buckets.count - 1, 64 - micros.leadingZeroBitCount)
        buckets[b] += 1
        count += 1
        if micros > max { max = micros }
    }

    /// Upper bound of the bucket holding the given quantile, in microseconds.
    public func quantile(_ q: Double) -> UInt64 {
        guard count > 0 else { return 0 }
        let target = UInt64((Double(count) * q).rounded(.up))
        var seen: UInt64 = 0
        for (i, n) in buckets.enumerated() {
            seen += n
            if seen >= target { return i == 0 ? 0 : Swift.min(max, (UInt64(1) << UInt64(i)) - 1) }
        }
        return max
    }
}
