import Testing
import TandemCore
import TandemMembership
import TandemSyncWire

@Suite struct RejoinTests {
    @Test("a dead node restarted with a higher incarnation is alive on every node within 300 ms", arguments: [3, 5])
    func restartWithHigherIncarnation(nodes: Int) {
        var slowest: UInt64 = 0
        for run in 0..<6 {
            var sim = SimCluster(nodes: nodes, seed: UInt64(500 + nodes * 10 + run))
            let victim = UInt32(nodes)
            sim.run(ms: 1000)
            let old = sim.swim(victim)?.incarnation ?? 0
            sim.kill(victim)
            sim.run(ms: 1000 + UInt64(run) * 7)
            #expect(sim.allSee(victim, as: .dead))
            sim.start(victim)
            let restartedAt = sim.nowMs
            let new = sim.swim(victim)?.incarnation ?? 0
            #expect(new > old)
            let took = sim.run(until: { $0.allAliveEverywhere }, limitMs: 1000)
            #expect(took != nil && took! <= 300, "run \(run): took \(took.map(String.init) ?? "> 1000") ms")
            slowest = max(slowest, took ?? .max)
            for o in sim.running where o != victim {
                let back = sim.changes(observer: o, node: victim, status: .alive, since: restartedAt).first
                #expect(back?.incarnation == new)
            }
            sim.run(ms: 2000)
            #expect(sim.changes(since: restartedAt).allSatisfy { $0.status == .alive })
            #expect(sim.codecFailures == 0)
        }
        print("rejoin, \(nodes) nodes, 6 runs: alive everywhere after at most \(slowest) ms")
    }

    @Test("a node restarted with a lower incarnation is told it is dead and comes back by refuting")
    func restartWithLowerIncarnation() {
        var sim = SimCluster(nodes: 3, seed: 77)
        sim.run(ms: 1000)
        let old = sim.swim(3)?.incarnation ?? 0
        sim.kill(3)
        sim.run(ms: 1000)
        #expect(sim.allSee(3, as: .dead))
        sim.start(3, incarnation: 1)
        let took = sim.run(until: { $0.allAliveEverywhere }, limitMs: 1000)
        #expect(took != nil && took! <= 300)
        #expect((sim.swim(3)?.incarnation ?? 0) > old)
        #expect((sim.swim(3)?.counters.refutations ?? 0) >= 1)
    }

    @Test("partition {A} | {B, C} for 2 s, then heal: all alive everywhere within 1 s", arguments: 0..<5)
    func partitionHeals(run: Int) {
        var sim = SimCluster(nodes: 3, seed: UInt64(900 + run))
        sim.run(ms: 1000 + UInt64(run) * 13)
        sim.partition([1], [2, 3])
        sim.run(ms: 2000)
        #expect(sim.status(of: 2, at: 1) == .dead)
        #expect(sim.status(of: 3, at: 1) == .dead)
        #expect(sim.status(of: 1, at: 2) == .dead)
        #expect(sim.status(of: 1, at: 3) == .dead)
        #expect(sim.status(of: 3, at: 2) == .alive)
        #expect(sim.status(of: 2, at: 3) == .alive)
        sim.partition([1], [2, 3], cut: false)
        let healedAt = sim.nowMs
        let took = sim.run(until: { $0.allAliveEverywhere }, limitMs: 3000)
        #expect(took != nil && took! <= 1000, "took \(took.map(String.init) ?? "> 3000") ms")
        print("partition heal, run \(run): all alive everywhere \(took.map(String.init) ?? "-") ms after healing")
        sim.run(ms: 2000)
        #expect(sim.allAliveEverywhere)
        #expect(sim.changes(status: .dead, since: healedAt + (took ?? 0)).isEmpty)
        #expect(sim.codecFailures == 0)
        #expect(sim.maxUpdatesInMessage <= SWIMSettings().maxPiggybackUpdates + 1)
    }
}
