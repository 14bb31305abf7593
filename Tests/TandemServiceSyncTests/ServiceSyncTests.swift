import Testing
import TandemCore
import TandemServiceSync
import TandemSyncWire

/// The shared service table's merge rule (proto/SPEC.md §14.4), without I/O.
@Suite struct ServiceSyncCoreTests {
    static let web = ServiceKey(vip: IPv4Address("10.0.10.143")!, port: 80, proto: .tcp)
    static let dns = ServiceKey(vip: IPv4Address("10.0.10.143")!, port: 53, proto: .udp)
    static func spec(_ s: String) -> [UInt8] { Array(s.utf8) }

    /// Delivers every record of `from` to `to` and applies the actions as a node would (all succeed).
    static func exchange(_ from: ServiceSyncCore, into to: inout ServiceSyncCore, now: UInt64) -> [ServiceSyncAction] {
        to.observe(maxVersion: from.digest().maxVersion)
        let actions = to.merge(from.records(), nowMicros: now)
        for case .apply(let r) in actions { to.applied(r, ok: true) }
        return actions
    }

    @Test func aLocalWriteReachesAPeerAndBothDigestsAgree() {
        var a = ServiceSyncCore(selfID: 1)
        var b = ServiceSyncCore(selfID: 2)
        a.recordLocal(Self.web, spec: Self.spec("{\"v\":1}"), nowMicros: 1_000)
        #expect(a.digest() != b.digest())
        let actions = Self.exchange(a, into: &b, now: 1_100)
        #expect(actions.count == 1)
        guard case .apply(let r)? = actions.first else { Issue.record("no apply"); return }
        #expect(r.key == Self.web && r.origin == 1 && r.spec == Self.spec("{\"v\":1}"))
        #expect(a.digest().count == 1 && a.digest().digest == b.digest().digest)
        // Sending it again changes nothing.
        #expect(Self.exchange(a, into: &b, now: 1_200).isEmpty)
        #expect(b.counters.stale == 1 && b.counters.accepted == 1)
    }

    @Test func theNewestWriteWinsWhicheverOrderRecordsArrive() {
        var a = ServiceSyncCore(selfID: 1)
        var b = ServiceSyncCore(selfID: 2)
        a.recordLocal(Self.web, spec: Self.spec("old"), nowMicros: 1_000)
        b.recordLocal(Self.web, spec: Self.spec("new"), nowMicros: 2_000)
        let aCopy = a
        _ = Self.exchange(b, into: &a, now: 2_100)
        _ = Self.exchange(aCopy, into: &b, now: 2_100)
        #expect(a.held[Self.web]?.record.spec == Self.spec("new"))
        #expect(b.held[Self.web]?.record.spec == Self.spec("new"))
        #expect(a.digest() == b.digest())
    }

    @Test func equalVersionsGoToTheHigherOrigin() {
        var a = ServiceSyncCore(selfID: 1)
        var b = ServiceSyncCore(selfID: 2)
        a.recordLocal(Self.web, spec: Self.spec("from-1"), nowMicros: 5_000)
        b.recordLocal(Self.web, spec: Self.spec("from-2"), nowMicros: 5_000)
        let aCopy = a
        _ = Self.exchange(b, into: &a, now: 5_000)
        _ = Self.exchange(aCopy, into: &b, now: 5_000)
        #expect(a.held[Self.web]?.record.spec == Self.spec("from-2"))
        #expect(b.held[Self.web]?.record.spec == Self.spec("from-2"))
    }

    @Test func aWriteAfterSeeingAPeersClockOutranksItEvenWithASlowWallClock() {
        var a = ServiceSyncCore(selfID: 1)
        var b = ServiceSyncCore(selfID: 2)
        b.recordLocal(Self.web, spec: Self.spec("b"), nowMicros: 9_000_000)
        _ = Self.exchange(b, into: &a, now: 1_000)
        // a's wall clock is far behind b's; its next write must still win.
        let r = a.recordLocal(Self.web, spec: Self.spec("a"), nowMicros: 1_000)
        #expect(r.version > 9_000_000)
        _ = Self.exchange(a, into: &b, now: 9_000_001)
        #expect(b.held[Self.web]?.record.spec == Self.spec("a"))
    }

    @Test func theSameSpecWrittenOnTwoNodesIsNoConflict() {
        // kube-loxilb posts the same rule to every node: both digests agree at once.
        var a = ServiceSyncCore(selfID: 1)
        var b = ServiceSyncCore(selfID: 2)
        a.recordLocal(Self.web, spec: Self.spec("same"), nowMicros: 1_000)
        b.recordLocal(Self.web, spec: Self.spec("same"), nowMicros: 1_007)
        #expect(a.digest().count == b.digest().count && a.digest().digest == b.digest().digest)
    }

    @Test func aDeleteIsTombstonedAndBeatsTheOlderLiveCopy() {
        var a = ServiceSyncCore(selfID: 1)
        var b = ServiceSyncCore(selfID: 2)
        a.recordLocal(Self.web, spec: Self.spec("x"), nowMicros: 1_000)
        _ = Self.exchange(a, into: &b, now: 1_000)
        a.recordLocal(Self.web, spec: nil, nowMicros: 2_000)
        #expect(a.digest().count == 0 && a.digest().digest == 0)
        let actions = Self.exchange(a, into: &b, now: 2_000)
        #expect(actions == [.remove(Self.web)])
        #expect(b.held[Self.web]?.record.isTombstone == true)
        // b's stale live copy (say from a node that was away) does not bring it back.
        var c = ServiceSyncCore(selfID: 3)
        c.seed([(ServiceRecord(key: Self.web, version: 1_000, origin: 1, spec: Self.spec("x")), true, 0)])
        #expect(Self.exchange(c, into: &b, now: 3_000).isEmpty)
        #expect(Self.exchange(b, into: &c, now: 3_000) == [.remove(Self.web)])
    }

    @Test func tombstonesExpireByAgeAndByCount() {
        var a = ServiceSyncCore(selfID: 1)
        a.tombstoneLifetimeMicros = 1_000
        a.maxTombstones = 2
        for port in UInt16(1)...4 {
            let k = ServiceKey(vip: IPv4Address("10.0.0.1")!, port: port, proto: .tcp)
            a.recordLocal(k, spec: Self.spec("s"), nowMicros: UInt64(port) * 10)
            a.recordLocal(k, spec: nil, nowMicros: UInt64(port) * 10 + 1)
        }
        a.expireTombstones(nowMicros: 100)
        #expect(a.held.count == 2)
        #expect(a.held.keys.map(\.port).sorted() == [3, 4])
        a.expireTombstones(nowMicros: 5_000)
        #expect(a.held.isEmpty)
        #expect(a.counters.tombstonesExpired == 4)
    }

    @Test func aRecordTheNodeCouldNotApplyIsRetriedAndLeftOutOfTheDigest() {
        var a = ServiceSyncCore(selfID: 1)
        var b = ServiceSyncCore(selfID: 2)
        a.recordLocal(Self.web, spec: Self.spec("x"), nowMicros: 1_000)
        let first = b.merge(a.records(), nowMicros: 1_000)
        guard case .apply(let r)? = first.first else { Issue.record("no apply"); return }
        b.applied(r, ok: false)
        #expect(b.digest().count == 0)
        #expect(b.counters.applyFailed == 1)
        // The same record again: handed back to be retried.
        #expect(b.merge(a.records(), nowMicros: 2_000) == [.apply(r)])
        b.applied(r, ok: true)
        #expect(b.digest().digest == a.digest().digest)
    }

    @Test func baselineRecordsLoseToAnyWrite() {
        var a = ServiceSyncCore(selfID: 1)
        var b = ServiceSyncCore(selfID: 2)
        a.recordBaseline(Self.web, spec: Self.spec("config-file"))
        b.recordBaseline(Self.web, spec: Self.spec("config-file-b"))
        b.recordLocal(Self.dns, spec: Self.spec("api"), nowMicros: 10)
        _ = Self.exchange(a, into: &b, now: 20)
        // Equal baseline versions: the higher origin (2) keeps its copy.
        #expect(b.held[Self.web]?.record.spec == Self.spec("config-file-b"))
        a.recordLocal(Self.web, spec: Self.spec("api-write"), nowMicros: 30)
        _ = Self.exchange(a, into: &b, now: 40)
        #expect(b.held[Self.web]?.record.spec == Self.spec("api-write"))
    }

    @Test func framesFitTheConfigChannelAndKeepEveryRecord() {
        let big = [UInt8](repeating: 0x61, count: SyncWire.maxServiceSpec)
        let records = (1...5).map { i in
            ServiceRecord(key: ServiceKey(vip: IPv4Address("10.0.0.1")!, port: UInt16(i), proto: .tcp), version: 1,
                          origin: 1, spec: big)
        }
        let frames = ServiceSyncCore.frames(records)
        #expect(frames.count == 5)  // two 32 KiB specs do not fit one 64 KiB frame with headers
        #expect(frames.flatMap(\.records) == records)
        for f in frames {
            #expect(SyncCodec.payloadSize(.serviceRecords(f)) <= SyncChannel.config.maxPayload)
            #expect(SyncCodec.validate(.serviceRecords(f)) == nil)
        }
        let small = (1...300).map { i in
            ServiceRecord(key: ServiceKey(vip: IPv4Address("10.0.0.1")!, port: UInt16(i), proto: .udp), version: UInt64(i),
                          origin: 2, spec: Array("{}".utf8))
        }
        #expect(ServiceSyncCore.frames(small).count == 1)
    }
}
