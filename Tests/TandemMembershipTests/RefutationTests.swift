import Testing
import TandemCore
import TandemMembership
import TandemSyncWire

@Suite struct RefutationTests {
    @Test("slow acks from C raise suspicions that C refutes with a higher incarnation, never a death")
    func slowAcksAreRefuted() {
        var sim = SimCluster(nodes: 3, seed: 4)
        sim.run(ms: 1000)
        let before = sim.swim(3)?.incarnation ?? 0
        let start = sim.nowMs
        // Beyond the probe timeout (40 ms) and the period (50 ms), well within the suspicion (150 ms).
        sim.extraDelay = { _, e in
            if e.from == 3, case .probeAck = e.message { return 70 }
            return 0
        }
        sim.run(ms: 5000)
        let suspicions = sim.changes(node: 3, status: .suspect, since: start)
        #expect(!suspicions.isEmpty, "late acks must raise a suspicion")
        #expect((sim.swim(3)?.counters.refutations ?? 0) > 0)
        #expect((sim.swim(3)?.incarnation ?? 0) > before)
        #expect(sim.changes(node: 3, status: .dead).isEmpty)
        #expect(sim.totalCounters(\.falseSuspicionsCleared) > 0)
        // Each suspicion was cleared by an alive update at a higher incarnation than it named.
        for s in suspicions {
            let cleared = sim.changes(observer: s.observer, node: 3, status: .alive, since: s.atMs).first
            if let cleared {
                #expect(cleared.incarnation > s.incarnation)
                #expect(cleared.atMs - s.atMs < 150)
            }
        }
        sim.extraDelay = { _, _ in 0 }
        sim.run(ms: 500)
        #expect(sim.allAliveEverywhere)
    }

    @Test("SWIM precedence: higher incarnation wins; at equal incarnation left > dead > suspect > alive")
    func precedence() {
        var s = Unit.swim()
        let t = Unit.t0
        func from2(_ u: MemberUpdate) -> [SWIMAction] {
            s.onMessage(Unit.ack(1, target: 2, [u]), from: 2, nowNanos: t)
        }
        #expect(from2(MemberUpdate(node: 3, incarnation: 4, status: .alive)).changes.isEmpty)
        #expect(s.member(3)?.incarnation == 4)
        #expect(s.member(3)?.heard == false, "third-party gossip is not hearing from it")
        #expect(from2(MemberUpdate(node: 3, incarnation: 3, status: .dead)).changes.isEmpty, "stale")
        #expect(from2(MemberUpdate(node: 3, incarnation: 4, status: .suspect)).changes.map(\.status) == [.suspect])
        #expect(from2(MemberUpdate(node: 3, incarnation: 4, status: .alive)).changes.isEmpty)
        #expect(s.status(of: 3) == .suspect)
        #expect(from2(MemberUpdate(node: 3, incarnation: 5, status: .alive)).changes.map(\.status) == [.alive])
        #expect(s.counters.falseSuspicionsCleared == 1)
        #expect(from2(MemberUpdate(node: 3, incarnation: 5, status: .dead)).changes.map(\.status) == [.dead])
        #expect(from2(MemberUpdate(node: 3, incarnation: 5, status: .suspect)).changes.isEmpty)
        #expect(from2(MemberUpdate(node: 3, incarnation: 5, status: .alive)).changes.isEmpty)
        #expect(from2(MemberUpdate(node: 3, incarnation: 5, status: .left)).changes.map(\.status) == [.left])
        #expect(from2(MemberUpdate(node: 3, incarnation: 5, status: .dead)).changes.isEmpty, "left is final")
        #expect(s.status(of: 3) == .left)
        #expect(from2(MemberUpdate(node: 3, incarnation: 6, status: .alive)).changes.map(\.status) == [.alive])
    }

    @Test("a suspicion or death about us at our incarnation (or later) is refuted; older claims are not")
    func selfRefutation() {
        var s = Unit.swim(incarnation: 10)
        _ = s.onTick(nowNanos: Unit.t0)
        var a = s.onMessage(Unit.probe([MemberUpdate(node: 1, incarnation: 9, status: .dead)]), from: 2,
                            nowNanos: Unit.t0 + Unit.ms)
        #expect(s.incarnation == 10)
        #expect(s.counters.refutations == 0)
        #expect(a.probes.isEmpty)
        a = s.onMessage(Unit.probe([MemberUpdate(node: 1, incarnation: 10, status: .suspect)]), from: 2,
                        nowNanos: Unit.t0 + 2 * Unit.ms)
        #expect(s.incarnation == 11)
        #expect(s.counters.refutations == 1)
        // The ack already denies it, and every live member is told at once.
        #expect(a.acks.first?.ack.gossip.updates.first == MemberUpdate(node: 1, incarnation: 11, status: .alive))
        #expect(Set(a.probes.map(\.to)) == [2, 3])
        for p in a.probes { #expect(p.probe.gossip.updates.first == MemberUpdate(node: 1, incarnation: 11, status: .alive)) }
        // A death claimed at a later incarnation (a previous life) is also denied.
        _ = s.onMessage(Unit.probe([MemberUpdate(node: 1, incarnation: 40, status: .dead)]), from: 3,
                        nowNanos: Unit.t0 + 3 * Unit.ms)
        #expect(s.incarnation == 41)
        // Top of the range: no trap, no wrap.
        _ = s.onMessage(Unit.probe([MemberUpdate(node: 1, incarnation: .max, status: .dead)]), from: 3,
                        nowNanos: Unit.t0 + 4 * Unit.ms)
        #expect(s.incarnation == 41)
    }

    @Test("a dead member whose own message does not carry a higher incarnation stays dead, and is told")
    func deadMemberNeedsHigherIncarnation() {
        var s = Unit.swim()
        _ = s.onMessage(Unit.ack(1, target: 2, [MemberUpdate(node: 3, incarnation: 8, status: .dead)]), from: 2,
                        nowNanos: Unit.t0)
        #expect(s.status(of: 3) == .dead)
        // Direct message from 3, its own update at the dead incarnation: not proof of a return
        // (could be a delayed message from before its death); our ack tells it it is dead at 8.
        let a = s.onMessage(Unit.probe([MemberUpdate(node: 3, incarnation: 8, status: .alive)]), from: 3,
                            nowNanos: Unit.t0 + Unit.ms)
        #expect(s.status(of: 3) == .dead)
        #expect(a.changes.isEmpty)
        #expect(s.member(3)?.heard == true)
        #expect(a.acks.first?.to == 3)
        #expect(a.acks.first?.ack.gossip.updates.dropFirst().first == MemberUpdate(node: 3, incarnation: 8, status: .dead))
        // Its refutation brings it back.
        let b = s.onMessage(Unit.probe([MemberUpdate(node: 3, incarnation: 9, status: .alive)]), from: 3,
                            nowNanos: Unit.t0 + 2 * Unit.ms)
        #expect(b.changes.map(\.status) == [.alive])
        #expect(s.status(of: 3) == .alive)
    }
}
