import Testing
import TandemCore
import TandemMembership
import TandemSyncWire

@Suite struct DisseminationTests {
    @Test("a suspicion raised by one node reaches all 5 nodes (and the suspect refutes it)")
    func suspicionReachesEveryone() {
        var sim = SimCluster(nodes: 5, seed: 11)
        sim.run(ms: 1000)
        // Node 1 hears nothing from node 3, nor any relayed ack about it: only node 1 can suspect it.
        sim.drop = { _, e in e.to == 1 && (e.from == 3 || e.message.ackTarget == 3) }
        let start = sim.nowMs
        let took = sim.run(until: { !$0.changes(observer: 1, node: 3, status: .suspect).isEmpty }, limitMs: 3000)
        #expect(took != nil)
        let raisedAt = sim.changes(observer: 1, node: 3, status: .suspect, since: start).first?.atMs ?? 0
        sim.run(ms: 100)
        for o: UInt32 in [2, 4, 5] {
            let heard = sim.changes(observer: o, node: 3, status: .suspect, since: raisedAt).first
            #expect(heard != nil, "node \(o) never learned of the suspicion")
            #expect((heard?.atMs ?? .max) - raisedAt <= 5, "one hop on a 1 ms network")
            #expect(sim.swim(o)?.counters.suspicionsRaised == 0, "node \(o) learned it, did not raise it")
        }
        #expect((sim.swim(1)?.counters.suspicionsRaised ?? 0) >= 1)
        #expect((sim.swim(3)?.counters.refutations ?? 0) >= 1, "the suspect itself heard of it")
        // Node 3's refutations reach node 1 through the others' gossip.
        #expect(sim.changes(observer: 1, node: 3, status: .alive, since: raisedAt).first.map { $0.atMs - raisedAt } ?? 999 < 150)
        #expect(sim.codecFailures == 0)
    }

    @Test("each node piggybacks an update at most its budget of times, then stops (5 nodes)")
    func budgetRespectedInCluster() {
        var sim = SimCluster(nodes: 5, seed: 12)
        sim.run(ms: 2000)
        sim.recordSends = true
        // Tell node 5 it is suspected; its refutation (a new incarnation) is the update we follow.
        let inc = sim.swim(5)?.incarnation ?? 0
        sim.inject(Unit.probe([MemberUpdate(node: 5, incarnation: inc, status: .suspect)], target: 5), from: 1, to: 5)
        let refuted = MemberUpdate(node: 5, incarnation: inc + 1, status: .alive)
        #expect(sim.swim(5)?.incarnation == inc + 1)
        let injectedAt = sim.nowMs
        sim.run(ms: 3000)
        let budget = sim.swim(1)?.retransmitBudget ?? 0
        #expect(budget == 9, "3 * ceil(log2(5 + 1))")
        var total = 0
        for s: UInt32 in 1...4 {
            let carrying = sim.sent.filter { $0.from == s && ($0.message.gossip?.updates.dropFirst().contains(refuted) ?? false) }
            #expect(carrying.count <= budget, "node \(s) sent it \(carrying.count) times")
            total += carrying.count
        }
        #expect(total > 0)
        // After the budgets are spent nobody piggybacks it any more; node 5 still leads with it.
        let late = sim.sent.filter { $0.atMs > injectedAt + 1000 }
        #expect(!late.isEmpty)
        #expect(late.allSatisfy { !($0.message.gossip?.updates.dropFirst().contains(refuted) ?? false) })
        #expect(late.filter { $0.from == 5 }.allSatisfy { $0.message.gossip?.updates.first == refuted })
        #expect(late.allSatisfy { $0.message.gossip?.updates.first?.node == $0.from })
        #expect(sim.running.allSatisfy { sim.swim($0)?.pendingUpdates == 0 })
    }

    @Test("an update is piggybacked exactly budget times; gossip never exceeds maxPiggybackUpdates + 1")
    func budgetAndLimitUnit() throws {
        // 20 members: more pending updates than fit in one message.
        var s = Unit.swim(1, peers: Array(2...20))
        #expect(s.retransmitBudget == 15, "3 * ceil(log2(20 + 1))")
        let news = (2...20).map { MemberUpdate(node: UInt32($0), incarnation: 7, status: .alive) }
        var t = Unit.t0
        var acks: [ProbeAck] = []
        func probeFrom2() {
            t += Unit.ms
            let out = s.onMessage(Unit.probe(id: UInt32(acks.count)), from: 2, nowNanos: t)
            acks += out.acks.map(\.ack)
        }
        acks += s.onMessage(Unit.probe(news), from: 2, nowNanos: t).acks.map(\.ack)
        #expect(s.pendingUpdates == 19, "12 sent once, 7 not yet: all still pending")
        for _ in 0..<40 { probeFrom2() }
        for a in acks {
            #expect(a.gossip.updates.count <= SWIMSettings().maxPiggybackUpdates + 1)
            #expect(a.gossip.updates.first == MemberUpdate(node: 1, incarnation: 10, status: .alive))
        }
        // 19 updates * 15 sends, 12 a message: the first messages are full, then they run dry.
        try #require(acks.count == 41)
        #expect(acks[0].gossip.updates.count == 13)
        // Least-sent first: the 7 left out of the first message lead the second.
        let first = Set(acks[0].gossip.updates.dropFirst())
        let leftOut = Set(news).subtracting(first)
        #expect(leftOut.count == 7)
        #expect(Set(acks[1].gossip.updates.dropFirst().prefix(7)) == leftOut)
        for u in news {
            let sends = acks.filter { $0.gossip.updates.dropFirst().contains(u) }.count
            #expect(sends == 15, "\(u.node) sent \(sends) times")
        }
        #expect(acks.last?.gossip.updates.count == 1)
        #expect(s.pendingUpdates == 0)
    }

    @Test("a message to a member we hold as suspect carries that suspicion, within the limit")
    func recipientLearnsItsOwnStatus() {
        var settings = SWIMSettings()
        settings.maxPiggybackUpdates = 2
        var s = Unit.swim(1, peers: [2, 3, 4, 5], settings: settings)
        let news = [MemberUpdate(node: 3, incarnation: 4, status: .alive), MemberUpdate(node: 4, incarnation: 4, status: .alive),
                    MemberUpdate(node: 2, incarnation: 5, status: .suspect)]
        _ = s.onMessage(Unit.ack(1, target: 5, news), from: 5, nowNanos: Unit.t0)
        let out = s.onMessage(Unit.probe(), from: 2, nowNanos: Unit.t0 + Unit.ms)
        let g = out.acks.first?.ack.gossip.updates ?? []
        #expect(g.count == 3)
        #expect(g.first?.node == 1)
        #expect(g.dropFirst().first == MemberUpdate(node: 2, incarnation: 5, status: .suspect))
    }
}
