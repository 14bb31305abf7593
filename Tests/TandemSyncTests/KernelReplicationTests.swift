import TandemCore
import TandemSyncWire
import TandemTestSupport
import Testing
@testable import TandemSync

/// The replication core run for the kernel's conntrack table: the same machinery as for flows,
/// with the kernel table's own rules for copies held on a standby.
@Suite struct KernelReplicationTests {
    let wall: UInt64 = 1_700_000_000_000_000

    func masquerade(_ i: Int, timeout: UInt32 = 120) -> KernelConnection {
        var c = Fixtures.kernelNumbered(i).connection
        c.timeout = timeout
        c.id = UInt32(1000 + i)
        return c
    }

    func time(_ ms: UInt64) -> SyncTime { SyncTime(monotonicMillis: ms, wallMicros: wall + ms * 1000) }

    /// Node 2 in sync and holding node 1's stream from its start.
    func pair() -> (KernelReplicationCore, KernelReplicationCore) {
        var a = KernelReplicationCore(config: ReplicationConfig(selfID: 1, peers: [2]), epoch: wall, seed: 1)
        var b = KernelReplicationCore(config: ReplicationConfig(selfID: 2, peers: [1]), epoch: wall + 1, seed: 2)
        _ = a.start(now: time(0))
        _ = b.start(now: time(0))
        _ = b.onMessage(.hello(Hello(bulkPort: 0, inSync: true, nextSequence: 1)), from: Fixtures.header(.hello, sender: 1, epoch: wall),
                        now: time(0))
        return (a, b)
    }

    func deliver(_ actions: [KernelReplicationCore.Action], to b: inout KernelReplicationCore, at t: UInt64)
        -> [KernelReplicationCore.Action] {
        var out: [KernelReplicationCore.Action] = []
        for case .broadcast(let m) in actions {
            out += b.onMessage(m, from: Fixtures.header(m.type, sender: 1, epoch: wall), now: time(t))
        }
        return out
    }

    @Test func entriesTravelAsKernelBatchesAndInstallWithoutTheLocalID() {
        var (a, b) = pair()
        for i in 0..<50 { _ = a.onLocalChange(masquerade(i), deleted: false, now: time(1)) }
        let sent = a.flush(now: time(1))
        #expect(sent.count == 3)   // 23 + 23 + 4: a kernel batch fills a datagram
        for case .broadcast(let m) in sent {
            guard case .kernelDeltaBatch(let batch) = m else { Issue.record("not a kernel batch: \(m.type)"); continue }
            #expect(batch.entries.count <= SyncCodec.maxKernelEntriesPerDatagram)
            #expect(batch.entries.allSatisfy { $0.connection.id == 0 && $0.origin == 1 })
        }
        let installed = deliver(sent, to: &b, at: 2).compactMap { if case .install(let c) = $0 { c } else { nil } }
        #expect(installed.count == 50)
        #expect(installed.first?.reply == masquerade(0).reply && installed.first?.id == 0)
        // A delete reaches the peer as a removal of the key.
        _ = a.onLocalChange(masquerade(7), deleted: true, now: time(3))
        let removed = deliver(a.flush(now: time(3)), to: &b, at: 4)
        #expect(removed == [.remove(masquerade(7).key)])
    }

    /// What the kernel source's reconcile waits for: the earliest point a replicated entry's
    /// copies need a refresh (half their lifetime gone), or a learned copy is as far through.
    @Test func theScanIsDueWhenTheShortestLivedCopyIsHalfThrough() {
        var (a, b) = pair()
        #expect(a.scanDueMillis == .max)   // an empty table needs no scan
        let long = masquerade(1, timeout: 432_000), short = masquerade(2, timeout: 120)
        _ = a.onLocalChange(long, deleted: false, now: time(1000))
        #expect(a.scanDueMillis == 1000 + 216_000_000)
        _ = a.onLocalChange(short, deleted: false, now: time(2000))
        #expect(a.scanDueMillis == 2000 + 60_000)
        // The standby: its learned copies are due at the same point of their lives.
        _ = deliver(a.flush(now: time(2000)), to: &b, at: 2500)
        #expect(b.scanDueMillis == 2500 + 60_000)
        // A scan just after 62 s refreshes the short one (the kernel shows it refreshed to 120 s by
        // traffic): the next due time is half through the refreshed copy's life.
        var refreshed = short
        refreshed.timeout = 120
        var longNow = long
        longNow.timeout = 432_000 - 62
        _ = a.onLocalScan([(longNow, false), (refreshed, false)], now: time(62_500), readAtMillis: 62_500)
        #expect(a.counters.refreshesSent == 1)
        #expect(a.scanDueMillis == 62_500 + 60_000)
        // The short flow ends: only the long one is left, due days from now.
        _ = a.onLocalChange(refreshed, deleted: true, now: time(70_000))
        _ = a.onLocalScan([(longNow, false)], now: time(80_000), readAtMillis: 80_000)
        #expect(a.scanDueMillis == 1000 + 216_000_000)
        // The table empties: nothing is due.
        _ = a.onLocalChange(longNow, deleted: true, now: time(90_000))
        _ = a.onLocalScan([], now: time(100_000), readAtMillis: 100_000)
        #expect(a.scanDueMillis == .max)
    }

    @Test func aCopyTimingOutOnTheStandbyIsNotAnnounced() {
        var (a, b) = pair()
        _ = a.onLocalChange(masquerade(1), deleted: false, now: time(1))
        _ = deliver(a.flush(now: time(1)), to: &b, at: 2)
        // The kernel on node 2 destroys its copy (no traffic there): nothing goes back to node 1.
        #expect(b.onLocalChange(masquerade(1), deleted: true, now: time(130_000)).isEmpty)
        #expect(b.flush(now: time(130_000)).isEmpty)
        #expect(b.counters.learnedExpiredLocally == 1)
        // Node 2's own connections still replicate, deletes included.
        _ = b.onLocalChange(masquerade(2), deleted: false, now: time(130_001))
        _ = b.onLocalChange(masquerade(2), deleted: true, now: time(130_002))
        #expect(b.flush(now: time(130_002)).count == 1)
    }

    @Test func theInjectionsOwnEventIsNoChange() {
        var (a, b) = pair()
        _ = a.onLocalChange(masquerade(3), deleted: false, now: time(1))
        _ = deliver(a.flush(now: time(1)), to: &b, at: 2)
        // The sink's write comes back as an event with a fresh id and a slightly lower timeout.
        var echoed = masquerade(3, timeout: 119)
        echoed.id = 77
        _ = b.onLocalChange(echoed, deleted: false, now: time(3))
        #expect(b.flush(now: time(3)).isEmpty)
        #expect(b.counters.learnedStateRepeated == 1)
        // A real change (the TCP state moved on node 2: traffic passes there) is sent.
        var moved = echoed
        moved.tcp?.state = .finWait
        _ = b.onLocalChange(moved, deleted: false, now: time(4))
        #expect(b.flush(now: time(4)).count == 1)
        #expect(b.table[moved.key]?.source == .local)
    }

    /// After an overrun the source cannot tell the sink's writes from its own: a dump reports the
    /// copies as new. Written liberal (0x08 in the TCP flags) they still are the learned state,
    /// and a copy a peer has just deleted (the sink's delete in flight) is not brought back.
    @Test func copiesADumpReportsAfterAnOverrunAreNoChanges() {
        var (a, b) = pair()
        _ = a.onLocalChange(masquerade(5), deleted: false, now: time(1))
        _ = a.onLocalChange(masquerade(6), deleted: false, now: time(1))
        _ = deliver(a.flush(now: time(1)), to: &b, at: 2)
        func asWritten(_ c: KernelConnection) -> KernelConnection {
            var c = c
            c.timeout = 118
            c.id = 91
            if var t = c.tcp {
                t.flagsOriginal = (t.flagsOriginal ?? 0) | 0x08
                t.flagsReply = (t.flagsReply ?? 0) | 0x08
                // The kernel reports masks of 0 where the wire carries none.
                t.maskOriginal = 0
                t.maskReply = 0
                c.tcp = t
            }
            return c
        }
        #expect(masquerade(5).tcp != nil, "the fixture must be TCP for the liberal flag to matter")
        _ = b.onLocalChange(asWritten(masquerade(5)), deleted: false, now: time(3))
        #expect(b.flush(now: time(3)).isEmpty)
        #expect(b.counters.learnedStateRepeated == 1)
        // Node 1 deletes 6 (its destroy event marks the entry dying); node 2's dump still lists
        // the copy: not sent back.
        var destroyed = masquerade(6)
        destroyed.status.insert(.dying)
        destroyed.timeout = nil
        _ = a.onLocalChange(destroyed, deleted: true, now: time(4))
        _ = deliver(a.flush(now: time(4)), to: &b, at: 5)
        _ = b.onLocalChange(asWritten(masquerade(6)), deleted: false, now: time(6))
        #expect(b.flush(now: time(6)).isEmpty)
        #expect(b.counters.deletedCopyRepeated == 1)
        // Long after the delete, the same tuple in node 2's table is its own connection.
        _ = b.onLocalChange(asWritten(masquerade(6)), deleted: false, now: time(40_000))
        #expect(b.flush(now: time(40_000)).count == 1)
        // And a copy that changed (traffic here) right after the delete is sent too.
        _ = a.onLocalChange(masquerade(5), deleted: true, now: time(40_001))
        _ = deliver(a.flush(now: time(40_001)), to: &b, at: 40_002)
        var moved = asWritten(masquerade(5))
        moved.tcp?.state = .finWait
        _ = b.onLocalChange(moved, deleted: false, now: time(40_003))
        #expect(b.flush(now: time(40_003)).count == 1)
    }

    /// A dump that took 10 s to read: its entries' timeouts are as of the read, not as of the
    /// scan's end, so an untouched copy is not mistaken for one traffic refreshed.
    @Test func aSlowDumpDoesNotMakeUntouchedCopiesLookRefreshed() {
        var (a, b) = pair()
        _ = a.onLocalChange(masquerade(8, timeout: 600), deleted: false, now: time(1))
        _ = deliver(a.flush(now: time(1)), to: &b, at: 1)
        // Read at 20 s (580 s left, untouched), handed to the core 10 s later.
        b.beginScan(now: time(30_000), readAtMillis: 20_000)
        _ = b.onLocalScanChunk([(masquerade(8, timeout: 580), fromPeer: false)], now: time(30_000))
        _ = b.finishScan(now: time(30_000))
        #expect(b.counters.learnedAdopted == 0)
        #expect(b.flush(now: time(30_000)).isEmpty)
    }

    @Test func aCopyTheKernelKeepsAliveIsTakenOver() {
        var (a, b) = pair()
        _ = a.onLocalChange(masquerade(4, timeout: 120), deleted: false, now: time(1))
        _ = deliver(a.flush(now: time(1)), to: &b, at: 1)
        // 60 s later the copy on node 2 has 60 s left if nothing touched it: a scan that finds
        // that leaves it to its owner.
        #expect(b.onLocalScan([(masquerade(4, timeout: 60), fromPeer: true)], now: time(60_001)).isEmpty)
        #expect(b.flush(now: time(60_001)).isEmpty)
        // Packets through node 2 reset the kernel's timeout to 120 s: node 2 carries the flow now.
        _ = b.onLocalScan([(masquerade(4, timeout: 119), fromPeer: true)], now: time(61_000))
        #expect(b.counters.learnedAdopted == 1)
        #expect(b.table[masquerade(4).key]?.source == .local)
        let sent = b.flush(now: time(61_000))
        #expect(sent.count == 1)
        // Node 1 learns it back as a peer's.
        var back = KernelReplicationCore(config: ReplicationConfig(selfID: 1, peers: [2]), epoch: wall + 2, seed: 3)
        _ = back.start(now: time(0))
        _ = back.onMessage(.hello(Hello(bulkPort: 0, inSync: true, nextSequence: 1)),
                           from: Fixtures.header(.hello, sender: 2, epoch: wall + 1), now: time(61_000))
        var installs = 0
        for case .broadcast(let m) in sent {
            for case .install in back.onMessage(m, from: Fixtures.header(m.type, sender: 2, epoch: wall + 1), now: time(61_001)) {
                installs += 1
            }
        }
        #expect(installs == 1)
    }

    @Test func aBulkTransferCarriesKernelChunks() {
        var (a, _) = pair()
        for i in 0..<2500 { _ = a.onLocalChange(masquerade(i), deleted: false, now: time(1)) }
        _ = a.flush(now: time(1))
        let (begin, entries, _) = a.serveBulk(BulkRequest(requestID: 9, leaves: []), now: time(2))
        #expect(begin.entryCount == 2500 && entries.count == 2500)
        var joiner = KernelReplicationCore(config: ReplicationConfig(selfID: 3, peers: [1]), epoch: wall + 3, seed: 4)
        _ = joiner.start(now: time(0))
        _ = joiner.onMessage(.hello(Hello(bulkPort: 1, inSync: true, nextSequence: begin.resumeSequence)),
                             from: Fixtures.header(.hello, sender: 1, epoch: wall), now: time(2))
        let pull = joiner.onTick(now: time(3)).compactMap { if case .pull(_, let r) = $0 { r } else { nil } }.first
        let request = try? #require(pull)
        guard let request else { return }
        joiner.onBulkBegin(BulkBegin(requestID: request.requestID, streamEpoch: wall, resumeSequence: begin.resumeSequence,
                                     entryCount: begin.entryCount), from: 1)
        var installed = 0
        var i = 0
        while i < entries.count {
            let chunk = Array(entries[i..<min(i + KernelSyncEntry.maxEntriesPerStreamFrame, entries.count)])
            #expect(KernelSyncEntry.bulkChunkMessage(requestID: request.requestID, entries: chunk).type == .kernelBulkChunk)
            for case .install in joiner.onBulkChunk(requestID: request.requestID, entries: chunk, from: 1, now: time(4)) {
                installed += 1
            }
            i += chunk.count
        }
        #expect(joiner.onBulkEnd(BulkEnd(requestID: request.requestID, entryCount: 2500), from: 1, now: time(5))
            == [.inSyncChanged(true)])
        #expect(installed == 2500 && joiner.table.liveCount == 2500)
        // Digests of both tables agree: anti-entropy finds nothing to pull.
        #expect(a.table.differingBuckets(joiner.table.digest(level: 0)).isEmpty)
    }

    @Test func aFlowCoreIgnoresKernelBatches() {
        var flows = FlowReplicationCore(config: ReplicationConfig(selfID: 2, peers: [1]), epoch: wall, seed: 1)
        _ = flows.start(now: time(0))
        let batch = SyncMessage.kernelDeltaBatch(KernelDeltaBatch(firstSequence: 1, entries: [Fixtures.kernelNumbered(1)]))
        let actions = flows.onMessage(batch, from: Fixtures.header(.kernelDeltaBatch, sender: 1, epoch: wall), now: time(1))
        #expect(!actions.contains { if case .install = $0 { true } else { false } })
        #expect(flows.table.count == 0)
    }
}
