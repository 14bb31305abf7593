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
    @Test func smallTablesScanEveryTwoSecondsAndReplicateEveryTen() {
        let s = ScanSchedule(tableSize: 262_144, timeouts: Timeouts())
        #expect(s.passInterval == 2)
        #expect(s.replicationEvery == 5)
        #expect(s.orphansEvery == 15)
    }

    @Test func bigTablesSpaceTheirPassesByTheirBucketWalk() {
        // 3M entries: 4M buckets, about 5.2 s of walk budget; the default shortest timeout (10 s)
        // caps the interval at 5 s.
        let s = ScanSchedule(tableSize: 3_000_000, timeouts: Timeouts())
        #expect(s.passInterval == 5)
        #expect(s.replicationEvery == 2)
        #expect(s.orphansEvery == 6)
        var longer = Timeouts()
        longer.timeWait = 60
        longer.closed = 60
        let l = ScanSchedule(tableSize: 3_000_000, timeouts: longer)
        #expect(abs(l.passInterval - 4_194_304 * ScanSchedule.secondsPerBucket) < 1e-9)
        #expect(l.replicationEvery == 1)
    }

    @Test func shortTimeoutsAndAConfiguredMinimumWin() {
        var short = Timeouts()
        short.udpNew = 4
        #expect(ScanSchedule(tableSize: 3_000_000, timeouts: short).passInterval == 2)
        #expect(ScanSchedule(tableSize: 1024, timeouts: Timeouts(), minimumInterval: 0.5).passInterval == 0.5)
    }
}
