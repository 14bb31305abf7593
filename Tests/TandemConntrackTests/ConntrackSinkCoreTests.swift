import CNetfilterConntrack
import TandemCore
import Testing
@testable import TandemConntrack

typealias Sink = ConntrackSinkCore

func requests(_ actions: [Sink.Action]) -> [Sink.Request] {
    actions.flatMap { if case .send(let b) = $0 { b } else { [Sink.Request]() } }
}

func batches(_ actions: [Sink.Action]) -> [[Sink.Request]] {
    actions.map { if case .send(let b) = $0 { b } else { [] } }
}

/// Acks every request with errno 0, except those `fail` names.
func ackAll(_ reqs: [Sink.Request], fail: (Sink.Request) -> Int32 = { _ in 0 }) -> [(seq: UInt32, errno: Int32)] {
    reqs.map { ($0.seq, fail($0)) }
}

func udp(_ n: Int, timeout: UInt32 = 60) -> KernelConnection {
    let p = UInt16(1000 + n % 60_000)
    let host = IPv4Address(0x0A01_0000 + UInt32(n / 60_000))
    return KernelConnection(original: .ports(17, host, p, ip("10.9.9.9"), 53),
                            reply: .ports(17, ip("10.9.9.9"), 53, host, p), status: [.confirmed], timeout: timeout)
}

@Suite struct ConntrackSinkCoreTests {
    func inject(batchSize: Int = 4, maxRetries: Int = 2) -> Sink {
        Sink(settings: .init(mode: .inject, batchSize: batchSize, maxRetries: maxRetries, retryDelay: 0.1))
    }

    @Test func injectBatchesBySize() {
        var core = inject(batchSize: 4)
        let a = core.onChanges((0..<10).map { (udp($0), deleted: false) }, now: 0)
        #expect(batches(a).map(\.count) == [4, 4, 2])
        let reqs = requests(a)
        #expect(Set(reqs.map(\.seq)).count == 10)                  // one sequence number each
        #expect(reqs.allSatisfy { $0.op == .create })
        #expect(core.inFlightCount == 10)
        let next = core.onAcks(ackAll(reqs), now: 1)
        #expect(next.isEmpty)
        #expect(core.isIdle)
        #expect(core.counters.created == 10 && core.counters.injected == 10)
        #expect(core.counters.batches == 3 && core.counters.requests == 10)
    }

    @Test func createAnsweredEEXISTBecomesUpdate() throws {
        var core = inject()
        let r = try #require(requests(core.onUpsert(natTCP(), now: 0)).first)
        #expect(r.op == .create)
        let again = requests(core.onAcks([(r.seq, SinkErrno.EEXIST)], now: 1))
        #expect(again.count == 1)
        #expect(again.first?.op == .update)
        #expect(again.first?.message.snat == nil && again.first?.message.dnat == nil)   // no NAT on update
        _ = core.onAcks(ackAll(again), now: 2)
        #expect(core.counters.existedBecameUpdate == 1)
        #expect(core.counters.updated == 1 && core.counters.created == 0 && core.counters.injected == 1)
        #expect(core.counters.totalFailures == 0)
    }

    @Test func updateAnsweredENOENTBecomesCreate() throws {
        var core = inject()
        let r = try #require(requests(core.onUpsert(natTCP(), now: 0)).first)
        let upd = requests(core.onAcks([(r.seq, SinkErrno.EEXIST)], now: 0))
        // The entry vanished between the create and the update.
        let create = requests(core.onAcks(ackAll(upd, fail: { _ in SinkErrno.ENOENT }), now: 0))
        #expect(create.map(\.op) == [.create])
        #expect(create.first?.message.snat != nil)
        _ = core.onAcks(ackAll(create), now: 0)
        #expect(core.counters.createdAfterENOENT == 1 && core.counters.created == 1)
    }

    @Test func conversionsAreBounded() throws {
        var core = inject()
        var reqs = requests(core.onUpsert(udp(1), now: 0))
        var rounds = 0
        while !reqs.isEmpty && rounds < 20 {
            let e = reqs[0].op == .create ? SinkErrno.EEXIST : SinkErrno.ENOENT
            reqs = requests(core.onAcks(ackAll(reqs, fail: { _ in e }), now: 0))
            rounds += 1
        }
        #expect(rounds == Sink.maxConversions + 1)
        #expect(core.isIdle)
        #expect(core.counters.totalFailures == 1)
    }

    @Test func transientErrorsRetryWithBackoffThenDrop() throws {
        var core = inject(maxRetries: 2)
        let r = try #require(requests(core.onUpsert(udp(1), now: 0)).first)
        #expect(requests(core.onAcks([(r.seq, SinkErrno.ENOMEM)], now: 0)).isEmpty)   // not yet due
        #expect(core.nextRetryAt == 100_000_000)
        #expect(requests(core.nextBatches(now: 50_000_000)).isEmpty)
        let r2 = try #require(requests(core.nextBatches(now: 100_000_000)).first)
        _ = core.onAcks([(r2.seq, SinkErrno.EBUSY)], now: 100_000_000)
        #expect(core.nextRetryAt == 300_000_000)                                      // doubled
        let r3 = try #require(requests(core.nextBatches(now: 300_000_000)).first)
        _ = core.onAcks([(r3.seq, SinkErrno.ENOBUFS)], now: 300_000_000)
        #expect(core.isIdle)                                                          // out of retries
        #expect(core.counters.retries == 2)
        #expect(core.counters.failures == ["ENOBUFS": 1])
    }

    @Test func permanentErrorsDropAtOnce() {
        var core = inject()
        let reqs = requests(core.onChanges([(udp(1), false), (udp(2), false), (udp(3), false)], now: 0))
        let errs: [Int32] = [SinkErrno.EINVAL, SinkErrno.EPERM, SinkErrno.EOPNOTSUPP]
        _ = core.onAcks(zip(reqs, errs).map { ($0.seq, $1) }, now: 0)
        #expect(core.isIdle)
        #expect(core.counters.failures == ["EINVAL": 1, "EPERM": 1, "EOPNOTSUPP": 1])
        #expect(core.counters.retries == 0)
    }

    @Test func aBadEntryInTheMiddleDoesNotBlockTheBatch() {
        var core = inject(batchSize: 100)
        var bad = natTCP()
        bad.tcp?.state = TCPConntrackState(rawValue: 200)
        let list = (0..<5).map { (udp($0), deleted: false) } + [(bad, deleted: false)] + (5..<10).map { (udp($0), deleted: false) }
        let reqs = requests(core.onChanges(list, now: 0))
        #expect(reqs.count == 11)
        let badSeq = reqs[5].seq
        #expect(core.onAcks(ackAll(reqs, fail: { $0.seq == badSeq ? SinkErrno.EINVAL : 0 }), now: 0).isEmpty)
        #expect(core.counters.injected == 10)
        #expect(core.counters.failures == ["EINVAL": 1])
        // And later batches go on.
        _ = core.onAcks(ackAll(requests(core.onUpsert(udp(99), now: 0))), now: 0)
        #expect(core.counters.injected == 11)
    }

    @Test func deletesAndAbsentDeletes() {
        var core = inject()
        let reqs = requests(core.onChanges([(udp(1), true), (udp(2), true)], now: 0))
        #expect(reqs.map(\.op) == [.delete, .delete])
        #expect(reqs[0].message.timeout == nil && reqs[0].message.status == nil && reqs[0].message.reply == nil)
        _ = core.onAcks([(reqs[0].seq, 0), (reqs[1].seq, SinkErrno.ENOENT)], now: 0)
        #expect(core.counters.deleted == 1 && core.counters.deleteAbsent == 1 && core.counters.totalFailures == 0)
    }

    @Test func newestChangePerKeyWinsAndSupersedesARetry() throws {
        var core = Sink(settings: .init(mode: .inject, batchSize: 10, maxRetries: 3, retryDelay: 1))
        let r = try #require(requests(core.onUpsert(udp(1), now: 0)).first)
        _ = core.onAcks([(r.seq, SinkErrno.ENOMEM)], now: 0)                     // retry scheduled at 1 s
        // A delete arriving meanwhile replaces the scheduled retry and goes out at once.
        let del = requests(core.onDelete(udp(1).key, now: 0))
        #expect(del.map(\.op) == [.delete])
        _ = core.onAcks(ackAll(del), now: 0)
        #expect(requests(core.nextBatches(now: 2 * sec)).isEmpty)                // the create is gone
        #expect(core.isIdle && core.counters.deleted == 1)
        // Within one call, only the newest change per key is sent.
        core = Sink(settings: .init(mode: .inject, batchSize: 10))
        let reqs = requests(core.onChanges([(udp(1), false), (udp(1), true)], now: 0))
        #expect(reqs.map(\.op) == [.delete])
    }

    @Test func injectTimeoutIsSourceTimeoutMinusTransit() throws {
        var core = Sink(settings: .init(mode: .inject, batchSize: 10, maxRetries: 1, retryDelay: 2))
        let r = try #require(requests(core.onUpsert(udp(1, timeout: 60), now: 0)).first)
        #expect(r.message.timeout == 60)
        // A retry sent 2 s later carries 2 s less.
        _ = core.onAcks([(r.seq, SinkErrno.EAGAIN)], now: 1)
        let r2 = try #require(requests(core.nextBatches(now: 2 * sec + 1)).first)
        #expect(r2.message.timeout == 57)
    }

    @Test func holdModeKeepsEntriesUntilCommitAndAgesThem() throws {
        var core = Sink(settings: .init(mode: .hold, batchSize: 2))
        #expect(core.onChanges([(udp(1, timeout: 100), false), (udp(2, timeout: 10), false), (udp(3, timeout: 100), false)], now: 0).isEmpty)
        #expect(core.onDelete(udp(3).key, now: 0).isEmpty)
        #expect(core.heldCount == 2 && core.counters.held == 2)
        // Updated while held: the newer value counts, and its time runs from then.
        _ = core.onUpsert(udp(1, timeout: 100), now: 5 * sec)
        let a = core.onCommit(now: 30 * sec)
        let reqs = requests(a)
        #expect(reqs.count == 1)                                                 // udp(2) ran out
        #expect(reqs.first?.message.timeout == 75)
        #expect(reqs.first?.op == .create)
        #expect(core.heldCount == 0)
        _ = core.onAcks(ackAll(reqs), now: 31 * sec)
        #expect(core.isIdle)
        let report = core.finishCommit(now: 31 * sec)
        #expect(report.committed == 1 && report.expired == 1 && report.failures.isEmpty)
        #expect(report.seconds == 1)
        #expect(core.counters.expiredBeforeCommit == 1 && core.counters.commits == 1)
    }

    @Test func commitReportCountsFailuresByReason() {
        var core = Sink(settings: .init(mode: .hold, batchSize: 100, maxRetries: 0))
        _ = core.onChanges((0..<6).map { (udp($0), false) }, now: 0)
        let reqs = requests(core.onCommit(now: 0))
        #expect(reqs.count == 6)
        var i = 0
        let errs: [Int32] = [0, SinkErrno.EINVAL, 0, SinkErrno.ENOMEM, SinkErrno.EEXIST, 0]
        let next = core.onAcks(reqs.map { r in defer { i += 1 }; return (r.seq, errs[i]) }, now: 0)
        #expect(requests(next).map(\.op) == [.update])                           // the EEXIST one
        _ = core.onAcks(ackAll(requests(next)), now: 0)
        let report = core.finishCommit(now: 0)
        #expect(report.committed == 4)
        #expect(report.failures == ["EINVAL": 1, "ENOMEM": 1])
    }

    @Test func switchingHoldToInjectWritesTheHeld() {
        var core = Sink(settings: .init(mode: .hold))
        _ = core.onUpsert(udp(1), now: 0)
        let reqs = requests(core.setMode(.inject, now: 0))
        #expect(reqs.count == 1)
        #expect(core.mode == .inject)
    }

    @Test func lostAcksAreRetriedAndStrayAcksCounted() throws {
        var core = inject()
        let r = try #require(requests(core.onUpsert(udp(1), now: 0)).first)
        _ = core.onAcks([(r.seq &+ 1000, 0)], now: 0)
        #expect(core.counters.unexpectedAcks == 1)
        #expect(core.inFlightSeqs == [r.seq])
        _ = core.onAcksLost([r.seq], now: 0)
        #expect(core.counters.lostAcks == 1 && core.counters.retries == 1)
        let again = try #require(requests(core.nextBatches(now: sec)).first)
        #expect(again.op == .create)
    }

    @Test func messagesCarryOnlyWhatTheKernelAccepts() {
        let c = natTCP()
        let create = SinkMessage.write(c, op: .create, timeout: 100, liberalTCP: true)
        // Reply tuple is the inverted original; the NAT goes as targets, derived from the real reply.
        #expect(create.reply == c.original.inverted)
        #expect(create.dnat == NATView.Target(address: ip("10.0.10.21"), port: 8080))
        #expect(create.snat == NATView.Target(address: ip("10.0.10.141"), port: 61000))
        #expect(create.natPorts)
        #expect(create.status == [.seenReply, .assured, .confirmed])              // no NAT/DONE bits
        #expect(create.mark == 0x42 && create.zone == 3 && create.timeout == 100)
        #expect(create.tcp?.state == .established)
        #expect(create.tcp?.flagsOriginal == (0x23 | 0x08) & SinkMessage.tcpFlagMask)   // MAXACK_SET dropped, liberal added
        #expect(create.tcp?.maskOriginal == SinkMessage.tcpFlagMask)
        #expect(create.tcp?.windowScaleOriginal == 7 && create.tcp?.windowScaleReply == 9)
        let update = SinkMessage.write(c, op: .update, timeout: 100, liberalTCP: false)
        #expect(update.reply == nil && update.snat == nil && update.dnat == nil)
        #expect(update.tcp?.flagsOriginal == 0x03)
        var strange = c
        strange.status = [.expected, .dying, .template, .offload, .seqAdjust, .fixedTimeout]
        #expect(SinkMessage.write(strange, op: .create, timeout: 1, liberalTCP: true).status == [.fixedTimeout, .confirmed])
        let plain = SinkMessage.write(plainUDP(), op: .create, timeout: 1, liberalTCP: true)
        #expect(plain.snat == nil && plain.dnat == nil && plain.tcp == nil)
    }

    @Test func requestsBuildIntoNetlinkMessages() throws {
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 8)
        defer { buf.deallocate() }
        var off = 0
        for (i, op) in [(0, Int32(0)), (1, 1), (2, 2)] {
            let ct = try #require(nfct_new())
            defer { nfct_destroy(ct) }
            SinkMessage.write(natTCP(), op: op == 0 ? .create : .update, timeout: 50, liberalTCP: true).write(to: ct)
            let end = tct_sink_put(buf.baseAddress, buf.count, off, ct, op, UInt32(100 + i))
            #expect(end > Int32(off))
            off = Int(end)
        }
        let (msgs, malformed) = NetlinkWalk.split(UnsafeRawBufferPointer(rebasing: buf[0..<off]))
        #expect(!malformed)
        #expect(msgs.map(\.type) == [0x100, 0x100, 0x102])
        #expect(msgs.map { $0.flags & 0x0605 } == [0x0605, 0x0005, 0x0005])     // REQUEST|ACK, CREATE|EXCL on the first
        // No room left: refused, nothing written past the buffer.
        let ct = try #require(nfct_new())
        defer { nfct_destroy(ct) }
        #expect(tct_sink_put(buf.baseAddress, buf.count, buf.count - 100, ct, 0, 1) == -ENOSPC)
    }
}

@Suite struct SinkAckParserTests {
    func ack(seq: UInt32, errno: Int32, len: UInt32 = 36) -> [UInt8] {
        var b: [UInt8] = []
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { b += $0 } }
        func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { b += $0 } }
        u32(len); u16(2); u16(0x100); u32(seq); u32(0)
        u32(UInt32(bitPattern: -errno))
        while b.count < Int(len) { b.append(0) }
        return b
    }

    func parse(_ bytes: [UInt8]) -> SinkAckParser.Result {
        bytes.withUnsafeBytes { SinkAckParser.parse($0) }
    }

    @Test func readsAcksAndErrors() {
        let r = parse(ack(seq: 7, errno: 0) + ack(seq: 8, errno: 17) + ack(seq: 9, errno: 22))
        #expect(r.acks == [.init(seq: 7, errno: 0), .init(seq: 8, errno: 17), .init(seq: 9, errno: 22)])
        #expect(r.malformed == 0)
    }

    @Test func truncatedAndGarbageInputIsCountedNotTrusted() {
        let two = ack(seq: 1, errno: 0) + ack(seq: 2, errno: 0)
        for cut in 0..<two.count {
            let r = parse(Array(two[0..<cut]))
            #expect(r.acks.count == (cut >= 72 ? 2 : cut >= 36 ? 1 : 0))
        }
        // A header claiming more than there is; one too short for the error code; a positive code.
        #expect(parse(ack(seq: 3, errno: 0, len: 36)[0..<20] + [0, 0]).acks.isEmpty)
        var short = Array(ack(seq: 4, errno: 0, len: 16)[0..<16])
        short[0] = 16
        #expect(parse(short).malformed == 1)
        var positive = ack(seq: 5, errno: 0)
        positive[16] = 5
        #expect(parse(positive).malformed == 1)
        // Random bytes never crash and never yield more acks than could fit.
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<500 {
            let n = Int.random(in: 0..<200, using: &rng)
            let bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let r = parse(bytes)
            #expect(r.acks.count <= n / 20)
        }
    }

    @Test func otherMessagesAreSkipped() {
        var done = ack(seq: 1, errno: 0, len: 20)
        done[4] = 3   // NLMSG_DONE
        let r = parse(done + ack(seq: 2, errno: 0))
        #expect(r.other == 1 && r.acks == [.init(seq: 2, errno: 0)])
    }
}
