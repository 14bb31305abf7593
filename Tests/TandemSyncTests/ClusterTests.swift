import Testing
import TandemCore
import TandemStatus
import TandemSync
import TandemSyncWire

/// Random local activity at a node: opens, state changes, closes.
private func churn(_ sim: inout SimulatedCluster, node: UInt32, steps: Int, flows: Range<Int>, rng: inout SplitMix64,
                   msPerStep: UInt64 = 1) {
    let states: [ConnectionState] = [.synSent, .synReceived, .established, .finWait, .timeWait]
    for _ in 0..<steps {
        let n = flows.lowerBound + Int(rng.next() % UInt64(flows.count))
        let r = Flows.record(n, state: states[Int(rng.next() % UInt64(states.count))])
        sim.localChange(node, r, deleted: rng.next() % 5 == 0)
        if rng.next() % 3 == 0 { sim.run(ms: msPerStep) }
    }
}

@Suite struct ClusterTests {
    /// The property: random delta streams through a channel that drops, duplicates and
    /// reorders (up to 30 %) end with the receiver's table equal to the sender's.
    @Test(arguments: [(UInt64(1), UInt64(30), UInt64(30), UInt64(20)),
                      (UInt64(2), UInt64(10), UInt64(0), UInt64(5)),
                      (UInt64(3), UInt64(0), UInt64(30), UInt64(30)),
                      (UInt64(4), UInt64(30), UInt64(10), UInt64(0))])
    func lossyChannelConverges(seed: UInt64, drop: UInt64, dup: UInt64, delay: UInt64) {
        var sim = SimulatedCluster(seed: seed)
        sim.addNode(1, peers: [2])
        sim.addNode(2, peers: [1])
        sim.run(ms: 50)
        sim.dropPercent = drop
        sim.duplicatePercent = dup
        sim.maxDelay = delay
        var rng = SplitMix64(seed: seed &* 31)
        churn(&sim, node: 1, steps: 3000, flows: 0..<700, rng: &rng)
        sim.run(ms: 300)
        sim.dropPercent = 0
        sim.duplicatePercent = 0
        sim.run(ms: 2500)
        #expect(sim.liveTable(2) == sim.liveTable(1))
        #expect(sim.datapathView(2) == sim.datapathView(1))
        #expect(sim.nodes[2]?.inSync == true)
        let c = sim.nodes[2]?.counters ?? ReplicationCounters()
        if drop > 0 { #expect(c.nacksSent > 0) }
        if dup > 0 { #expect(c.duplicateEntries > 0) }
    }

    @Test func convergesWhileLossContinues() {
        // Loss never stops: nacks alone must keep up (anti-entropy also runs).
        var sim = SimulatedCluster(seed: 11)
        sim.addNode(1, peers: [2])
        sim.addNode(2, peers: [1])
        sim.run(ms: 50)
        sim.dropPercent = 20
        var rng = SplitMix64(seed: 5)
        churn(&sim, node: 1, steps: 2000, flows: 0..<500, rng: &rng)
        sim.run(ms: 3000)
        #expect(sim.liveTable(2) == sim.liveTable(1))
    }

    @Test func onlyPendingAcksNacksAndTransfersAskForPromptTicks() {
        var sim = SimulatedCluster(seed: 12)
        sim.addNode(1, peers: [2])
        sim.addNode(2, peers: [1])
        sim.run(ms: 2000)
        #expect(sim.nodes[1]?.wantsPromptTick == false && sim.nodes[2]?.wantsPromptTick == false,
                "joined and quiet: keepalives and digests only")
        for n in 0..<50 { sim.localChange(1, Flows.record(n)) }
        sim.deliverDue() // node 2 receives (node 1 flushed at once), before its next tick
        #expect(sim.nodes[2]?.counters.entriesApplied == 50)
        #expect(sim.nodes[2]?.wantsPromptTick == true, "deltas received, an ack is due")
        sim.run(ms: 30)
        #expect(sim.nodes[2]?.wantsPromptTick == false, "acked")
        // A lost datagram leaves a gap: prompt ticks until the nack has repaired it.
        sim.dropPercent = 100
        sim.localChange(1, Flows.record(60))
        sim.dropPercent = 0
        sim.localChange(1, Flows.record(61))
        sim.deliverDue()
        #expect(sim.nodes[2]?.receivers[1]?.hasGap == true)
        #expect(sim.nodes[2]?.wantsPromptTick == true)
        sim.run(ms: 100)
        #expect(sim.nodes[2]?.receivers[1]?.hasGap == false)
        #expect(sim.nodes[2]?.wantsPromptTick == false)
        #expect(sim.liveTable(2) == sim.liveTable(1))
    }

    @Test func entriesLearnedFromAPeerAreNotEchoed() {
        var sim = SimulatedCluster(seed: 3)
        sim.addNode(1, peers: [2])
        sim.addNode(2, peers: [1])
        sim.run(ms: 50)
        for n in 0..<100 { sim.localChange(1, Flows.record(n)) }
        sim.run(ms: 100)
        #expect(sim.nodes[2]?.counters.entriesApplied == 100)
        #expect(sim.nodes[2]?.counters.entriesSent == 0)
        #expect(sim.nodes[2]?.sender.nextSequence == 1)
        #expect(sim.datapaths[2]?.values.allSatisfy { $0.flags.contains(.fromPeer) } == true)
    }

    @Test func aTimedOutPullIsClosedBeforeItsRetry() {
        // Review defect: a pull that timed out emitted nothing, so its connection stayed open
        // beside every retry.
        var sim = SimulatedCluster(seed: 5)
        sim.addNode(1, peers: [2])
        sim.run(ms: 2000)
        for n in 0..<50 { sim.localChange(1, Flows.record(n)) }
        sim.bulkHangs = true
        sim.addNode(2, peers: [1])
        sim.run(ms: 95_000)  // three 30 s transfer timeouts
        #expect(sim.pulls.count >= 3)
        #expect(sim.hangingPulls.count <= 1, "pulls left open: \(sim.hangingPulls.count)")
        #expect(sim.abortedPulls == sim.pulls.count - sim.hangingPulls.count)
        #expect((sim.nodes[2]?.counters.bulkTransfersFailed ?? 0) == UInt64(sim.abortedPulls))
        sim.bulkHangs = false
        sim.run(ms: 31_000)
        #expect(sim.nodes[2]?.inSync == true)
        #expect(sim.liveTable(2) == sim.liveTable(1))
    }

    @Test func joiningNodeIsInSyncOnlyAfterTheFullTable() {
        var sim = SimulatedCluster(seed: 4)
        sim.addNode(1, peers: [2])
        sim.run(ms: 2000) // alone: declares itself in sync after the join timeout
        #expect(sim.nodes[1]?.inSync == true)
        for n in 0..<5000 { sim.localChange(1, Flows.record(n)) }
        sim.bulkBlocked = { _, _ in true }
        sim.addNode(2, peers: [1])
        sim.run(ms: 3000)
        #expect(sim.nodes[2]?.inSync == false) // a peer in sync exists but transfers fail
        #expect((sim.nodes[2]?.counters.bulkTransfersFailed ?? 0) > 0)
        sim.bulkBlocked = { _, _ in false }
        sim.run(ms: 50)
        #expect(sim.nodes[2]?.inSync == true)
        #expect(sim.inSyncEvents[2] == [true])
        #expect(sim.liveTable(2) == sim.liveTable(1))
        #expect(sim.datapaths[2]?.count == 5000)
        // Deltas after the transfer continue from its resume point, without a gap.
        for n in 5000..<5100 { sim.localChange(1, Flows.record(n)) }
        sim.run(ms: 100)
        #expect(sim.liveTable(2) == sim.liveTable(1))
        #expect(sim.nodes[2]?.counters.nacksSent == 0)
    }

    @Test func restartedNodeGetsTheFullTableBack() {
        var sim = SimulatedCluster(seed: 5)
        sim.addNode(1, peers: [2])
        sim.addNode(2, peers: [1])
        sim.run(ms: 2000)
        for n in 0..<1000 { sim.localChange(1, Flows.record(n)) }
        sim.run(ms: 100)
        // Node 2 restarts: new epoch, empty table and datapath.
        sim.nodes[2] = nil
        sim.run(ms: 10)
        sim.addNode(2, peers: [1])
        #expect(sim.nodes[2]?.inSync == false)
        sim.run(ms: 300)
        #expect(sim.nodes[2]?.inSync == true)
        #expect(sim.datapaths[2]?.count == 1000)
        // And node 1 keeps streaming to the new incarnation.
        for n in 1000..<1010 { sim.localChange(1, Flows.record(n)) }
        sim.run(ms: 50)
        #expect(sim.liveTable(2) == sim.liveTable(1))
    }

    @Test func restartedSenderStreamIsFollowedFromItsStart() {
        var sim = SimulatedCluster(seed: 6)
        sim.addNode(1, peers: [2])
        sim.addNode(2, peers: [1])
        sim.run(ms: 2000)
        for n in 0..<50 { sim.localChange(1, Flows.record(n)) }
        sim.run(ms: 50)
        sim.nodes[1] = nil
        sim.addNode(1, peers: [2]) // comes back, learns the table back from 2, then sends again
        sim.run(ms: 300)
        #expect(sim.nodes[1]?.inSync == true)
        #expect(sim.datapaths[1]?.count == 50)
        sim.dropPercent = 50
        for n in 50..<80 { sim.localChange(1, Flows.record(n)) }
        sim.dropPercent = 0
        sim.run(ms: 500)
        #expect(sim.liveTable(2) == sim.liveTable(1))
    }

    /// Three nodes; node 3 gets no deltas at all for a while (its link drops them) and must catch
    /// up through anti-entropy digests and pulls alone.
    @Test func antiEntropyAloneRepairsANodeCutOffFromDeltas() {
        var sim = SimulatedCluster(seed: 7)
        for id in UInt32(1)...3 { sim.addNode(id, peers: [1, 2, 3]) }
        sim.run(ms: 2000)
        sim.blocked = { _, to, m in
            if to == 3, case .deltaBatch = m { return true }
            if to == 3, case .keepalive = m { return true } // no tail hints either
            return false
        }
        var rng = SplitMix64(seed: 99)
        churn(&sim, node: 1, steps: 2000, flows: 0..<600, rng: &rng)
        churn(&sim, node: 2, steps: 500, flows: 1000..<1200, rng: &rng)
        sim.run(ms: 6000)
        #expect(sim.nodes[3]?.counters.entriesReceived == 0) // not one delta reached it
        #expect(sim.liveTable(1) == sim.liveTable(2))
        #expect(sim.liveTable(3) == sim.liveTable(1))
        #expect(sim.datapathView(3) == sim.datapathView(1))
        #expect((sim.nodes[3]?.counters.antiEntropyPulls ?? 0) > 0)
        #expect((sim.nodes[3]?.counters.antiEntropyRepaired ?? 0) > 0)
    }

    @Test func manyDifferingLeavesArePulledAFewAtATimeNeverAsTheWholeTable() {
        var sim = SimulatedCluster(seed: 17)
        for id in UInt32(1)...2 { sim.addNode(id, peers: [1, 2]) { $0.maxPulledLeaves = 128 } }
        sim.run(ms: 2000)
        let joined = sim.pulls.count
        sim.blocked = { _, to, m in
            if to == 2, case .deltaBatch = m { return true }
            if to == 2, case .keepalive = m { return true }
            return false
        }
        // 1000 flows touch far more than 128 of the 16384 leaves: eight rounds or more (one a second).
        for n in 0..<1000 { sim.localChange(1, Flows.record(n)) }
        sim.run(ms: 20_000)
        let converged = sim.liveTable(2) == sim.liveTable(1)
        #expect(converged, "node 2 holds \(sim.liveTable(2).count) of \(sim.liveTable(1).count)")
        let later = sim.pulls.dropFirst(joined)
        #expect(later.count > 1)
        #expect(later.allSatisfy { !$0.request.leaves.isEmpty && $0.request.leaves.count <= 128 })
        #expect(later.allSatisfy { $0.request.leaves == $0.request.leaves.sorted() })
    }

    @Test func digestRoundsAreQuietWhenTablesAgree() {
        var sim = SimulatedCluster(seed: 8)
        sim.addNode(1, peers: [2])
        sim.addNode(2, peers: [1])
        sim.run(ms: 2000)
        for n in 0..<2000 { sim.localChange(1, Flows.record(n)) }
        sim.run(ms: 200)
        let pullsBefore = (sim.nodes[1]?.counters.antiEntropyPulls ?? 0) + (sim.nodes[2]?.counters.antiEntropyPulls ?? 0)
        sim.run(ms: 5000)
        let pullsAfter = (sim.nodes[1]?.counters.antiEntropyPulls ?? 0) + (sim.nodes[2]?.counters.antiEntropyPulls ?? 0)
        #expect(pullsAfter == pullsBefore)
        #expect((sim.nodes[1]?.counters.antiEntropyRounds ?? 0) >= 4)
    }

    @Test func scanRecoversMissedEventsRefreshesLiveFlowsAndReportsVanishedOnes() {
        var sim = SimulatedCluster(seed: 9)
        sim.addNode(1, peers: [2])
        sim.addNode(2, peers: [1])
        sim.run(ms: 2000)
        let a = Flows.record(1, state: .udpEstablished, remaining: 120_000, proto: 17)
        let b = Flows.record(2)
        let missed = Flows.record(3)
        sim.localChange(1, a)
        sim.localChange(1, b)
        sim.run(ms: 10)
        // 70 s later `a` is still busy (full lifetime left), `b` is gone from the datapath without
        // an event (LRU), and `missed` appeared without one (ring buffer overflow).
        sim.now += 70_000
        var live = a
        live.remainingMilliseconds = 119_000
        var core = sim.nodes[1]!
        var actions = core.onLocalScan([(live, false), (missed, false)], now: sim.time)
        actions += core.flush(now: sim.time)
        sim.nodes[1] = core
        sim.perform(actions, at: 1)
        sim.run(ms: 50)
        let c = sim.nodes[1]!.counters
        #expect(c.refreshesSent == 1)
        #expect(c.missedEventsRecovered == 1)
        #expect(sim.datapaths[2]?[a.key]?.remainingMilliseconds == 119_000)
        #expect(sim.datapaths[2]?[b.key] == nil)
        #expect(sim.datapaths[2]?[missed.key] != nil)
        #expect(sim.liveTable(2) == sim.liveTable(1))
    }

    @Test func aScanReadBeforeAFlowsEventCannotDeleteIt() {
        var sim = SimulatedCluster(seed: 11)
        sim.addNode(1, peers: [2])
        sim.addNode(2, peers: [1])
        sim.run(ms: 2000)
        let old = Flows.record(1)
        sim.localChange(1, old)
        sim.run(ms: 10)
        // The scanner copies the table (neither flow in it: `old` was evicted silently), then the
        // loop, busy, takes `fresh`'s event, and only 3 s after the copy runs the scan.
        let readAt = sim.time.monotonicMillis + 5_000
        sim.now += 5_500
        let fresh = Flows.record(2)
        sim.localChange(1, fresh)
        sim.run(ms: 10)
        sim.now += 3_000
        var core = sim.nodes[1]!
        var actions = core.onLocalScan([], now: sim.time, readAtMillis: readAt)
        actions += core.flush(now: sim.time)
        sim.nodes[1] = core
        sim.perform(actions, at: 1)
        sim.run(ms: 50)
        #expect(sim.datapaths[2]?[old.key] == nil, "gone before the copy: deleted")
        #expect(sim.datapaths[2]?[fresh.key] != nil, "newer than the copy: kept")
        #expect(sim.nodes[1]?.table[fresh.key]?.isTombstone == false)
    }

    @Test func aFlowTakenOverByThePeerMovesOwnership() {
        var sim = SimulatedCluster(seed: 10)
        sim.addNode(1, peers: [2])
        sim.addNode(2, peers: [1])
        sim.run(ms: 2000)
        let r = Flows.record(1, state: .established)
        sim.localChange(1, r)
        sim.run(ms: 10)
        // Node 2 now forwards it (after a failover) and sees the FIN.
        var closing = r
        closing.state = .finWait
        closing.flags = [.finOriginal, .fromPeer]
        sim.localChange(2, closing)
        sim.run(ms: 10)
        #expect(sim.nodes[1]?.table[r.key]?.entry.origin == 2)
        #expect(sim.datapaths[1]?[r.key]?.state == .finWait)
        #expect(sim.nodes[2]?.table[r.key]?.entry.record.flags.contains(.fromPeer) == false)
    }
}
