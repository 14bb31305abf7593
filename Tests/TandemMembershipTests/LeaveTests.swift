import Testing
import TandemCore
import TandemMembership
import TandemSyncWire

@Suite struct LeaveTests {
    @Test("a leaving node is seen as left by everyone, never suspect or dead")
    func leaveIsNotDeath() {
        var sim = SimCluster(nodes: 3, seed: 21)
        sim.run(ms: 1000)
        let leftAt = sim.nowMs
        sim.leave(2)
        #expect(sim.swim(2)?.status(of: 2) == .left)
        sim.run(ms: 5)
        sim.kill(2)  // the process exits after announcing
        sim.run(ms: 3000)
        for o: UInt32 in [1, 3] {
            #expect(sim.status(of: 2, at: o) == .left)
            #expect(sim.changes(observer: o, node: 2, since: leftAt).map(\.status) == [.left])
        }
        #expect(sim.changes(status: .dead).isEmpty)
        #expect(sim.allAliveEverywhere)
    }

    @Test("a lost leave announcement still ends as left (gossip; left outranks dead at one incarnation)")
    func lostAnnouncement() {
        var sim = SimCluster(nodes: 3, seed: 22)
        sim.run(ms: 1000)
        sim.drop = { _, e in e.from == 2 && e.to == 3 }
        sim.leave(2)
        sim.run(ms: 5)
        sim.kill(2)
        sim.run(ms: 3000)
        #expect(sim.status(of: 2, at: 1) == .left)
        #expect(sim.status(of: 2, at: 3) == .left)
    }

    @Test("after leave() a node stops probing but still answers probes with its left update")
    func quietAfterLeave() {
        var s = Unit.swim()
        _ = s.onTick(nowNanos: Unit.t0)
        let out = s.leave()
        #expect(Set(out.probes.map(\.to)) == [2, 3])
        #expect(out.probes.allSatisfy { $0.probe.gossip.updates.first == MemberUpdate(node: 1, incarnation: 10, status: .left) })
        #expect(s.leave().isEmpty)
        #expect(s.tick(from: Unit.t0 + 10 * Unit.ms, to: Unit.t0 + 2_000 * Unit.ms).isEmpty)
        let answer = s.onMessage(Unit.probe([MemberUpdate(node: 1, incarnation: 10, status: .suspect)]), from: 3,
                                 nowNanos: Unit.t0 + 2_001 * Unit.ms)
        #expect(answer.acks.count == 1)
        #expect(answer.acks.first?.ack.gossip.updates.first?.status == .left)
        #expect(s.incarnation == 10, "a node that left does not refute")
    }
}
