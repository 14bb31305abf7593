import Testing
import TandemCore
import TandemMembership
import TandemSyncWire

/// Starting and returning nodes (the restart issue): a node that cannot send yet must not
/// declare the members it hears dead, and a suspect heard directly is not declared dead.
@Suite struct StartupTests {
    /// HA's settings: dead members probed every 200 ms.
    static var haSettings: SWIMSettings {
        var s = SWIMSettings()
        s.deadProbePeriodNanos = 200_000_000
        return s
    }

    @Test("a restarted node that cannot send for its first 800 ms suspects nobody", arguments: 0..<6)
    func returningNodeThatCannotSendYet(run: Int) {
        var sim = SimCluster(nodes: 2, seed: UInt64(900 + run), settings: Self.haSettings)
        sim.run(ms: 1000)
        sim.kill(2)
        sim.run(ms: 1000)
        #expect(sim.status(of: 2, at: 1) == .dead)
        sim.start(2)
        let back = sim.nowMs
        // Its first packets wait for ARP (a proxy-ARP router answers after up to 800 ms): lost.
        let blockedUntil = back + 300 + UInt64(run) * 100
        sim.drop = { now, e in e.from == 2 && now < blockedUntil }
        sim.run(ms: 3000)
        let seen = sim.changes(observer: 2, node: 1, since: back).filter { $0.status != .alive }
        #expect(seen.isEmpty, "run \(run): node 2 saw node 1 as \(seen.map(\.status))")
        #expect(sim.status(of: 2, at: 1) == .alive)
        #expect((sim.swim(2)?.counters.startupMissesIgnored ?? 0) > 0, "the grace was used")
    }

    @Test("a clean start of two nodes 300 ms apart logs no suspicion")
    func cleanStartHasNoSuspicion() {
        var sim = SimCluster(nodes: 2, seed: 31, settings: Self.haSettings)
        sim.kill(2)
        sim.run(ms: 300)
        sim.start(2)
        sim.run(ms: 2000)
        #expect(sim.changes().filter { $0.status != .alive }.isEmpty, "\(sim.changes())")
    }

    @Test("a node alone still declares its silent peer dead, once the grace is over")
    func aloneTheGraceEnds() {
        var sim = SimCluster(nodes: 2, seed: 32, settings: Self.haSettings)
        sim.kill(2)
        sim.run(ms: 3000)
        let suspected = sim.changes(observer: 1, node: 2, status: .suspect).first
        let dead = sim.changes(observer: 1, node: 2, status: .dead).first
        #expect(suspected.map { $0.atMs >= 2000 } == true, "\(String(describing: suspected))")
        #expect(dead.map { $0.atMs <= 2400 } == true, "\(String(describing: dead))")
    }

    @Test("after the first round trip the grace is off: a peer that dies is declared dead in 300 ms")
    func graceEndsWithTheFirstAnswer() {
        var sim = SimCluster(nodes: 2, seed: 33, settings: Self.haSettings)
        sim.run(ms: 500)  // within the grace, but both have answered each other
        sim.kill(2)
        let killed = sim.nowMs
        sim.run(ms: 1000)
        let dead = sim.changes(observer: 1, node: 2, status: .dead, since: killed).first
        #expect(dead.map { $0.atMs - killed <= 300 } == true, "\(String(describing: dead))")
    }

    @Test("a suspect heard from directly is not declared dead at its deadline; silence then kills it")
    func directEvidenceAvertsADeath() throws {
        var s = Unit.swim(1, peers: [2])
        let (_, target, at) = ProtocolTests.firstProbe(&s)
        // Direct timeout with nobody to ask: suspect.
        _ = s.tick(from: at + 10 * Unit.ms, to: at + 30 * Unit.ms)
        #expect(s.onTick(nowNanos: at + 40 * Unit.ms).changes == [MemberUpdate(node: 2, incarnation: 0, status: .suspect)])
        // The suspect's own probe arrives (it cannot hear us, so it never refutes).
        _ = s.onMessage(Unit.probe(id: 5, target: 1), from: target, nowNanos: at + 100 * Unit.ms)
        let atDeadline = s.tick(from: at + 50 * Unit.ms, to: at + 190 * Unit.ms)
        #expect(atDeadline.changes.isEmpty)
        #expect(s.counters.deathsAverted == 1)
        #expect(s.status(of: 2) == .suspect)
        // Then nothing for a whole suspicion timeout: dead.
        let later = s.tick(from: at + 200 * Unit.ms, to: at + 400 * Unit.ms)
        #expect(later.changes == [MemberUpdate(node: 2, incarnation: 0, status: .dead)])
    }
}
