import Testing
import TandemCore
import TandemTestSupport
import TandemSyncWire

@Suite struct CodecTests {
    @Test func limits() {
        #expect(SyncCodec.maxEntriesPerDatagram == 27)
        #expect(SyncCodec.maxEntriesPerStreamFrame == 1259)
        #expect(SyncChannel.datagram.maxPayload == 1472 - 28 - 16)
        #expect(SyncChannel.stream.maxPayload == 65536 - 28 - 16)
        // The largest of each message fits its channel.
        let biggestNack = SyncMessage.nack(Nack(streamEpoch: 1, cumulative: 0,
                                                missing: (0..<UInt64(SyncWire.maxNackRanges)).map { 2 * $0 + 1...2 * $0 + 1 }))
        #expect(SyncCodec.payloadSize(biggestNack) <= SyncChannel.datagram.maxPayload)
        let digest = SyncMessage.digest(Digest(level: 0, bucket: 0, entryCount: 0, hashes: Fixtures.digestHashes(0)))
        #expect(SyncCodec.payloadSize(digest) <= SyncChannel.datagram.maxPayload)
        let allLeaves = SyncMessage.bulkRequest(BulkRequest(requestID: 1, leaves: (0..<UInt16(16384)).map { $0 }))
        #expect(SyncCodec.payloadSize(allLeaves) <= SyncChannel.stream.maxPayload)
        #expect(SyncCodec.validate(allLeaves) == nil)
        let fullChunk = SyncMessage.bulkChunk(BulkChunk(requestID: 1, entries: (0..<SyncCodec.maxEntriesPerStreamFrame).map(Fixtures.numbered)))
        #expect(SyncCodec.payloadSize(fullChunk) <= SyncChannel.stream.maxPayload)
        #expect(SyncCodec.payloadSize(fullChunk) + SyncWire.entrySize > SyncChannel.stream.maxPayload)
        let fullBatch = SyncMessage.deltaBatch(DeltaBatch(firstSequence: 1, entries: (0..<27).map(Fixtures.numbered)))
        #expect(SyncCodec.payloadSize(fullBatch) <= SyncChannel.datagram.maxPayload)
        #expect(SyncCodec.payloadSize(fullBatch) + SyncWire.entrySize > SyncChannel.datagram.maxPayload)
    }

    @Test(arguments: Fixtures.messages.map(\.name))
    func roundTrip(_ name: String) throws {
        let m = try #require(Fixtures.messages.first { $0.name == name }).message
        let bytes = SyncCodec.encodePayload(m)
        #expect(bytes.count == SyncCodec.payloadSize(m))
        #expect(try SyncCodec.decodePayload(type: m.type, bytes) == m)
        #expect(SyncCodec.validate(m) == nil)
    }

    @Test func roundTripEdgeSizes() throws {
        let cases: [SyncMessage] = [
            .deltaBatch(DeltaBatch(firstSequence: 1, entries: [])),
            .deltaBatch(DeltaBatch(firstSequence: 1, entries: (0..<SyncCodec.maxEntriesPerDatagram).map(Fixtures.numbered))),
            .deltaBatch(DeltaBatch(firstSequence: .max, entries: [Fixtures.tcpUpsert])),
            .deltaBatch(DeltaBatch(firstSequence: .max - 26, entries: (0..<27).map(Fixtures.numbered))),
            .bulkChunk(BulkChunk(requestID: 0, entries: [])),
            .bulkChunk(BulkChunk(requestID: .max, entries: (0..<SyncCodec.maxEntriesPerStreamFrame).map(Fixtures.numbered))),
            .nack(Nack(streamEpoch: 0, cumulative: 0, missing: [])),
            .nack(Nack(streamEpoch: .max, cumulative: .max - 1, missing: [.max ... .max])),
            .nack(Nack(streamEpoch: 1, cumulative: 0,
                       missing: (0..<UInt64(SyncWire.maxNackRanges)).map { 3 * $0 + 1...3 * $0 + 2 })),
            .bulkRequest(BulkRequest(requestID: 1, leaves: [])),
            .bulkRequest(BulkRequest(requestID: 1, leaves: (0..<UInt16(16384)).map { $0 })),
            .digestRequest(DigestRequest(buckets: [])),
            .digestRequest(DigestRequest(buckets: (0..<UInt16(128)).map { $0 })),
            .digest(Digest(level: 1, bucket: 0, entryCount: .max, hashes: [UInt64](repeating: .max, count: 128))),
            .hello(Hello(bulkPort: 0, inSync: false, nextSequence: 1)),
            .hello(Hello(bulkPort: .max, inSync: true, nextSequence: .max)),
            .keepalive(Keepalive(nextSequence: .max, inSync: true, entryCount: 0)),
            .bulkBegin(BulkBegin(requestID: 0, streamEpoch: 0, resumeSequence: 1, entryCount: 0)),
            .bulkEnd(BulkEnd(requestID: .max, entryCount: .max)),
            .ack(Ack(streamEpoch: .max, cumulative: .max)),
        ]
        for m in cases {
            #expect(try SyncCodec.decodePayload(type: m.type, SyncCodec.encodePayload(m)) == m, "\(m.type)")
        }
    }

    @Test func headerLayout() throws {
        let h = SyncHeader(type: .bulkChunk, flags: .stream, sender: 0x0102_0304, epoch: 0x1112_1314_1516_1718,
                           sequence: 0x2122_2324_2526_2728, length: 0xABCD)
        let bytes = SyncCodec.encodeHeader(h)
        #expect(bytes == [0x54, 0x53, 1, 7, 1, 0, 0xAB, 0xCD, 1, 2, 3, 4,
                          0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18,
                          0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28])
        #expect(try SyncCodec.decodeHeader(bytes) == h)
        // Bytes after the header are the payload's business.
        #expect(try SyncCodec.decodeHeader(bytes + [9, 9, 9]) == h)
    }

    @Test func headerErrors() {
        let good = SyncCodec.encodeHeader(SyncHeader(type: .hello, sender: 1, epoch: 1, sequence: 1, length: 16))
        func reason(_ bytes: [UInt8]) -> SyncDropReason? {
            do {
                _ = try SyncCodec.decodeHeader(bytes)
                return nil
            } catch { return error.reason }
        }
        func patched(_ i: Int, _ v: UInt8) -> [UInt8] {
            var b = good
            b[i] = v
            return b
        }
        #expect(reason(good) == nil)
        #expect(reason([]) == .truncated)
        #expect(reason(Array(good.prefix(27))) == .truncated)
        #expect(reason(patched(0, 0x53)) == .badMagic)
        #expect(reason(patched(1, 0x54)) == .badMagic)
        #expect(reason(patched(2, 0)) == .badVersion)
        #expect(reason(patched(2, 2)) == .badVersion)
        #expect(reason(patched(3, 0)) == .unknownType)
        #expect(reason(patched(3, 20)) == .unknownType)
        #expect(reason(patched(3, 18)) == .badFlags)  // kernel entries without the kernel flag
        #expect(reason(patched(3, 19)) == .badFlags)
        #expect(reason(patched(3, 12)) == .badFlags)  // a probe without the gossip flag
        #expect(reason(patched(3, 15)) == .badFlags)  // a service digest without the config flag
        #expect(reason(patched(3, 17)) == .badFlags)  // endpoint verdicts without the config flag
        #expect(reason(patched(3, 255)) == .unknownType)
        for bit in [1, 2, 4, 5, 6, 7] { #expect(reason(patched(4, 1 << bit)) == .badFlags) }
        #expect(reason(patched(4, 1)) == nil)
        // The kernel flag names the kernel channels (alone, or with stream); the opener checks
        // it against the channel the message arrived on.
        #expect(reason(patched(4, 0x08)) == nil)
        #expect(reason(patched(4, 0x09)) == nil)
        #expect(reason(patched(4, 0x0a)) == .badFlags)
        #expect(reason(patched(4, 0x0c)) == .badFlags)
        #expect(reason(patched(5, 1)) == .badFlags)
        // Checks run in the documented order: magic before version before type before flags.
        var many = good
        many[1] = 0; many[2] = 9; many[3] = 99; many[4] = 0xFF
        #expect(reason(many) == .badMagic)
        many[1] = 0x53
        #expect(reason(many) == .badVersion)
        many[2] = 1
        #expect(reason(many) == .unknownType)
        many[3] = 1
        #expect(reason(many) == .badFlags)
    }

    /// Offsets of SPEC.md §6.12, byte by byte.
    @Test func entryLayout() throws {
        var e = Fixtures.tcpUpsert
        e.record.flags.insert(.fromPeer)   // local bookkeeping: never sent
        e.record.translated.proto = 99      // not sent: the key's protocol is
        let b = SyncCodec.encodeEntry(e)
        #expect(b.count == SyncWire.entrySize)
        #expect(Array(b[0..<8]) == [1, 6, 2, 3, 0x04, 1, 0, 0])
        #expect(Array(b[8..<20]) == [198, 51, 100, 7, 192, 0, 2, 10, 0xC9, 0x3B, 0, 80])
        #expect(Array(b[20..<32]) == [192, 0, 2, 10, 10, 0, 10, 21, 0xC9, 0x3B, 0x1F, 0x90])
        #expect(Array(b[32..<40]) == [0x00, 0x06, 0x0A, 0x24, 0x18, 0x20, 0x22, 0x40])  // 1_700_000_000_123_456
        #expect(Array(b[40..<44]) == [0, 0, 0, 1])
        #expect(Array(b[44..<48]) == [0, 0, 0x05, 0xDC])
        #expect(Array(b[48..<52]) == [0x01, 0x49, 0x91, 0x24])  // 21_598_500
        let decoded = try b.withUnsafeBytes { (raw) throws(SyncDecodeError) in try SyncCodec.decodeEntry(raw) }
        #expect(decoded == Fixtures.tcpUpsert)
    }

    /// Each malformed payload is rejected as malformedPayload, with a detail.
    static let malformed: [(String, SyncMessageType, [UInt8])] = {
        let batch = SyncCodec.encodePayload(.deltaBatch(DeltaBatch(firstSequence: 5, entries: [Fixtures.tcpUpsert])))
        let chunk = SyncCodec.encodePayload(.bulkChunk(BulkChunk(requestID: 1, entries: [Fixtures.tcpUpsert])))
        let hello = SyncCodec.encodePayload(.hello(Hello(bulkPort: 1, inSync: true, nextSequence: 5)))
        let keepalive = SyncCodec.encodePayload(.keepalive(Keepalive(nextSequence: 5, inSync: true, entryCount: 0)))
        let digest = SyncCodec.encodePayload(.digest(Digest(level: 1, bucket: 3, entryCount: 0, hashes: Fixtures.digestHashes(0))))
        let begin = SyncCodec.encodePayload(.bulkBegin(BulkBegin(requestID: 1, streamEpoch: 1, resumeSequence: 1, entryCount: 0)))
        func set(_ b: [UInt8], _ edits: (Int, UInt8)...) -> [UInt8] {
            var b = b
            for (i, v) in edits { b[i] = v }
            return b
        }
        func nack(_ cumulative: UInt64, _ ranges: [(UInt64, UInt64)]) -> [UInt8] {
            var w: [UInt8] = []
            func u64(_ v: UInt64) { for s in stride(from: 56, through: 0, by: -8) { w.append(UInt8(truncatingIfNeeded: v >> UInt64(s))) } }
            u64(1); u64(cumulative); w.append(UInt8(ranges.count))
            for (lo, hi) in ranges { u64(lo); u64(hi) }
            return w
        }
        func u16s(_ prefix: [UInt8], _ values: [UInt16]) -> [UInt8] {
            var w = prefix + [UInt8(values.count >> 8), UInt8(values.count & 0xFF)]
            for v in values { w += [UInt8(v >> 8), UInt8(v & 0xFF)] }
            return w
        }
        var list: [(String, SyncMessageType, [UInt8])] = []
        func add(_ name: String, _ type: SyncMessageType, _ bytes: [UInt8]) { list.append((name, type, bytes)) }
        add("hello empty", .hello, [])
        add("hello short", .hello, Array(hello.dropLast()))
        add("hello trailing", .hello, hello + [0])
        add("hello inSync 2", .hello, set(hello, (2, 2)))
        add("hello inSync 255", .hello, set(hello, (2, 255)))
        add("hello nextSequence 0", .hello, set(hello, (10, 0)))
        add("batch count > bytes", .deltaBatch, set(batch, (9, 2)))
        add("batch count < bytes", .deltaBatch, set(batch, (9, 0)))
        add("batch count 28", .deltaBatch, set(batch, (9, 28)))
        add("batch count 65535", .deltaBatch, set(batch, (8, 0xFF), (9, 0xFF)))
        add("batch trailing", .deltaBatch, batch + [0])
        add("batch short", .deltaBatch, Array(batch.dropLast()))
        add("batch only fixed part short", .deltaBatch, Array(batch.prefix(9)))
        add("batch firstSequence 0", .deltaBatch, set(batch, (7, 0)))
        add("batch sequence overflow", .deltaBatch, SyncCodec.encodePayload(.deltaBatch(DeltaBatch(firstSequence: .max, entries: [Fixtures.tcpUpsert, Fixtures.udpDelete]))))
        add("entry op 0", .deltaBatch, set(batch, (10, 0)))
        add("entry op 3", .deltaBatch, set(batch, (10, 3)))
        add("entry proto 0", .deltaBatch, set(batch, (11, 0)))
        add("entry proto 58", .deltaBatch, set(batch, (11, 58)))
        add("entry natMode 3", .deltaBatch, set(batch, (12, 3)))
        add("entry state 10", .deltaBatch, set(batch, (13, 10)))
        add("entry state 255", .deltaBatch, set(batch, (13, 255)))
        add("entry fromPeer", .deltaBatch, set(batch, (14, 0x08)))
        add("entry flag 0x10", .deltaBatch, set(batch, (14, 0x10)))
        add("entry flag 0x80", .deltaBatch, set(batch, (14, 0x80)))
        add("entry reserved hi", .deltaBatch, set(batch, (16, 1)))
        add("entry reserved lo", .deltaBatch, set(batch, (17, 0x80)))
        add("chunk entry fromPeer", .bulkChunk, set(chunk, (6 + 4, 0x0F)))
        add("chunk count > bytes", .bulkChunk, set(chunk, (5, 2)))
        add("chunk count 1260", .bulkChunk, set(chunk, (4, 0x04), (5, 0xEC)))
        add("ack short", .ack, [UInt8](repeating: 0, count: 15))
        add("ack trailing", .ack, [UInt8](repeating: 0, count: 17))
        add("nack lo > hi", .nack, nack(0, [(5, 4)]))
        add("nack lo == cumulative", .nack, nack(5, [(5, 6)]))
        add("nack lo < cumulative", .nack, nack(5, [(1, 9)]))
        add("nack overlap", .nack, nack(0, [(1, 5), (5, 9)]))
        add("nack descending", .nack, nack(0, [(10, 12), (1, 5)]))
        add("nack duplicate", .nack, nack(0, [(1, 5), (1, 5)]))
        let singles: [(UInt64, UInt64)] = (UInt64(0)..<65).map { i in (2 * i + 1, 2 * i + 1) }
        add("nack 65 ranges", .nack, nack(0, singles))
        add("nack count > bytes", .nack, Array(nack(0, [(1, 2), (4, 5)]).dropLast(16)))
        add("nack trailing", .nack, nack(0, [(1, 2)]) + [0])
        add("bulkRequest leaf 16384", .bulkRequest, u16s([0, 0, 0, 1], [16384]))
        add("bulkRequest unsorted", .bulkRequest, u16s([0, 0, 0, 1], [7, 3]))
        add("bulkRequest duplicate", .bulkRequest, u16s([0, 0, 0, 1], [3, 3]))
        add("bulkRequest count > bytes", .bulkRequest, Array(u16s([0, 0, 0, 1], [1, 2]).dropLast(2)))
        add("bulkRequest count 16385", .bulkRequest, [0, 0, 0, 1, 0x40, 0x01])
        add("bulkBegin resume 0", .bulkBegin, set(begin, (19, 0)))
        add("bulkBegin short", .bulkBegin, Array(begin.dropLast()))
        add("bulkEnd trailing", .bulkEnd, [UInt8](repeating: 0, count: 13))
        add("keepalive inSync 2", .keepalive, set(keepalive, (8, 2)))
        add("keepalive nextSequence 0", .keepalive, set(keepalive, (7, 0)))
        add("digest level 2", .digest, set(digest, (0, 2)))
        add("digest level 0 with bucket", .digest, set(digest, (0, 0)))
        add("digest bucket 128", .digest, set(digest, (2, 128)))
        add("digest count 127", .digest, Array(set(digest, (12, 127)).dropLast(8)))
        add("digest count 129", .digest, set(digest, (12, 129)) + [UInt8](repeating: 0, count: 8))
        add("digest short", .digest, Array(digest.dropLast()))
        add("digestRequest bucket 128", .digestRequest, u16s([], [128]))
        add("digestRequest unsorted", .digestRequest, u16s([], [5, 1]))
        add("digestRequest count 129", .digestRequest, u16s([], (0..<129).map { UInt16($0) }))
        add("digestRequest trailing", .digestRequest, u16s([], [1]) + [0])
        return list
    }()

    @Test(arguments: malformed.map(\.0))
    func malformedPayload(_ name: String) throws {
        let (_, type, bytes) = try #require(Self.malformed.first { $0.0 == name })
        do {
            let m = try SyncCodec.decodePayload(type: type, bytes)
            Issue.record("\(name) decoded to \(m)")
        } catch {
            #expect(error.reason == .malformedPayload)
            #expect(!error.detail.isEmpty)
            #expect(error.description.hasPrefix("malformedPayload: "))
        }
    }

    @Test func errorDetailsNameTheProblem() {
        let batch = SyncCodec.encodePayload(.deltaBatch(DeltaBatch(firstSequence: 5, entries: [Fixtures.tcpUpsert])))
        var b = batch
        b[9] = 2
        #expect(throws: SyncDecodeError(.malformedPayload, "deltaBatch: count 2 needs 104 byte(s), 52 remain")) {
            try SyncCodec.decodePayload(type: .deltaBatch, b)
        }
        b = batch
        b[14] = 0x08
        #expect(throws: SyncDecodeError(.malformedPayload, "deltaBatch entry 0: flags carry the local fromPeer bit (0x08)")) {
            try SyncCodec.decodePayload(type: .deltaBatch, b)
        }
    }

    /// Every prefix and every one-byte extension of every fixture payload fails cleanly (the
    /// counts leave no slack). Decoding a payload as another type may succeed by coincidence of
    /// layout, but must not trap and must stay canonical.
    @Test func truncationsAndExtensionsFail() {
        for (name, _, m) in Fixtures.messages {
            let bytes = SyncCodec.encodePayload(m)
            for n in 0..<bytes.count {
                #expect(throws: SyncDecodeError.self, "\(name) prefix \(n)") {
                    try SyncCodec.decodePayload(type: m.type, Array(bytes.prefix(n)))
                }
            }
            #expect(throws: SyncDecodeError.self, "\(name) + 1") { try SyncCodec.decodePayload(type: m.type, bytes + [0]) }
            for t in SyncMessageType.allCases {
                if let other = try? SyncCodec.decodePayload(type: t, bytes) {
                    #expect(SyncCodec.encodePayload(other) == bytes)
                }
            }
        }
    }

    /// Random bytes and randomly mutated payloads never trap, and whatever decodes is canonical.
    @Test func randomInputsNeverTrap() {
        var rng = TestRNG(seed: 42)
        let seeds = Fixtures.messages.map { SyncCodec.encodePayload($0.message) }
        var decoded = 0
        for i in 0..<20_000 {
            var bytes: [UInt8]
            if i % 2 == 0 {
                bytes = (0..<Int(rng.next() % 80)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            } else {
                bytes = seeds[Int(rng.next() % UInt64(seeds.count))]
                for _ in 0..<(1 + rng.next() % 3) where !bytes.isEmpty {
                    let at = Int(rng.next() % UInt64(bytes.count))
                    switch rng.next() % 3 {
                    case 0: bytes[at] = UInt8.random(in: 0...255, using: &rng)
                    case 1: bytes.remove(at: at)
                    default: bytes.insert(UInt8.random(in: 0...255, using: &rng), at: at)
                    }
                }
            }
            let input = [UInt8(truncatingIfNeeded: rng.next())] + bytes
            input.withUnsafeBytes { SyncDecodeFuzzing.run($0) }
            for t in SyncMessageType.allCases where (try? SyncCodec.decodePayload(type: t, bytes)) != nil { decoded += 1 }
        }
        #expect(decoded > 0)
    }
}
