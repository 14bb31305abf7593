import Testing
import TandemCore
import TandemMembership
import TandemSyncWire

@Suite struct InputSafetyTests {
    static let hostile: [MemberUpdate] = [
        MemberUpdate(node: 1, incarnation: 10, status: .dead),
        MemberUpdate(node: 2, incarnation: 99, status: .dead),
        MemberUpdate(node: 3, incarnation: 99, status: .left),
    ]

    @Test("messages from unknown senders or from ourselves change nothing")
    func unknownSender() {
        var s = Unit.swim()
        _ = s.onTick(nowNanos: Unit.t0)
        let members = s.members, counters = s.counters
        for sender: UInt32 in [0, 1, 4, .max] {
            #expect(s.onMessage(Unit.probe(Self.hostile), from: sender, nowNanos: Unit.t0 + Unit.ms).isEmpty)
            #expect(s.onMessage(Unit.ack(1, target: sender, Self.hostile), from: sender, nowNanos: Unit.t0).isEmpty)
            let req = SyncMessage.probeRequest(ProbeRequest(probeID: 1, target: 2, gossip: Unit.gossip(Self.hostile)))
            #expect(s.onMessage(req, from: sender, nowNanos: Unit.t0).isEmpty)
        }
        #expect(s.members == members)
        #expect(s.counters == counters)
        #expect(s.incarnation == 10)
    }

    @Test("acks with unknown probe ids, unknown relays and non-gossip messages change nothing")
    func unknownProbeIDs() {
        var s = Unit.swim()
        _ = s.onTick(nowNanos: Unit.t0)
        let members = s.members.map(\.status), counters = s.counters
        let t = Unit.t0 + Unit.ms
        #expect(s.onMessage(Unit.ack(123_456, target: 2), from: 2, nowNanos: t).isEmpty)
        #expect(s.onMessage(Unit.ack(123_456, target: 3, requester: 1), from: 2, nowNanos: t).isEmpty)
        #expect(s.onMessage(Unit.ack(123_456, target: 3, requester: 2), from: 3, nowNanos: t).isEmpty, "no relay open")
        #expect(s.onMessage(Unit.ack(5, target: 9, requester: 9), from: 3, nowNanos: t).isEmpty)
        #expect(s.onMessage(Unit.probe(target: 2), from: 3, nowNanos: t).isEmpty, "a probe for someone else")
        #expect(s.onMessage(.keepalive(Keepalive(nextSequence: 1, inSync: true, entryCount: 0)), from: 2, nowNanos: t).isEmpty)
        let req = { (target: UInt32) in SyncMessage.probeRequest(ProbeRequest(probeID: 1, target: target, gossip: Gossip())) }
        #expect(s.onMessage(req(9), from: 2, nowNanos: t).isEmpty, "ping-req about an unknown node")
        #expect(s.onMessage(req(2), from: 2, nowNanos: t).isEmpty, "ping-req about the asker itself")
        #expect(s.members.map(\.status) == members)
        #expect(s.counters.acksReceived == counters.acksReceived)
        #expect(s.counters.relayedProbes == counters.relayedProbes)
    }

    @Test("updates about nodes outside the cluster are ignored")
    func unknownNodes() {
        var s = Unit.swim()
        let out = s.onMessage(Unit.probe([MemberUpdate(node: 9, incarnation: 5, status: .dead),
                                          MemberUpdate(node: 0, incarnation: 5, status: .suspect),
                                          MemberUpdate(node: .max, incarnation: .max, status: .left)]),
                              from: 2, nowNanos: Unit.t0)
        #expect(out.changes.isEmpty)
        #expect(s.members.map(\.node) == [2, 3])
        #expect(s.status(of: 9) == nil)
        #expect(s.pendingUpdates == 0)
        #expect(out.acks.count == 1, "the probe itself is still answered")
    }

    @Test("odd clocks and settings never trap")
    func oddInputs() {
        var weird = SWIMSettings()
        weird.protocolPeriodNanos = 0
        weird.probeTimeoutNanos = .max
        weird.indirectProbeCount = -3
        weird.maxPiggybackUpdates = 1000
        weird.retransmitMultiplier = 0
        weird.tickNanos = 0
        weird.stallFactor = .max
        var s = SWIM(selfID: 1, peers: [1, 0, 2, 2, 3], incarnation: .max, settings: weird, seed: 0, nowNanos: .max - 5)
        #expect(s.members.map(\.node) == [2, 3])
        #expect(s.settings.maxPiggybackUpdates == SyncCodec.maxGossipUpdates - 1)
        for t in [UInt64.max - 5, .max - 1, .max, 0, .max] { _ = s.onTick(nowNanos: t) }
        _ = s.onMessage(Unit.probe([MemberUpdate(node: 1, incarnation: .max, status: .dead)]), from: 2, nowNanos: .max)
        #expect(s.incarnation == .max)
        var lonely = SWIM(selfID: 1, peers: [], incarnation: 1, seed: 1, nowNanos: 0)
        #expect(lonely.tick(from: 0, to: 1_000 * Unit.ms).isEmpty)
    }
}
