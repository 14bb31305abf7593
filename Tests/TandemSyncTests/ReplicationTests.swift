import Testing
import TandemCore
import TandemSync
import TandemSyncWire

private func entry(_ n: Int, version: UInt64, op: SyncEntry.Operation = .upsert, origin: UInt32 = 1) -> SyncEntry {
    SyncEntry(operation: op, record: Flows.record(n), version: version, origin: origin)
}

@Suite struct ReplicaTableTests {
    @Test func newestVersionWinsAndDeleteBeatsEqualUpsert() {
        var t = ReplicaTable<SyncEntry>()
        #expect(t.merge(entry(1, version: 10), source: .peer, now: 0) == .applied(previous: nil))
        #expect(t.merge(entry(1, version: 10), source: .peer, now: 0) == .duplicate)
        #expect(t.merge(entry(1, version: 9), source: .peer, now: 0) == .stale)
        #expect(t.merge(entry(1, version: 10, op: .delete), source: .peer, now: 0) == .applied(previous: entry(1, version: 10)))
        #expect(t.merge(entry(1, version: 10), source: .peer, now: 0) == .stale)
        #expect(t.liveCount == 0 && t.tombstoneCount == 1)
        #expect(t.merge(entry(1, version: 11), source: .peer, now: 0) == .applied(previous: entry(1, version: 10, op: .delete)))
        #expect(t.liveCount == 1)
    }

    @Test func refusedMergesLeaveTheHeldRecordAndDigestsAlone() {
        var t = ReplicaTable<SyncEntry>()
        t.merge(entry(2, version: 10), source: .local, now: 5, peerDeadline: 99)
        let before = (t[entry(2, version: 10).record.key], t.digest(level: 0), t.count)
        #expect(t.merge(entry(2, version: 10), source: .peer, now: 7) == .duplicate)
        #expect(t.merge(entry(2, version: 3), source: .peer, now: 7) == .stale)
        #expect(t[entry(2, version: 10).record.key] == before.0, "source, times and deadline kept")
        #expect(t.digest(level: 0) == before.1 && t.count == before.2)
    }

    @Test func localChangesTakeTheClockOrOnePastTheHeldVersion() {
        var t = ReplicaTable<SyncEntry>()
        var reference = ReplicaTable<SyncEntry>()
        let r = entry(3, version: 0).record
        // First change: the clock. A clock behind what is held (a peer's newer version, or a
        // clock step back): one past the held version. Both as read-then-merge would give.
        let first = t.recordLocal(.upsert, r, clock: 1_000, origin: 9, now: 1, peerDeadline: 50)
        #expect(first.version == 1_000 && first.origin == 9)
        reference.merge(first, source: .local, now: 1, peerDeadline: 50)
        t.merge(entry(3, version: 5_000), source: .peer, now: 2)
        reference.merge(entry(3, version: 5_000), source: .peer, now: 2)
        let behind = t.recordLocal(.delete, r, clock: 2_000, origin: 9, now: 3, peerDeadline: 60)
        #expect(behind.version == 5_001 && behind.operation == .delete)
        reference.merge(behind, source: .local, now: 3, peerDeadline: 60)
        let ahead = t.recordLocal(.upsert, r, clock: 9_000, origin: 9, now: 4, peerDeadline: 70)
        #expect(ahead.version == 9_000)
        reference.merge(ahead, source: .local, now: 4, peerDeadline: 70)
        #expect(t[r.key] == reference[r.key])
        #expect(t.digest(level: 0) == reference.digest(level: 0))
        #expect(t.count == reference.count && t.liveCount == reference.liveCount)
    }

    @Test func deleteOfUnknownFlowIsKeptAsTombstoneAndRefusesOlderUpsert() {
        var t = ReplicaTable<SyncEntry>()
        t.merge(entry(5, version: 20, op: .delete), source: .peer, now: 0)
        #expect(t.merge(entry(5, version: 19), source: .peer, now: 0) == .stale)
        #expect(t.expireTombstones(now: 60_001, ttl: 60_000) == 1)
        #expect(t.count == 0)
    }

    @Test func tombstonesExpireInOrderAndOnlyWhileStillTombstones() {
        var t = ReplicaTable<SyncEntry>()
        t.merge(entry(1, version: 10, op: .delete), source: .peer, now: 1_000)
        t.merge(entry(2, version: 10, op: .delete), source: .peer, now: 2_000)
        t.merge(entry(3, version: 10, op: .delete), source: .peer, now: 3_000)
        // Flow 2 comes back to life; flow 3 is deleted again later (a newer tombstone).
        t.merge(entry(2, version: 11), source: .peer, now: 2_500)
        t.merge(entry(3, version: 12, op: .delete), source: .peer, now: 9_000)
        #expect(t.expireTombstones(now: 60_999, ttl: 60_000) == 0)
        #expect(t.expireTombstones(now: 61_000, ttl: 60_000) == 1) // flow 1
        #expect(t.expireTombstones(now: 63_500, ttl: 60_000) == 0) // 2 is live, 3's first tombstone was replaced
        #expect(t[entry(2, version: 11).record.key] != nil && t.liveCount == 1)
        #expect(t.expireTombstones(now: 69_000, ttl: 60_000) == 1) // flow 3's newer tombstone
        #expect(t.count == 1 && t.tombstoneCount == 0)
    }

    @Test func incrementalDigestsEqualDigestsBuiltFromScratch() {
        var rng = SplitMix64(seed: 42)
        var t = ReplicaTable<SyncEntry>()
        for _ in 0..<5000 {
            let n = Int(rng.next() % 800)
            let op: SyncEntry.Operation = rng.next() % 4 == 0 ? .delete : .upsert
            t.merge(entry(n, version: rng.next() % 1000, op: op), source: .peer, now: 0)
            if rng.next() % 50 == 0 { t.remove(Flows.record(n).key) }
        }
        var fresh = ReplicaTable<SyncEntry>()
        for e in t.allEntries() { fresh.merge(e, source: .peer, now: 0) }
        #expect(t.level0 == fresh.level0)
        #expect(t.leaves == fresh.leaves)
        #expect(t.differingBuckets(fresh.digest(level: 0)).isEmpty)
    }

    @Test func digestsPointAtTheLeafThatDiffers() {
        var a = ReplicaTable<SyncEntry>(), b = ReplicaTable<SyncEntry>()
        for n in 0..<300 {
            a.merge(entry(n, version: 1), source: .peer, now: 0)
            b.merge(entry(n, version: 1), source: .peer, now: 0)
        }
        b.merge(entry(77, version: 2), source: .peer, now: 0)
        let leaf = ReplicaTable<SyncEntry>.leaf(of: Flows.record(77).key)
        let buckets = a.differingBuckets(b.digest(level: 0))
        #expect(buckets == [UInt16(ReplicaTable<SyncEntry>.bucket(ofLeaf: leaf))])
        let leaves = a.differingLeaves(b.digest(level: 1, bucket: Int(buckets[0])))
        #expect(leaves == [UInt16(leaf)])
        #expect(b.entries(inLeaves: leaves).contains(entry(77, version: 2)))
    }

    @Test func leafQueriesReturnExactlyTheRecordsInThoseLeaves() {
        var t = ReplicaTable<SyncEntry>()
        for n in 0..<2000 { t.merge(entry(n, version: 1, op: n % 7 == 0 ? .delete : .upsert), source: .peer, now: 0) }
        let all = t.allEntries()
        #expect(all.count == 2000 && t.count == 2000 && Set(t.records(inLeafRange: 0..<ReplicaTable<SyncEntry>.leafCount).map(\.key)).count == 2000)
        let wanted: [UInt16] = Array(Set(all.prefix(40).map { UInt16(ReplicaTable<SyncEntry>.leaf(of: $0.record.key)) })).sorted()
        let expected = all.filter { wanted.contains(UInt16(ReplicaTable<SyncEntry>.leaf(of: $0.record.key))) }
        #expect(Set(t.entries(inLeaves: wanted).map(\.record.key)) == Set(expected.map(\.record.key)))
        #expect(Set(t.keys(inLeaves: Set(wanted.map(Int.init)))) == Set(expected.map(\.record.key)))
        // Leaves out of range (a peer's request is checked by the codec, but not only it calls this).
        #expect(t.entries(inLeaves: [UInt16.max]).isEmpty)
        #expect(t.keys(inLeaves: [-1, 1 << 20]).isEmpty)
        t.reserve(100_000)
        #expect(t.count == 2000 && t.allEntries().count == 2000)
    }
}

@Suite struct DeltaSenderTests {
    @Test func coalescesRepeatedUpdatesOfOneFlowAndFillsBatches() {
        var s = DeltaSender<SyncEntry>(config: .init(maxEntriesPerBatch: 27))
        for n in 0..<60 { s.enqueue(entry(n, version: 1)) }
        for n in 0..<60 { s.enqueue(entry(n, version: 2)) }
        #expect(s.pendingCount == 60)
        let batches = s.flush()
        #expect(batches.map(\.entries.count) == [27, 27, 6])
        #expect(batches.map(\.firstSequence) == [1, 28, 55])
        #expect(batches.allSatisfy { $0.entries.allSatisfy { $0.version == 2 } })
        #expect(s.nextSequence == 61)
    }

    @Test func olderChangeDoesNotReplaceNewerQueuedOne() {
        var s = DeltaSender<SyncEntry>()
        s.enqueue(entry(1, version: 5))
        s.enqueue(entry(1, version: 4))
        #expect(s.flush().first?.entries.first?.version == 5)
    }

    @Test func windowIsTrimmedByTheSlowestAckAndBoundedByCapacity() {
        var s = DeltaSender<SyncEntry>(config: .init(maxEntriesPerBatch: 10, windowCapacity: 100))
        s.addPeer(2)
        s.addPeer(3)
        for n in 0..<50 { s.enqueue(entry(n, version: 1)) }
        _ = s.flush()
        s.onAck(from: 2, 50)
        #expect(s.windowStart == 1)
        s.onAck(from: 3, 20)
        #expect(s.windowStart == 21)
        for n in 50..<250 { s.enqueue(entry(n, version: 1)) }
        _ = s.flush()
        #expect(s.windowCount == 100)
        #expect(s.windowStart == 151)
    }

    @Test func nackResendsExactlyTheMissingRangesAndReportsWhatIsGone() {
        var s = DeltaSender<SyncEntry>(config: .init(maxEntriesPerBatch: 27, windowCapacity: 100))
        s.addPeer(2)
        for n in 0..<150 { s.enqueue(entry(n, version: UInt64(n))) }
        _ = s.flush()
        let (batches, gone) = s.onNack(from: 2, Nack(streamEpoch: 1, cumulative: 0, missing: [10...12, 60...62, 140...150]))
        #expect(gone) // 1...50 fell out of the 100-entry window
        #expect(batches.map(\.firstSequence) == [60, 140])
        #expect(batches.map(\.entries.count) == [3, 11])
        #expect(batches[0].entries.map(\.version) == [59, 60, 61])
        let (again, gone2) = s.onNack(from: 2, Nack(streamEpoch: 1, cumulative: 100, missing: [120...121]))
        #expect(!gone2 && again.count == 1 && again[0].entries.count == 2)
    }
}

@Suite struct DeltaReceiverTests {
    @Test func detectsGapsDuplicatesAndReordering() {
        var r = DeltaReceiver(epoch: 9)
        #expect(r.receive(1, now: 0) == .fresh)
        #expect(r.receive(3, now: 0) == .fresh)
        #expect(r.receive(3, now: 0) == .duplicate)
        #expect(r.receive(1, now: 0) == .duplicate)
        #expect(r.cumulative == 1)
        #expect(r.missingRanges() == [2...2])
        #expect(r.nackIfDue(now: 0) == nil) // reordering gets a moment to settle
        #expect(r.nackIfDue(now: 2) == Nack(streamEpoch: 9, cumulative: 1, missing: [2...2]))
        #expect(r.receive(2, now: 3) == .fresh)
        #expect(r.cumulative == 3 && !r.hasGap)
    }

    @Test func keepaliveRevealsLostTail() {
        var r = DeltaReceiver(epoch: 1)
        _ = r.receive(1, now: 0)
        r.announce(nextSequence: 5, now: 0)
        #expect(r.missingRanges() == [2...4])
    }

    @Test func aGapThatNeverHealsEndsInABulkRequestButProgressResetsTheCount() {
        var r = DeltaReceiver(epoch: 1, config: .init(nackDelay: 0, nackInterval: 10, maxNacks: 3))
        _ = r.receive(5, now: 0)
        var t: UInt64 = 0
        var nacks = 0
        while t < 200 {
            if r.nackIfDue(now: t) != nil { nacks += 1 }
            t += 1
        }
        #expect(nacks == 3 && r.needsBulk)
        r.covered(upTo: 6)
        #expect(!r.needsBulk && r.cumulative == 5 && !r.hasGap)

        var s = DeltaReceiver(epoch: 1, config: .init(nackDelay: 0, nackInterval: 10, maxNacks: 3))
        _ = s.receive(2, now: 0)
        for step in 0..<10 {
            let t = UInt64(step * 10)
            _ = s.nackIfDue(now: t)
            // Each round repairs the oldest hole and a new one opens: steady loss, steady progress.
            _ = s.receive(UInt64(step * 2 + 1), now: t)
            _ = s.receive(UInt64(step * 2 + 4), now: t)
        }
        #expect(!s.needsBulk)
    }

    @Test func batchesFarAheadMeanWeAreLost() {
        var r = DeltaReceiver(epoch: 1, config: .init(maxAhead: 1000))
        #expect(r.receive(5000, now: 0) == .outOfWindow)
        #expect(r.needsBulk)
    }

    @Test func manyHolesAreCappedAtTheNackLimit() {
        var r = DeltaReceiver(epoch: 1)
        for seq in stride(from: UInt64(2), through: 400, by: 2) { _ = r.receive(seq, now: 0) }
        #expect(r.missingRanges().count == SyncWire.maxNackRanges)
    }
}
