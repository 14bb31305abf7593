import Testing
import TandemCore
import TandemMembership
import TandemSyncWire

@Suite struct DetectionTests {
    /// Kills one node at a random phase and returns when each survivor declared it dead (ms after
    /// the kill; nil: never, within a second), plus any non-alive verdict seen before the kill.
    static func detection(nodes n: Int, seed: UInt64) -> (delays: [UInt64?], falseAlarms: Int, maxUpdates: Int) {
        var sim = SimCluster(nodes: n, seed: seed)
        var r = SplitMix64(seed: seed &* 31)
        sim.run(ms: 1000 + r.next() % 100)
        let falseAlarms = sim.changes.filter { $0.status != .alive }.count
        let victim = sim.ids[Int(r.next() % UInt64(n))]
        sim.kill(victim)
        let killedAt = sim.nowMs
        sim.run(ms: 1000)
        let delays = sim.running.map { o in
            sim.changes(observer: o, node: victim, status: .dead, since: killedAt).first.map { $0.atMs - killedAt }
        }
        return (delays, falseAlarms, sim.maxUpdatesInMessage)
    }

    @Test("every survivor declares a killed node dead within 300 ms (24 random phases)", arguments: [2, 3, 5])
    func deadDeclaredWithin300ms(nodes: Int) {
        let settings = SWIMSettings()
        var slowest: UInt64 = 0
        var fastest: UInt64 = .max
        for run in 0..<24 {
            let (delays, falseAlarms, maxUpdates) = Self.detection(nodes: nodes, seed: UInt64(nodes * 1000 + run))
            #expect(falseAlarms == 0, "run \(run): a suspicion on a clean network before the kill")
            #expect(maxUpdates <= settings.maxPiggybackUpdates + 1)
            #expect(delays.count == nodes - 1)
            for d in delays {
                guard let d else {
                    Issue.record("run \(run): a survivor never declared the killed node dead")
                    continue
                }
                slowest = max(slowest, d)
                fastest = min(fastest, d)
            }
        }
        print("detection, \(nodes) nodes, 24 runs: fastest \(fastest) ms, slowest \(slowest) ms")
        #expect(slowest <= 300)
        // Never before a direct probe could have timed out and a suspicion run its full course.
        #expect(fastest >= settings.probeTimeoutNanos / 1_000_000)
        #expect(fastest >= settings.suspicionTimeoutNanos / 1_000_000)
    }

    @Test("a cut link A-C is bridged by indirect probes through B for 60 s")
    func indirectProbesBridgeACutLink() {
        var sim = SimCluster(nodes: 3, seed: 2)
        sim.partition([1], [3])
        sim.run(ms: 60_000)
        // Not even a suspicion: B's relayed acks arrive within the period every time.
        #expect(sim.changes.filter { $0.status != .alive }.isEmpty)
        #expect(sim.allAliveEverywhere)
        for id: UInt32 in [1, 3] {
            let c = sim.swim(id)?.counters ?? SWIMCounters()
            #expect(c.indirectProbes > 100, "node \(id) must have probed the other through B")
            #expect(c.suspicionsRaised == 0)
        }
        #expect((sim.swim(2)?.counters.relayedProbes ?? 0) > 200)
        #expect(sim.maxUpdatesInMessage <= SWIMSettings().maxPiggybackUpdates + 1)
    }

    @Test("control: the same cut with B refusing ping-reqs makes A and C suspect each other")
    func cutLinkWithoutRelaysRaisesSuspicions() {
        var sim = SimCluster(nodes: 3, seed: 2)
        sim.partition([1], [3])
        sim.drop = { _, e in
            if case .probeRequest = e.message { return true }
            return false
        }
        sim.run(ms: 10_000)
        #expect((sim.swim(1)?.counters.suspicionsRaised ?? 0) > 10)
        #expect((sim.swim(3)?.counters.suspicionsRaised ?? 0) > 10)
        #expect(!sim.changes(observer: 1, node: 3, status: .suspect).isEmpty)
    }
}
