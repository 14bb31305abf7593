import Testing
import TandemCore
import TandemMembership
import TandemSyncWire

@Suite struct FalsePositiveTests {
    @Test("10 simulated minutes of 1-30 ms delays and 5 % loss: suspicions, but no death")
    func jitterAndLossForTenMinutes() {
        var sim = SimCluster(nodes: 3, seed: 42)
        sim.validateCodec = false  // time: the codec is checked in every other scenario
        sim.defaultLink = .init(latencyMs: 1, jitterMs: 29, lossPercent: 5)
        sim.run(ms: 600_000)
        let deaths = sim.changes(status: .dead)
        print("10 min, 3 nodes, 1-30 ms, 5 % loss: \(sim.totalCounters(\.suspicionsRaised)) suspicions, "
              + "\(sim.totalCounters(\.refutations)) refutations, \(deaths.count) deaths, \(sim.messagesSent) messages")
        #expect(deaths.isEmpty)
        #expect(sim.totalCounters(\.suspicionsRaised) > 100, "the network must be hard enough to raise suspicions")
        #expect(sim.allAliveEverywhere)
        #expect(sim.maxUpdatesInMessage <= SWIMSettings().maxPiggybackUpdates + 1)
    }

    /// Node 1 suspects node 2 (its traffic to 1 is dropped) and freezes for 200 ms right then,
    /// while 2's refutation waits in its socket. Returns whether node 1 declared anyone dead.
    static func stallDuringSuspicion(settings: SWIMSettings) -> (declaredDead: Bool, stalls: UInt64) {
        var sim = SimCluster(nodes: 3, seed: 9, settings: settings)
        sim.run(ms: 1000)
        sim.drop = { _, e in e.to == 1 && (e.from == 2 || e.message.ackTarget == 2) }
        let raised = sim.run(until: { !$0.changes(observer: 1, node: 2, status: .suspect).isEmpty }, limitMs: 2000)
        #expect(raised != nil)
        sim.drop = { _, _ in false }
        sim.stall(1, forMs: 200)
        sim.run(ms: 1000)
        #expect(sim.codecFailures == 0)
        return (!sim.changes(observer: 1, status: .dead).isEmpty, sim.swim(1)?.counters.stallsDetected ?? 0)
    }

    @Test("a node stalled for 200 ms in the middle of a suspicion does not count its own stall against the suspect")
    func ownStallIsNotEvidence() {
        let r = Self.stallDuringSuspicion(settings: SWIMSettings())
        #expect(!r.declaredDead)
        #expect(r.stalls == 1)
        // Control: with stall detection off, the very same run declares node 2 dead on waking.
        var off = SWIMSettings()
        off.stallFactor = 1_000_000
        let control = Self.stallDuringSuspicion(settings: off)
        #expect(control.declaredDead)
        #expect(control.stalls == 0)
    }

    @Test("random 200 ms stalls of a node in a healthy cluster: it suspects nobody", arguments: 0..<8)
    func randomStalls(run: Int) {
        var sim = SimCluster(nodes: 3, seed: UInt64(100 + run))
        var r = SplitMix64(seed: UInt64(run))
        sim.run(ms: 1000 + r.next() % 50)
        let stalledAt = sim.nowMs
        sim.stall(1, forMs: 200)
        sim.run(ms: 1500)
        #expect(sim.changes(observer: 1, since: stalledAt).allSatisfy { $0.status == .alive })
        #expect(sim.swim(1)?.counters.suspicionsRaised == 0)
        #expect(sim.swim(1)?.counters.stallsDetected == 1)
        // Its peers may have suspected it meanwhile; it has refuted by now.
        #expect(sim.allAliveEverywhere)
    }
}
