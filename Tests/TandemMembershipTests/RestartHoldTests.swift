import Testing
import TandemCore
import TandemMembership
import TandemSyncWire

/// Graceful restarts (the restart issue): a node whose daemon restarts announces `restarting`;
/// its peers hold it (no suspicion, no death) for restartHoldNanos, and its next life is alive.
@Suite struct RestartHoldTests {
    static func settings(holdMs: UInt64 = 3000) -> SWIMSettings {
        var s = SWIMSettings()
        s.deadProbePeriodNanos = 200_000_000
        s.restartHoldNanos = holdMs * 1_000_000
        return s
    }

    @Test("a restarting node is held, not suspected, and its next life is alive again", arguments: 0..<4)
    func heldThroughARestart(run: Int) {
        var sim = SimCluster(nodes: 3, seed: UInt64(700 + run), settings: Self.settings())
        sim.run(ms: 1000)
        let t = sim.nowMs
        sim.leave(2, restarting: true, copies: 3)
        #expect(sim.swim(2)?.status(of: 2) == .restarting)
        sim.run(ms: 2)
        sim.kill(2)
        // Down for 1.5 s, well within the 3 s hold.
        sim.run(ms: 1500)
        for o: UInt32 in [1, 3] {
            #expect(sim.status(of: 2, at: o) == .restarting, "run \(run): observer \(o)")
        }
        sim.start(2)
        sim.run(ms: 1000)
        for o: UInt32 in [1, 3] {
            let seen = sim.changes(observer: o, node: 2, since: t).map(\.status)
            #expect(seen == [.restarting, .alive], "run \(run): observer \(o) saw \(seen)")
        }
        #expect(sim.changes(status: .suspect).isEmpty && sim.changes(status: .dead).isEmpty)
        #expect(sim.allAliveEverywhere)
    }

    @Test("a restarting node that does not return within the hold is declared dead")
    func holdExpires() {
        var sim = SimCluster(nodes: 2, seed: 41, settings: Self.settings(holdMs: 2000))
        sim.run(ms: 1000)
        let t = sim.nowMs
        sim.leave(2, restarting: true)
        sim.run(ms: 2)
        sim.kill(2)
        sim.run(ms: 1900)
        #expect(sim.status(of: 2, at: 1) == .restarting)
        sim.run(ms: 200)
        #expect(sim.status(of: 2, at: 1) == .dead)
        let dead = sim.changes(observer: 1, node: 2, status: .dead, since: t).first
        #expect(dead.map { $0.atMs - t >= 2000 && $0.atMs - t <= 2030 } == true, "\(String(describing: dead))")
        #expect(sim.swim(1)?.counters.restartHoldsExpired == 1)
        // And it is still noticed when it comes back.
        sim.start(2)
        sim.run(ms: 1000)
        #expect(sim.status(of: 2, at: 1) == .alive)
    }

    @Test("one lost copy of the announcement does not matter: three go out")
    func copiesSurviveALoss() {
        var sim = SimCluster(nodes: 2, seed: 42, settings: Self.settings())
        sim.run(ms: 1000)
        var dropped = 0
        sim.drop = { _, e in
            guard e.from == 2, dropped < 2 else { return false }
            dropped += 1
            return true
        }
        sim.leave(2, restarting: true, copies: 3)
        sim.run(ms: 2)
        sim.kill(2)
        sim.run(ms: 1000)
        #expect(dropped == 2)
        #expect(sim.status(of: 2, at: 1) == .restarting)
        #expect(sim.changes(status: .suspect).isEmpty)
    }

    @Test("the next life refutes a hold of an incarnation at or above its own")
    func nextLifeWithALowerIncarnation() {
        var sim = SimCluster(nodes: 2, seed: 43, settings: Self.settings())
        sim.run(ms: 1000)
        let old = sim.swim(2)?.incarnation ?? 0
        sim.leave(2, restarting: true)
        sim.run(ms: 2)
        sim.kill(2)
        sim.run(ms: 500)
        // Its clock went back: the new life starts below the incarnation peers hold.
        sim.start(2, incarnation: old - 5)
        sim.run(ms: 1000)
        #expect(sim.status(of: 2, at: 1) == .alive)
        #expect((sim.swim(2)?.incarnation ?? 0) > old)
    }

    @Test("restarting outranks suspect and alive at one incarnation; dead and left outrank it")
    func precedence() {
        var s = Unit.swim(1, peers: [2, 3])
        _ = s.onTick(nowNanos: Unit.t0)
        _ = s.onMessage(Unit.probe([MemberUpdate(node: 2, incarnation: 7, status: .restarting)]), from: 3,
                        nowNanos: Unit.t0 + Unit.ms)
        #expect(s.status(of: 2) == .restarting)
        _ = s.onMessage(Unit.probe([MemberUpdate(node: 2, incarnation: 7, status: .suspect)]), from: 3,
                        nowNanos: Unit.t0 + 2 * Unit.ms)
        #expect(s.status(of: 2) == .restarting)
        _ = s.onMessage(Unit.probe([MemberUpdate(node: 2, incarnation: 7, status: .dead)]), from: 3,
                        nowNanos: Unit.t0 + 3 * Unit.ms)
        #expect(s.status(of: 2) == .dead)
    }
}
