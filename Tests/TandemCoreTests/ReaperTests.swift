import Testing
@testable import TandemCore

@Suite struct ReaperTests {
    let client = FlowTuple(source: IPv4Address(10, 0, 20, 10), destination: IPv4Address(10, 0, 10, 143), sourcePort: 4000, destinationPort: 80, proto: 17)
    let reply = FlowTuple(source: IPv4Address(10, 0, 10, 21), destination: IPv4Address(10, 0, 10, 143), sourcePort: 80, destinationPort: 4000, proto: 17)

    func entry(_ dir: FlowDirection, idle: Double, state: ConnectionState = .udpEstablished) -> ConnectionEntry {
        let (k, p) = dir == .original ? (client, reply) : (reply, client)
        return ConnectionEntry(key: k, translated: p.reversed, peerKey: p, direction: dir, state: state, flags: [],
                               natMode: .fullnat, serviceSlot: 0, endpointIndex: 0, version: 1, packets: 1, bytes: 1,
                               ageSeconds: idle, idleSeconds: idle)
    }

    @Test func expiresBothHalvesAfterTimeout() {
        var t = Timeouts()
        t.udpEstablished = 5
        let (delete, events) = ConnectionReaper(timeouts: t).expired(in: [entry(.original, idle: 6), entry(.reply, idle: 7)])
        #expect(Set(delete) == [client, reply])
        #expect(events.map(\.kind) == [.expired])
    }

    @Test func recentReplyKeepsConnectionAlive() {
        var t = Timeouts()
        t.udpEstablished = 5
        let (delete, events) = ConnectionReaper(timeouts: t).expired(in: [entry(.original, idle: 60), entry(.reply, idle: 1)])
        #expect(delete.isEmpty)
        #expect(events.isEmpty)
    }

    @Test func staleReplyHalfOfAReusedPortExpiresOnItsOwn() {
        var t = Timeouts()
        t.timeWait = 10
        let stale = ConnectionEntry(key: reply, translated: client.reversed, peerKey: client, direction: .reply, state: .timeWait,
                                    flags: [], natMode: .fullnat, serviceSlot: 0, endpointIndex: 0, version: 1, packets: 1,
                                    bytes: 1, ageSeconds: 20, idleSeconds: 11)
        let newReply = FlowTuple(source: reply.source, destination: reply.destination, sourcePort: 80, destinationPort: 40123, proto: 17)
        var newOrig = entry(.original, idle: 0)
        newOrig.peerKey = newReply
        let (delete, events) = ConnectionReaper(timeouts: t).expired(in: [newOrig, stale])
        #expect(delete == [reply])
        #expect(events.isEmpty)
        var fresh = stale
        fresh.idleSeconds = 1
        #expect(ConnectionReaper(timeouts: t).expired(in: [newOrig, fresh]).delete.isEmpty)
    }

    @Test func orphanReplyHalfIsRemovedOnlyWhenNotBeingCreated() {
        let t = Timeouts()
        #expect(ConnectionReaper(timeouts: t).expired(in: [entry(.reply, idle: 0.1)]).delete.isEmpty)
        #expect(ConnectionReaper(timeouts: t).expired(in: [entry(.reply, idle: 3)]).delete == [reply])
    }
}

@Suite struct ScanScheduleTests {
    @Test func smallTablesScanEveryTwoSeconds() {
        #expect(ScanSchedule(tableSize: 262_144, timeouts: Timeouts()).passInterval == 2)
    }

    @Test func bigTablesSpaceTheirPassesByTheirBucketWalk() {
        // 3M entries: 4M buckets, about 5.2 s of walk budget; the default shortest timeout (10 s)
        // caps the interval at 5 s.
        #expect(ScanSchedule(tableSize: 3_000_000, timeouts: Timeouts()).passInterval == 5)
        var longer = Timeouts()
        longer.timeWait = 60
        longer.closed = 60
        let l = ScanSchedule(tableSize: 3_000_000, timeouts: longer)
        #expect(abs(l.passInterval - 4_194_304 * ScanSchedule.secondsPerBucket) < 1e-9)
    }

    @Test func shortTimeoutsAndAConfiguredMinimumWin() {
        var short = Timeouts()
        short.udpNew = 4
        #expect(ScanSchedule(tableSize: 3_000_000, timeouts: short).passInterval == 2)
        #expect(ScanSchedule(tableSize: 1024, timeouts: Timeouts(), minimumInterval: 0.5).passInterval == 0.5)
    }

    /// Runs the planner over cheap passes of `cost` seconds for `seconds`; returns the passes' start times.
    func run(_ p: inout ScanPlanner, from start: Double, seconds: Double, cost: Double,
             lost: (Double) -> UInt64 = { _ in 0 }) -> [(at: Double, pass: ScanPlanner.Pass)] {
        var t = start + p.schedule.passInterval
        var out: [(at: Double, pass: ScanPlanner.Pass)] = []
        while t < start + seconds {
            let pass = p.nextPass(now: t, eventsLost: lost(t))
            out.append((t, pass))
            t += cost + p.pause(after: pass, took: cost)
        }
        return out
    }

    @Test func cheapPassesReplicateEveryTenSecondsAndCheckOrphansEveryThirty() {
        var p = ScanPlanner(schedule: ScanSchedule(tableSize: 262_144, timeouts: Timeouts()), now: 0, eventsLost: 0)
        let passes = run(&p, from: 0, seconds: 61, cost: 0)
        #expect(passes.count == 30, "a pass every 2 s")
        #expect(passes.filter(\.pass.replicate).map(\.at) == [10, 20, 30, 40, 50, 60])
        #expect(passes.filter(\.pass.checkOrphans).map(\.at) == [30, 60])
    }

    @Test func costlyPassesAreSpacedToTheCPUBudget() {
        // A million flows: a reap pass of 0.4 s waits 20 s; a replication pass of 0.9 s makes the
        // next one wait 90 s (its loop share counted), not 10.
        var p = ScanPlanner(schedule: ScanSchedule(tableSize: 3_000_000, timeouts: Timeouts()), now: 0, eventsLost: 0)
        let first = p.nextPass(now: 10, eventsLost: 0)
        #expect(first.replicate)
        #expect(abs(p.pause(after: first, took: 0.9) - 45) < 1e-9)
        let second = p.nextPass(now: 56, eventsLost: 0)
        #expect(!second.replicate)
        #expect(abs(p.pause(after: second, took: 0.4) - 20) < 1e-9)
        #expect(!p.nextPass(now: 99, eventsLost: 0).replicate)
        #expect(p.nextPass(now: 100.5, eventsLost: 0).replicate)
        // Busy CPU time over 10 minutes of such passes stays within the budget (plus the loop's share).
        var q = ScanPlanner(schedule: ScanSchedule(tableSize: 3_000_000, timeouts: Timeouts()), now: 0, eventsLost: 0)
        let passes = run(&q, from: 0, seconds: 600, cost: 0.9)
        #expect(Double(passes.count) * 0.9 / 600 <= ScanSchedule.cpuBudget + 1e-9)
    }

    @Test func lostEventsCallForAReplicationPassAtOnce() {
        var p = ScanPlanner(schedule: ScanSchedule(tableSize: 262_144, timeouts: Timeouts()), now: 0, eventsLost: 7)
        #expect(!p.nextPass(now: 2, eventsLost: 7).replicate, "losses before the scanner started were already counted")
        #expect(p.nextPass(now: 4, eventsLost: 9).replicate)
        #expect(!p.nextPass(now: 6, eventsLost: 9).replicate, "only new losses count")
    }
}

@Suite struct ServiceIdleTimeoutTests {
    func entry(_ port: UInt16, _ dir: FlowDirection, state: ConnectionState, slot: UInt32, idle: Double) -> ConnectionEntry {
        let k = FlowTuple(source: IPv4Address(10, 0, 20, 10), destination: IPv4Address(10, 0, 10, 143), sourcePort: port,
                          destinationPort: 80, proto: 6)
        let x = FlowTuple(source: IPv4Address(10, 0, 10, 143), destination: IPv4Address(10, 0, 10, 21), sourcePort: port,
                          destinationPort: 80, proto: 6)
        return ConnectionEntry(key: dir == .original ? k : x.reversed, translated: dir == .original ? x : k.reversed,
                               peerKey: dir == .original ? x.reversed : k, direction: dir, state: state, flags: [],
                               natMode: .fullnat, serviceSlot: slot, endpointIndex: 0, version: 1, packets: 1, bytes: 1,
                               ageSeconds: idle, idleSeconds: idle)
    }

    @Test func serviceTimeoutReplacesOnlyTheIdleStates() {
        var t = Timeouts()
        t.perService = [3: 5]
        #expect(t.seconds(for: .established, serviceSlot: 3) == 5)
        #expect(t.seconds(for: .udpNew, serviceSlot: 3) == 5)
        #expect(t.seconds(for: .udpEstablished, serviceSlot: 3) == 5)
        #expect(t.seconds(for: .synSent, serviceSlot: 3) == 60, "handshake and teardown keep the node's")
        #expect(t.seconds(for: .timeWait, serviceSlot: 3) == 10)
        #expect(t.seconds(for: .established, serviceSlot: 4) == 21_600, "other services keep the node's")
        #expect(t.shortest == 5)
    }

    @Test func reaperAndExpiryUseTheServiceTimeout() {
        var t = Timeouts()
        t.perService = [1: 5]
        let short = [entry(1, .original, state: .established, slot: 1, idle: 6), entry(1, .reply, state: .established, slot: 1, idle: 6)]
        let other = [entry(2, .original, state: .established, slot: 2, idle: 6), entry(2, .reply, state: .established, slot: 2, idle: 6)]
        let r = ConnectionReaper(timeouts: t).expired(in: short + other)
        #expect(r.events.map(\.key) == [short[0].key])
        #expect(Set(r.delete) == [short[0].key, short[1].key])
        let joined = Connection.join(short + other)
        #expect(joined.map { $0.isExpired(timeouts: t) } == [true, false])
        #expect(joined.map { $0.remainingMilliseconds(timeouts: t) } == [0, 21_594_000])
        var ev = ConnectionEvent(kind: .refreshed, key: short[0].key, translated: short[0].translated, state: .established,
                                 natMode: .fullnat, serviceSlot: 1, version: 1)
        #expect(ev.remainingMilliseconds(timeouts: t) == 5000)
        ev.serviceSlot = 2
        #expect(ev.remainingMilliseconds(timeouts: t) == 21_600_000)
    }
}
