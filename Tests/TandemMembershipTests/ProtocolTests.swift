import Testing
import TandemCore
import TandemMembership
import TandemSyncWire

@Suite struct ProtocolTests {
    @Test("the first tick says hello to every peer; peers start alive, unheard, at incarnation 0")
    func firstTick() throws {
        var s = Unit.swim(1, peers: [2, 3, 4])
        #expect(s.members.allSatisfy { $0.status == .alive && !$0.heard && $0.incarnation == 0 })
        let out = s.onTick(nowNanos: Unit.t0)
        #expect(out.probes.map(\.to) == [2, 3, 4])
        #expect(s.counters.announcementsSent == 3)
        let hello = try #require(out.probes.first)
        _ = s.onMessage(Unit.ack(hello.probe.probeID, target: 2, [MemberUpdate(node: 2, incarnation: 5, status: .alive)]),
                        from: 2, nowNanos: Unit.t0 + Unit.ms)
        #expect(s.member(2) == MemberInfo(node: 2, status: .alive, incarnation: 5, heard: true, lastHeardNanos: Unit.t0 + Unit.ms))
    }

    @Test("probes are answered with our update first and our adverts; the requester is kept")
    func answersProbes() {
        var s = Unit.swim()
        let advert = InstanceAdvert(instance: 7, term: 3, role: .master, priority: 100, flags: [.inSync])
        s.localAdverts = [advert]
        let direct = s.onMessage(Unit.probe(id: 5), from: 2, nowNanos: Unit.t0)
        #expect(direct.acks.count == 1)
        #expect(direct.acks.first?.to == 2)
        #expect(direct.acks.first?.ack == ProbeAck(probeID: 5, target: 1, requester: 0,
                                                   gossip: Gossip(updates: [MemberUpdate(node: 1, incarnation: 10, status: .alive)],
                                                                  adverts: [advert])))
        let forOther = s.onMessage(Unit.probe(id: 6, requester: 3), from: 2, nowNanos: Unit.t0)
        #expect(forOther.acks.first?.to == 2)
        #expect(forOther.acks.first?.ack.requester == 3)
        #expect(forOther.acks.first?.ack.probeID == 6)
    }

    /// Ticks until the first period probe (after the hello) and returns it.
    static func firstProbe(_ s: inout SWIM) -> (probe: Probe, to: UInt32, at: UInt64) {
        _ = s.onTick(nowNanos: Unit.t0)
        var t = Unit.t0
        while t < Unit.t0 + 100 * Unit.ms {
            t += 10 * Unit.ms
            if let p = s.onTick(nowNanos: t).probes.first { return (p.probe, p.to, t) }
        }
        Issue.record("no probe")
        return (Probe(probeID: 0, target: 0, requester: 0, gossip: Gossip()), 0, t)
    }

    @Test("direct timeout -> ping-req to the others; a relayed ack settles the probe, no suspicion")
    func indirectProbe() throws {
        var s = Unit.swim(1, peers: [2, 3, 4])
        let (p, target, at) = Self.firstProbe(&s)
        #expect(s.counters.probesSent == 1)
        #expect(s.tick(from: at + 10 * Unit.ms, to: at + 30 * Unit.ms).sends.isEmpty)
        let reqs = s.onTick(nowNanos: at + 40 * Unit.ms).probeRequests
        #expect(reqs.count == 2)
        #expect(Set(reqs.map(\.to)) == Set([2, 3, 4]).subtracting([target]))
        #expect(reqs.allSatisfy { $0.request.probeID == p.probeID && $0.request.target == target })
        let helper = try #require(reqs.first).to
        let relayed = s.onMessage(Unit.ack(p.probeID, target: target, requester: 1), from: helper, nowNanos: at + 45 * Unit.ms)
        #expect(relayed.changes.isEmpty)
        #expect(s.counters.acksReceived == 1)
        #expect(s.onTick(nowNanos: at + 50 * Unit.ms).changes.isEmpty)
        #expect(s.status(of: target) == .alive)
    }

    @Test("two nodes: no helper, so the direct timeout suspects; 150 ms later dead; then probed every 500 ms")
    func twoNodeTimeline() {
        var s = Unit.swim(1, peers: [2])
        let (_, _, at) = Self.firstProbe(&s)
        #expect(s.tick(from: at + 10 * Unit.ms, to: at + 30 * Unit.ms).changes.isEmpty)
        #expect(s.onTick(nowNanos: at + 40 * Unit.ms).changes == [MemberUpdate(node: 2, incarnation: 0, status: .suspect)])
        #expect(s.tick(from: at + 50 * Unit.ms, to: at + 180 * Unit.ms).changes.isEmpty)
        #expect(s.onTick(nowNanos: at + 190 * Unit.ms).changes == [MemberUpdate(node: 2, incarnation: 0, status: .dead)])
        #expect(s.counters.deathsDeclared == 1)
        let later = s.tick(from: at + 200 * Unit.ms, to: at + 2_190 * Unit.ms)
        #expect(later.probes.count == 4, "a dead member is probed every 500 ms, nothing more")
        #expect(later.probes.allSatisfy { $0.probe.gossip.updates.dropFirst().first?.status == .dead })
    }

    @Test("any message straight from the probed member answers the probe")
    func anyMessageIsEvidence() {
        var s = Unit.swim(1, peers: [2])
        let (_, target, at) = Self.firstProbe(&s)
        _ = s.onMessage(Unit.probe(id: 999), from: target, nowNanos: at + 35 * Unit.ms)
        // Neither the direct timeout nor the period end suspects it; the next period probes afresh.
        // (Ticks must keep coming every 10 ms: a longer gap would read as our own stall.)
        #expect(s.tick(from: at + 10 * Unit.ms, to: at + 40 * Unit.ms).sends.isEmpty)
        let next = s.onTick(nowNanos: at + 50 * Unit.ms)
        #expect(next.changes.isEmpty)
        #expect(next.probes.map(\.to) == [target])
        #expect(s.status(of: target) == .alive)
    }

    @Test("serving a ping-req: probe the target for the requester, relay its ack once")
    func servesProbeRequests() {
        var s = Unit.swim(1, peers: [2, 3])
        let out = s.onMessage(.probeRequest(ProbeRequest(probeID: 42, target: 3, gossip: Gossip())), from: 2, nowNanos: Unit.t0)
        #expect(out.probes.count == 1)
        #expect(out.probes.first?.to == 3)
        #expect(out.probes.first?.probe.requester == 2)
        #expect(out.probes.first?.probe.probeID == 42)
        let back = s.onMessage(Unit.ack(42, target: 3, requester: 2), from: 3, nowNanos: Unit.t0 + Unit.ms)
        #expect(back.acks.count == 1)
        #expect(back.acks.first?.to == 2)
        #expect(back.acks.first.map { ($0.ack.probeID, $0.ack.target, $0.ack.requester) } ?? (0, 0, 0) == (42, 3, 2))
        #expect(s.onMessage(Unit.ack(42, target: 3, requester: 2), from: 3, nowNanos: Unit.t0 + 2 * Unit.ms).acks.isEmpty)
        // Only the target's own ack is relayed.
        _ = s.onMessage(.probeRequest(ProbeRequest(probeID: 43, target: 3, gossip: Gossip())), from: 2, nowNanos: Unit.t0)
        #expect(s.onMessage(Unit.ack(43, target: 3, requester: 2), from: 2, nowNanos: Unit.t0 + Unit.ms).acks.isEmpty)
        #expect(s.counters.relayedProbes == 2)
    }

    @Test("same seed and inputs, same actions: the core is deterministic")
    func deterministic() {
        func run() -> [SWIMAction] {
            var s = Unit.swim(1, peers: [2, 3, 4, 5])
            return s.tick(from: Unit.t0, to: Unit.t0 + 3_000 * Unit.ms)
        }
        let a = run()
        #expect(!a.isEmpty)
        #expect(a == run())
    }
}
