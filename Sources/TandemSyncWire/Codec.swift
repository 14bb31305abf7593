import TandemCore

/// The two transports a sealed message travels on. The raw value is the first four bytes of the
/// AEAD nonce, so the same sequence number on the two channels never reuses a nonce.
public enum SyncChannel: UInt32, Sendable, CaseIterable, Hashable, CustomStringConvertible {
    /// UDP: deltas, acks, nacks, keepalives, hellos, digests.
    case datagram = 0
    /// TCP: bulk requests and transfers, sealed frames back to back.
    case stream = 1
    /// UDP on the gossip port: membership probes and election adverts.
    case gossip = 2
    /// TCP on the config port: service table sharing (digests and records) and endpoint verdicts.
    case config = 3

    /// Largest whole sealed message (header, ciphertext and tag) on this channel.
    public var maxFrame: Int {
        switch self {
        case .datagram, .gossip: SyncWire.maxDatagram
        case .stream, .config: SyncWire.maxStreamFrame
        }
    }

    /// Largest plaintext payload that fits in one message on this channel.
    public var maxPayload: Int { maxFrame - SyncWire.headerSize - SyncWire.tagSize }

    /// The header flags a message sealed for this channel carries.
    public var headerFlags: SyncHeaderFlags {
        switch self {
        case .datagram: []
        case .stream: .stream
        case .gossip: .gossip
        case .config: .config
        }
    }

    /// The channel a header says its message was sealed for (the header decoder refuses two
    /// channel flags together).
    public init(flags: SyncHeaderFlags) {
        self = flags.contains(.stream) ? .stream : flags.contains(.gossip) ? .gossip
            : flags.contains(.config) ? .config : .datagram
    }

    public var description: String {
        switch self {
        case .datagram: "datagram"
        case .stream: "stream"
        case .gossip: "gossip"
        case .config: "config"
        }
    }
}

/// Byte codec for the sync protocol (layouts in proto/SPEC.md). All integers are big-endian.
///
/// Decoding takes untrusted bytes and never traps: every read is bounds-checked, every count is
/// checked against the bytes that remain before anything is allocated, and every failure is a
/// `SyncDecodeError` naming its drop reason. A payload that decodes re-encodes to the same bytes
/// (one canonical encoding; the fuzz target checks this).
///
/// Encoding trusts its input: counts must fit their fields (checked by preconditions) and the
/// message must fit its channel (checked by the sealer). Field values the decoder would reject
/// (a nack with unordered ranges, a delta batch starting at sequence 0) are the caller's bug;
/// `validate` finds them.
public enum SyncCodec {
    /// Fixed part of a delta batch: firstSequence u64, count u16.
    static let deltaBatchFixed = 10
    /// Fixed part of a bulk chunk: requestID u32, count u16.
    static let bulkChunkFixed = 6
    /// Fixed part of a nack: streamEpoch u64, cumulative u64, count u8.
    static let nackFixed = 17
    /// Fixed part of a digest: level u8, bucket u16, entryCount u64, count u16.
    static let digestFixed = 13
    /// Gossip section: update count u8, advert count u8.
    static let gossipFixed = 2
    /// Member update: node u32, incarnation u32, status u8.
    public static let memberUpdateSize = 9
    /// Instance advert: instance u32, term u64, role u8, priority u8, flags u8, reserved u8.
    public static let advertSize = 16
    /// Most member updates in one gossip section (the sender's own plus piggybacked ones).
    public static let maxGossipUpdates = 32
    /// Most instance adverts in one gossip section (one per HA instance).
    public static let maxGossipAdverts = 16

    /// Most entries in one delta batch datagram: (1472 - 28 - 16 - 10) / 52 = 27.
    public static let maxEntriesPerDatagram = (SyncChannel.datagram.maxPayload - deltaBatchFixed) / SyncWire.entrySize
    /// Most entries in one bulk chunk frame: (65536 - 28 - 16 - 6) / 52 = 1259.
    public static let maxEntriesPerStreamFrame = (SyncChannel.stream.maxPayload - bulkChunkFixed) / SyncWire.entrySize
    /// Digest leaves: level-0 buckets times level-1 sub-buckets (128 * 128 = 16384).
    public static let digestLeaves = SyncWire.digestFanout * SyncWire.digestFanout

    /// Flag bits an entry may carry on the wire: everything ConnectionFlags defines except the
    /// local `.fromPeer` bookkeeping bit.
    public static let wireEntryFlags: ConnectionFlags = [.finOriginal, .finReply, .pickedUp]

    // MARK: Header

    public static func encodeHeader(_ h: SyncHeader) -> [UInt8] {
        var w = ByteWriter(capacity: SyncWire.headerSize)
        w.u16(SyncWire.magic)
        w.u8(SyncWire.version)
        w.u8(h.type.rawValue)
        w.u8(h.flags.rawValue)
        w.u8(0)  // reserved
        w.u16(h.length)
        w.u32(h.sender)
        w.u64(h.epoch)
        w.u64(h.sequence)
        return w.bytes
    }

    /// Decodes the first 28 bytes (anything after them is ignored here; the opener checks the
    /// header's length against the bytes received). Checks magic, version, type, flags and the
    /// reserved byte, in that order.
    public static func decodeHeader(_ bytes: UnsafeRawBufferPointer) throws(SyncDecodeError) -> SyncHeader {
        guard bytes.count >= SyncWire.headerSize else {
            throw SyncDecodeError(.truncated, "\(bytes.count) byte(s), a header needs \(SyncWire.headerSize)")
        }
        var r = ByteReader(bytes, context: "header")
        // Lengths were checked above, so these reads cannot fail; `try` only satisfies the type.
        let magic = try r.u16("magic")
        guard magic == SyncWire.magic else {
            throw SyncDecodeError(.badMagic, "magic 0x\(hex(magic)), expected 0x\(hex(SyncWire.magic))")
        }
        let version = try r.u8("version")
        guard version == SyncWire.version else {
            throw SyncDecodeError(.badVersion, "version \(version), this node speaks \(SyncWire.version)")
        }
        let rawType = try r.u8("type")
        guard let type = SyncMessageType(rawValue: rawType) else {
            throw SyncDecodeError(.unknownType, "message type \(rawType)")
        }
        let flags = SyncHeaderFlags(rawValue: try r.u8("flags"))
        guard SyncHeaderFlags.known.isSuperset(of: flags) else {
            throw SyncDecodeError(.badFlags, "undefined flag bits 0x\(hex(flags.subtracting(.known).rawValue))")
        }
        guard flags.intersection([.stream, .gossip, .config]).rawValue.nonzeroBitCount <= 1 else {
            throw SyncDecodeError(.badFlags, "more than one channel flag (0x\(hex(flags.rawValue)))")
        }
        // Membership messages travel only on the gossip channel, and only they do.
        guard type.isGossip == flags.contains(.gossip) else {
            throw SyncDecodeError(.badFlags, type.isGossip ? "\(type.wireName) without the gossip flag"
                                                           : "\(type.wireName) with the gossip flag")
        }
        // The same for service sharing and the config channel.
        guard type.isConfig == flags.contains(.config) else {
            throw SyncDecodeError(.badFlags, type.isConfig ? "\(type.wireName) without the config flag"
                                                           : "\(type.wireName) with the config flag")
        }
        let reserved = try r.u8("reserved")
        guard reserved == 0 else {
            throw SyncDecodeError(.badFlags, "reserved header byte is 0x\(hex(reserved)), must be 0")
        }
        let length = try r.u16("length")
        let sender = try r.u32("sender")
        let epoch = try r.u64("epoch")
        let sequence = try r.u64("sequence")
        return SyncHeader(type: type, flags: flags, sender: sender, epoch: epoch, sequence: sequence, length: length)
    }

    public static func decodeHeader(_ bytes: [UInt8]) throws(SyncDecodeError) -> SyncHeader {
        try withBytes(bytes) { (b) throws(SyncDecodeError) in try decodeHeader(b) }
    }

    // MARK: Payload

    /// Encoded payload size, without header and tag.
    public static func payloadSize(_ m: SyncMessage) -> Int {
        switch m {
        case .hello: 11
        case .deltaBatch(let b): deltaBatchFixed + b.entries.count * SyncWire.entrySize
        case .ack: 16
        case .nack(let n): nackFixed + n.missing.count * 16
        case .bulkRequest(let r): 6 + r.leaves.count * 2
        case .bulkBegin: 28
        case .bulkChunk(let c): bulkChunkFixed + c.entries.count * SyncWire.entrySize
        case .bulkEnd: 12
        case .keepalive: 17
        case .digest(let d): digestFixed + d.hashes.count * 8
        case .digestRequest(let r): 2 + r.buckets.count * 2
        case .probe(let p), .probeAck(let p): 12 + gossipSize(p.gossip)
        case .probeRequest(let p): 8 + gossipSize(p.gossip)
        case .serviceDigest: 20
        case .serviceRecords(let r): 2 + r.records.reduce(0) { $0 + serviceRecordSize($1) }
        case .endpointVerdicts(let v):
            SyncWire.endpointVerdictsFixed + v.services.reduce(0) { $0 + serviceVerdictSize($1) }
                + v.hosts.count * SyncWire.hostVerdictSize
        }
    }

    /// Encoded size of one service's verdicts.
    public static func serviceVerdictSize(_ v: ServiceVerdict) -> Int {
        SyncWire.serviceVerdictFixed + v.down.count * SyncWire.downEndpointSize
    }

    /// Encoded size of one service record.
    public static func serviceRecordSize(_ r: ServiceRecord) -> Int {
        SyncWire.serviceRecordFixed + (r.spec?.count ?? 0)
    }

    static func gossipSize(_ g: Gossip) -> Int {
        gossipFixed + g.updates.count * memberUpdateSize + g.adverts.count * advertSize
    }

    public static func encodePayload(_ m: SyncMessage) -> [UInt8] {
        var w = ByteWriter(capacity: payloadSize(m))
        switch m {
        case .hello(let h):
            w.u16(h.bulkPort)
            w.bool(h.inSync)
            w.u64(h.nextSequence)
        case .deltaBatch(let b):
            w.u64(b.firstSequence)
            w.u16(count16(b.entries.count, "delta batch entries"))
            for e in b.entries { encodeEntry(e, into: &w) }
        case .ack(let a):
            w.u64(a.streamEpoch)
            w.u64(a.cumulative)
        case .nack(let n):
            w.u64(n.streamEpoch)
            w.u64(n.cumulative)
            precondition(n.missing.count <= Int(UInt8.max), "nack has \(n.missing.count) ranges")
            w.u8(UInt8(n.missing.count))
            for range in n.missing {
                w.u64(range.lowerBound)
                w.u64(range.upperBound)
            }
        case .bulkRequest(let r):
            w.u32(r.requestID)
            w.u16(count16(r.leaves.count, "bulk request leaves"))
            for leaf in r.leaves { w.u16(leaf) }
        case .bulkBegin(let b):
            w.u32(b.requestID)
            w.u64(b.streamEpoch)
            w.u64(b.resumeSequence)
            w.u64(b.entryCount)
        case .bulkChunk(let c):
            w.u32(c.requestID)
            w.u16(count16(c.entries.count, "bulk chunk entries"))
            for e in c.entries { encodeEntry(e, into: &w) }
        case .bulkEnd(let e):
            w.u32(e.requestID)
            w.u64(e.entryCount)
        case .keepalive(let k):
            w.u64(k.nextSequence)
            w.bool(k.inSync)
            w.u64(k.entryCount)
        case .digest(let d):
            w.u8(d.level)
            w.u16(d.bucket)
            w.u64(d.entryCount)
            w.u16(count16(d.hashes.count, "digest hashes"))
            for h in d.hashes { w.u64(h) }
        case .digestRequest(let r):
            w.u16(count16(r.buckets.count, "digest request buckets"))
            for b in r.buckets { w.u16(b) }
        case .probe(let p), .probeAck(let p):
            w.u32(p.probeID)
            w.u32(p.target)
            w.u32(p.requester)
            encodeGossip(p.gossip, into: &w)
        case .probeRequest(let p):
            w.u32(p.probeID)
            w.u32(p.target)
            encodeGossip(p.gossip, into: &w)
        case .serviceDigest(let d):
            w.u32(d.count)
            w.u64(d.digest)
            w.u64(d.maxVersion)
        case .serviceRecords(let r):
            w.u16(count16(r.records.count, "service records"))
            for rec in r.records { encodeServiceRecord(rec, into: &w) }
        case .endpointVerdicts(let v):
            w.u64(v.generation)
            w.u8(v.more ? 0x01 : 0)
            w.u8(v.part)
            w.u16(count16(v.services.count, "service verdicts"))
            w.u16(count16(v.hosts.count, "host verdicts"))
            for s in v.services {
                w.u32(s.key.vip.value)
                w.u16(s.key.port)
                w.u8(s.key.proto.rawValue)
                precondition(s.down.count <= DatapathLimits.maxEndpoints, "\(s.down.count) endpoints down in one service")
                w.u8(UInt8(s.down.count))
                for d in s.down {
                    w.u32(d.address.value)
                    w.u16(d.port)
                    w.u8(d.reasons.rawValue)
                    w.u8(0)  // reserved
                    w.u64(d.sinceMicros)
                }
            }
            for h in v.hosts {
                w.u32(h.host.value)
                w.u8(h.state.rawValue)
                w.u8(0)  // reserved
                w.u64(h.version)
                w.u32(h.origin)
            }
        }
        return w.bytes
    }

    /// Decodes a payload of the given type. The bytes must be exactly the payload: counts must
    /// agree with them, and short or trailing bytes are `.malformedPayload`.
    public static func decodePayload(type: SyncMessageType, _ bytes: UnsafeRawBufferPointer)
        throws(SyncDecodeError) -> SyncMessage
    {
        var r = ByteReader(bytes, context: type.wireName)
        let message: SyncMessage
        switch type {
        case .hello:
            let bulkPort = try r.u16("bulkPort")
            let inSync = try r.bool("inSync")
            let next = try r.u64("nextSequence")
            guard next >= 1 else { throw r.fail("nextSequence is 0; delta sequences start at 1") }
            message = .hello(Hello(bulkPort: bulkPort, inSync: inSync, nextSequence: next))

        case .deltaBatch:
            let first = try r.u64("firstSequence")
            let count = Int(try r.u16("count"))
            guard count <= maxEntriesPerDatagram else {
                throw r.fail("count \(count) exceeds \(maxEntriesPerDatagram) entries per datagram")
            }
            // Delta sequences start at 1, and the last one (first + count - 1) must not wrap.
            guard first >= 1 else { throw r.fail("firstSequence is 0; delta sequences start at 1") }
            guard count == 0 || first <= UInt64.max - UInt64(count - 1) else {
                throw r.fail("firstSequence \(first) + count \(count) overflows")
            }
            try r.expectItems(count, size: SyncWire.entrySize, "count")
            let entries = try decodeEntries(&r, count: count)
            message = .deltaBatch(DeltaBatch(firstSequence: first, entries: entries))

        case .ack:
            let epoch = try r.u64("streamEpoch")
            let cumulative = try r.u64("cumulative")
            message = .ack(Ack(streamEpoch: epoch, cumulative: cumulative))

        case .nack:
            let epoch = try r.u64("streamEpoch")
            let cumulative = try r.u64("cumulative")
            let count = Int(try r.u8("count"))
            guard count <= SyncWire.maxNackRanges else {
                throw r.fail("count \(count) exceeds \(SyncWire.maxNackRanges) ranges")
            }
            try r.expectItems(count, size: 16, "count")
            var missing: [ClosedRange<UInt64>] = []
            missing.reserveCapacity(count)
            // Ranges lie above the cumulative ack, ascending, without overlap.
            var floor = cumulative
            for i in 0..<count {
                let lo = try r.u64("range lo")
                let hi = try r.u64("range hi")
                guard lo <= hi else { throw r.fail("range \(i): lo \(lo) > hi \(hi)") }
                guard lo > floor else {
                    throw r.fail(i == 0 ? "range 0: lo \(lo) is not above cumulative \(cumulative)"
                                        : "range \(i): lo \(lo) is not above the previous range's hi \(floor)")
                }
                missing.append(lo...hi)
                floor = hi
            }
            message = .nack(Nack(streamEpoch: epoch, cumulative: cumulative, missing: missing))

        case .bulkRequest:
            let id = try r.u32("requestID")
            let count = Int(try r.u16("count"))
            guard count <= digestLeaves else { throw r.fail("count \(count) exceeds \(digestLeaves) leaves") }
            try r.expectItems(count, size: 2, "count")
            let leaves = try ascendingU16s(&r, count: count, below: digestLeaves, "leaf")
            message = .bulkRequest(BulkRequest(requestID: id, leaves: leaves))

        case .bulkBegin:
            let id = try r.u32("requestID")
            let epoch = try r.u64("streamEpoch")
            let resume = try r.u64("resumeSequence")
            let count = try r.u64("entryCount")
            guard resume >= 1 else { throw r.fail("resumeSequence is 0; delta sequences start at 1") }
            message = .bulkBegin(BulkBegin(requestID: id, streamEpoch: epoch, resumeSequence: resume, entryCount: count))

        case .bulkChunk:
            let id = try r.u32("requestID")
            let count = Int(try r.u16("count"))
            guard count <= maxEntriesPerStreamFrame else {
                throw r.fail("count \(count) exceeds \(maxEntriesPerStreamFrame) entries per stream frame")
            }
            try r.expectItems(count, size: SyncWire.entrySize, "count")
            let entries = try decodeEntries(&r, count: count)
            message = .bulkChunk(BulkChunk(requestID: id, entries: entries))

        case .bulkEnd:
            let id = try r.u32("requestID")
            let count = try r.u64("entryCount")
            message = .bulkEnd(BulkEnd(requestID: id, entryCount: count))

        case .keepalive:
            let next = try r.u64("nextSequence")
            let inSync = try r.bool("inSync")
            let count = try r.u64("entryCount")
            guard next >= 1 else { throw r.fail("nextSequence is 0; delta sequences start at 1") }
            message = .keepalive(Keepalive(nextSequence: next, inSync: inSync, entryCount: count))

        case .digest:
            let level = try r.u8("level")
            let bucket = try r.u16("bucket")
            let entryCount = try r.u64("entryCount")
            let count = Int(try r.u16("count"))
            switch level {
            case 0:
                guard bucket == 0 else { throw r.fail("level 0 digest has bucket \(bucket), must be 0") }
            case 1:
                guard Int(bucket) < SyncWire.digestFanout else {
                    throw r.fail("bucket \(bucket) is not below the fan-out \(SyncWire.digestFanout)")
                }
            default:
                throw r.fail("level \(level), must be 0 or 1")
            }
            guard count == SyncWire.digestFanout else {
                throw r.fail("count \(count), must be the fan-out \(SyncWire.digestFanout)")
            }
            try r.expectItems(count, size: 8, "count")
            var hashes: [UInt64] = []
            hashes.reserveCapacity(count)
            for _ in 0..<count { hashes.append(try r.u64("hash")) }
            message = .digest(Digest(level: level, bucket: bucket, entryCount: entryCount, hashes: hashes))

        case .digestRequest:
            let count = Int(try r.u16("count"))
            guard count <= SyncWire.digestFanout else {
                throw r.fail("count \(count) exceeds \(SyncWire.digestFanout) buckets")
            }
            try r.expectItems(count, size: 2, "count")
            let buckets = try ascendingU16s(&r, count: count, below: SyncWire.digestFanout, "bucket")
            message = .digestRequest(DigestRequest(buckets: buckets))

        case .probe, .probeAck:
            let id = try r.u32("probeID")
            let target = try nodeID(&r, "target")
            let requester = try r.u32("requester")
            let p = Probe(probeID: id, target: target, requester: requester, gossip: try decodeGossip(&r))
            message = type == .probe ? .probe(p) : .probeAck(p)

        case .probeRequest:
            let id = try r.u32("probeID")
            let target = try nodeID(&r, "target")
            message = .probeRequest(ProbeRequest(probeID: id, target: target, gossip: try decodeGossip(&r)))

        case .serviceDigest:
            let count = try r.u32("count")
            let digest = try r.u64("digest")
            let maxVersion = try r.u64("maxVersion")
            guard count > 0 || digest == 0 else { throw r.fail("digest 0x\(hex(digest)) of an empty table, must be 0") }
            message = .serviceDigest(ServiceDigest(count: count, digest: digest, maxVersion: maxVersion))

        case .serviceRecords:
            let count = Int(try r.u16("count"))
            // Each record takes at least its fixed part: refuse a count the bytes cannot hold
            // before allocating for it.
            try r.expectAtLeast(count, size: SyncWire.serviceRecordFixed, "count")
            var records: [ServiceRecord] = []
            records.reserveCapacity(count)
            for i in 0..<count {
                r.entryIndex = i
                records.append(try decodeServiceRecord(&r))
            }
            r.entryIndex = nil
            message = .serviceRecords(ServiceRecords(records: records))

        case .endpointVerdicts:
            message = .endpointVerdicts(try decodeEndpointVerdicts(&r))
        }
        try r.expectEnd()
        return message
    }

    public static func decodePayload(type: SyncMessageType, _ bytes: [UInt8]) throws(SyncDecodeError) -> SyncMessage {
        try withBytes(bytes) { (b) throws(SyncDecodeError) in try decodePayload(type: type, b) }
    }

    // MARK: Entries

    /// One 52-byte entry. `.fromPeer` is local bookkeeping and is cleared; the translated
    /// tuple's protocol is not sent (it is the key's).
    public static func encodeEntry(_ e: SyncEntry) -> [UInt8] {
        var w = ByteWriter(capacity: SyncWire.entrySize)
        encodeEntry(e, into: &w)
        return w.bytes
    }

    static func encodeEntry(_ e: SyncEntry, into w: inout ByteWriter) {
        let r = e.record
        w.u8(e.operation.rawValue)
        w.u8(r.key.proto)
        w.u8(r.natMode.rawValue)
        w.u8(r.state.rawValue)
        w.u8(r.flags.subtracting(.fromPeer).rawValue)
        w.u8(r.endpointIndex)
        w.u16(0)  // reserved
        encodeTuple(r.key, into: &w)
        encodeTuple(r.translated, into: &w)
        w.u64(e.version)
        w.u32(e.origin)
        w.u32(r.ageMilliseconds)
        w.u32(r.remainingMilliseconds)
    }

    private static func encodeTuple(_ t: FlowTuple, into w: inout ByteWriter) {
        w.u32(t.source.value)
        w.u32(t.destination.value)
        w.u16(t.sourcePort)
        w.u16(t.destinationPort)
    }

    /// Decodes exactly one 52-byte entry.
    public static func decodeEntry(_ bytes: UnsafeRawBufferPointer) throws(SyncDecodeError) -> SyncEntry {
        var r = ByteReader(bytes, context: "entry")
        let e = try decodeEntry(&r)
        try r.expectEnd()
        return e
    }

    private static func decodeEntries(_ r: inout ByteReader, count: Int) throws(SyncDecodeError) -> [SyncEntry] {
        var entries: [SyncEntry] = []
        entries.reserveCapacity(count)
        for i in 0..<count {
            r.entryIndex = i
            entries.append(try decodeEntry(&r))
        }
        r.entryIndex = nil
        return entries
    }

    private static func decodeEntry(_ r: inout ByteReader) throws(SyncDecodeError) -> SyncEntry {
        let rawOp = try r.u8("op")
        guard let op = SyncEntry.Operation(rawValue: rawOp) else { throw r.fail("unknown op \(rawOp)") }
        let proto = try r.u8("proto")
        guard proto == 6 || proto == 17 || proto == 1 else {
            throw r.fail("protocol \(proto), must be 6 (TCP), 17 (UDP) or 1 (ICMP)")
        }
        let rawNAT = try r.u8("natMode")
        guard let nat = NATMode(rawValue: rawNAT) else { throw r.fail("unknown NAT mode \(rawNAT)") }
        let rawState = try r.u8("state")
        guard let state = ConnectionState(rawValue: rawState) else { throw r.fail("unknown state \(rawState)") }
        let flags = ConnectionFlags(rawValue: try r.u8("flags"))
        guard !flags.contains(.fromPeer) else { throw r.fail("flags carry the local fromPeer bit (0x08)") }
        guard wireEntryFlags.isSuperset(of: flags) else {
            throw r.fail("undefined flag bits 0x\(hex(flags.subtracting(wireEntryFlags).rawValue))")
        }
        let endpointIndex = try r.u8("endpointIndex")
        let reserved = try r.u16("reserved")
        guard reserved == 0 else { throw r.fail("reserved is 0x\(hex(reserved)), must be 0") }
        let key = try decodeTuple(&r, proto: proto)
        let translated = try decodeTuple(&r, proto: proto)
        let version = try r.u64("version")
        let origin = try r.u32("origin")
        let age = try r.u32("ageMs")
        let remaining = try r.u32("remainingMs")
        let record = FlowRecord(key: key, translated: translated, natMode: nat, state: state, flags: flags,
                                endpointIndex: endpointIndex, ageMilliseconds: age, remainingMilliseconds: remaining)
        return SyncEntry(operation: op, record: record, version: version, origin: origin)
    }

    private static func decodeTuple(_ r: inout ByteReader, proto: UInt8) throws(SyncDecodeError) -> FlowTuple {
        let s = try r.u32("saddr")
        let d = try r.u32("daddr")
        let sp = try r.u16("sport")
        let dp = try r.u16("dport")
        return FlowTuple(source: IPv4Address(s), destination: IPv4Address(d), sourcePort: sp, destinationPort: dp,
                         proto: proto)
    }

    // MARK: Service records

    static func encodeServiceRecord(_ s: ServiceRecord, into w: inout ByteWriter) {
        w.u32(s.key.vip.value)
        w.u16(s.key.port)
        w.u8(s.key.proto.rawValue)
        w.u8(s.isTombstone ? 0x01 : 0)
        w.u64(s.version)
        w.u32(s.origin)
        let spec = s.spec ?? []
        precondition(spec.count <= SyncWire.maxServiceSpec, "service spec of \(spec.count) bytes")
        w.u16(UInt16(spec.count))
        w.bytes.append(contentsOf: spec)
    }

    private static func decodeServiceRecord(_ r: inout ByteReader) throws(SyncDecodeError) -> ServiceRecord {
        let vip = try r.u32("vip")
        let port = try r.u16("port")
        let rawProto = try r.u8("proto")
        guard let proto = L4Protocol(rawValue: rawProto) else { throw r.fail("protocol \(rawProto), must be 6 (TCP) or 17 (UDP)") }
        guard port != 0 else { throw r.fail("port is 0") }
        let flags = try r.u8("flags")
        guard flags & ~0x01 == 0 else { throw r.fail("undefined record flag bits 0x\(hex(flags & ~0x01))") }
        let version = try r.u64("version")
        guard version != 0 else { throw r.fail("version is 0; versions start at 1") }
        let origin = try nodeID(&r, "origin")
        let length = Int(try r.u16("specLength"))
        let tombstone = flags & 0x01 != 0
        if tombstone {
            guard length == 0 else { throw r.fail("a tombstone carries a \(length)-byte spec, must be empty") }
        } else {
            guard length > 0 else { throw r.fail("a live record with an empty spec") }
            guard length <= SyncWire.maxServiceSpec else {
                throw r.fail("spec of \(length) bytes exceeds \(SyncWire.maxServiceSpec)")
            }
        }
        let spec = tombstone ? nil : try r.rawBytes(length, "spec")
        return ServiceRecord(key: ServiceKey(vip: IPv4Address(vip), port: port, proto: proto), version: version,
                             origin: origin, spec: spec)
    }

    // MARK: Endpoint verdicts

    private static func decodeEndpointVerdicts(_ r: inout ByteReader) throws(SyncDecodeError) -> EndpointVerdicts {
        let generation = try r.u64("generation")
        guard generation != 0 else { throw r.fail("generation is 0; generations start at 1") }
        let flags = try r.u8("flags")
        guard flags & ~0x01 == 0 else { throw r.fail("undefined flag bits 0x\(hex(flags & ~0x01))") }
        let more = flags & 0x01 != 0
        let part = try r.u8("part")
        guard Int(part) < SyncWire.maxVerdictParts else {
            throw r.fail("part \(part), a set has at most \(SyncWire.maxVerdictParts) parts")
        }
        guard !more || Int(part) < SyncWire.maxVerdictParts - 1 else {
            throw r.fail("part \(part) is the last a set may have but says more follow")
        }
        let serviceCount = Int(try r.u16("serviceCount"))
        let hostCount = Int(try r.u16("hostCount"))
        // Both lists' fixed parts must fit the bytes before anything is allocated for them.
        try r.expectAtLeast(serviceCount * SyncWire.serviceVerdictFixed + hostCount * SyncWire.hostVerdictSize, size: 1,
                            "counts")
        var services: [ServiceVerdict] = []
        services.reserveCapacity(serviceCount)
        var previousKey: ServiceKey?
        for i in 0..<serviceCount {
            r.entryIndex = i
            let vip = try r.u32("vip")
            let port = try r.u16("port")
            guard port != 0 else { throw r.fail("service port is 0") }
            let rawProto = try r.u8("proto")
            guard let proto = L4Protocol(rawValue: rawProto) else {
                throw r.fail("protocol \(rawProto), must be 6 (TCP) or 17 (UDP)")
            }
            let key = ServiceKey(vip: IPv4Address(vip), port: port, proto: proto)
            if let p = previousKey, !(p < key) { throw r.fail("service \(key) is not above the previous (\(p))") }
            previousKey = key
            let count = Int(try r.u8("count"))
            guard count <= DatapathLimits.maxEndpoints else {
                throw r.fail("count \(count) exceeds \(DatapathLimits.maxEndpoints) endpoints")
            }
            try r.expectAtLeast(count, size: SyncWire.downEndpointSize, "count")
            var down: [DownEndpoint] = []
            down.reserveCapacity(count)
            for j in 0..<count {
                let address = IPv4Address(try r.u32("address"))
                let epPort = try r.u16("endpoint port")
                guard epPort != 0 else { throw r.fail("endpoint \(j) has port 0") }
                let reasons = VerdictReasons(rawValue: try r.u8("reasons"))
                guard !reasons.isEmpty else { throw r.fail("endpoint \(j) is down for no reason (reasons 0)") }
                guard VerdictReasons.known.isSuperset(of: reasons) else {
                    throw r.fail("endpoint \(j): undefined reason bits 0x\(hex(reasons.subtracting(.known).rawValue))")
                }
                let reserved = try r.u8("reserved")
                guard reserved == 0 else { throw r.fail("endpoint \(j): reserved is 0x\(hex(reserved)), must be 0") }
                let since = try r.u64("since")
                guard since != 0 else { throw r.fail("endpoint \(j): since is 0") }
                if let last = down.last, !((last.address, last.port) < (address, epPort)) {
                    throw r.fail("endpoint \(j) (\(address):\(epPort)) is not above the previous (\(last.identity))")
                }
                down.append(DownEndpoint(address: address, port: epPort, reasons: reasons, sinceMicros: since))
            }
            services.append(ServiceVerdict(key: key, down: down))
        }
        r.entryIndex = nil
        try r.expectItems(hostCount, size: SyncWire.hostVerdictSize, "hostCount")
        var hosts: [HostVerdict] = []
        hosts.reserveCapacity(hostCount)
        for i in 0..<hostCount {
            let host = IPv4Address(try r.u32("host"))
            let rawState = try r.u8("state")
            guard let state = HostVerdictState(rawValue: rawState) else {
                throw r.fail("host \(i): state \(rawState), must be 1 (green), 2 (yellow) or 3 (red)")
            }
            let reserved = try r.u8("reserved")
            guard reserved == 0 else { throw r.fail("host \(i): reserved is 0x\(hex(reserved)), must be 0") }
            let version = try r.u64("version")
            guard version != 0 else { throw r.fail("host \(i): version is 0; versions start at 1") }
            let origin = try nodeID(&r, "origin")
            if let last = hosts.last, !(last.host < host) {
                throw r.fail("host \(i) (\(host)) is not above the previous (\(last.host))")
            }
            hosts.append(HostVerdict(host: host, state: state, version: version, origin: origin))
        }
        return EndpointVerdicts(generation: generation, part: part, more: more, services: services, hosts: hosts)
    }

    // MARK: Gossip

    static func encodeGossip(_ g: Gossip, into w: inout ByteWriter) {
        precondition(g.updates.count <= maxGossipUpdates && g.adverts.count <= maxGossipAdverts,
                     "gossip with \(g.updates.count) updates and \(g.adverts.count) adverts")
        w.u8(UInt8(g.updates.count))
        w.u8(UInt8(g.adverts.count))
        for u in g.updates {
            w.u32(u.node)
            w.u32(u.incarnation)
            w.u8(u.status.rawValue)
        }
        for a in g.adverts {
            w.u32(a.instance)
            w.u64(a.term)
            w.u8(a.role.rawValue)
            w.u8(a.priority)
            w.u8(a.flags.rawValue)
            w.u8(0)  // reserved
        }
    }

    private static func nodeID(_ r: inout ByteReader, _ field: StaticString) throws(SyncDecodeError) -> UInt32 {
        let v = try r.u32(field)
        guard v != 0 else { throw r.fail("\(field) is 0; node ids are non-zero") }
        return v
    }

    private static func decodeGossip(_ r: inout ByteReader) throws(SyncDecodeError) -> Gossip {
        let updateCount = Int(try r.u8("updateCount"))
        let advertCount = Int(try r.u8("advertCount"))
        guard updateCount <= maxGossipUpdates else {
            throw r.fail("updateCount \(updateCount) exceeds \(maxGossipUpdates)")
        }
        guard advertCount <= maxGossipAdverts else {
            throw r.fail("advertCount \(advertCount) exceeds \(maxGossipAdverts)")
        }
        try r.expectItems(updateCount * memberUpdateSize + advertCount * advertSize, size: 1, "counts")
        var g = Gossip()
        g.updates.reserveCapacity(updateCount)
        g.adverts.reserveCapacity(advertCount)
        for _ in 0..<updateCount {
            let node = try nodeID(&r, "update node")
            let incarnation = try r.u32("incarnation")
            let raw = try r.u8("status")
            guard let status = MemberStatus(rawValue: raw) else { throw r.fail("unknown member status \(raw)") }
            g.updates.append(MemberUpdate(node: node, incarnation: incarnation, status: status))
        }
        for _ in 0..<advertCount {
            let instance = try r.u32("instance")
            let term = try r.u64("term")
            let rawRole = try r.u8("role")
            guard let role = HARole(rawValue: rawRole) else { throw r.fail("unknown role \(rawRole)") }
            let priority = try r.u8("priority")
            let flags = InstanceAdvert.Flags(rawValue: try r.u8("flags"))
            guard InstanceAdvert.Flags.known.isSuperset(of: flags) else {
                throw r.fail("undefined advert flag bits 0x\(hex(flags.subtracting(.known).rawValue))")
            }
            let reserved = try r.u8("reserved")
            guard reserved == 0 else { throw r.fail("advert reserved is 0x\(hex(reserved)), must be 0") }
            g.adverts.append(InstanceAdvert(instance: instance, term: term, role: role, priority: priority, flags: flags))
        }
        return g
    }

    // MARK: Validation

    /// Whether `m` would survive a round trip: encodes it and decodes the result. The sealer
    /// asserts this in debug builds, so a message the receiver would drop fails at the sender.
    public static func validate(_ m: SyncMessage) -> SyncDecodeError? {
        do {
            _ = try decodePayload(type: m.type, encodePayload(m))
            return nil
        } catch {
            return error
        }
    }

    // MARK: Helpers

    private static func ascendingU16s(_ r: inout ByteReader, count: Int, below limit: Int, _ what: String)
        throws(SyncDecodeError) -> [UInt16]
    {
        var values: [UInt16] = []
        values.reserveCapacity(count)
        var previous: UInt16?
        for i in 0..<count {
            let v = try r.u16("value")
            guard Int(v) < limit else { throw r.fail("\(what) \(i) is \(v), must be below \(limit)") }
            if let p = previous, v <= p { throw r.fail("\(what) \(i) (\(v)) is not above the previous (\(p))") }
            values.append(v)
            previous = v
        }
        return values
    }

    private static func count16(_ n: Int, _ what: StaticString) -> UInt16 {
        precondition(n <= Int(UInt16.max), "\(what): \(n) do not fit a u16 count")
        return UInt16(n)
    }

    static func withBytes<R>(_ bytes: [UInt8], _ body: (UnsafeRawBufferPointer) throws(SyncDecodeError) -> R)
        throws(SyncDecodeError) -> R
    {
        // withUnsafeBytes rethrows untyped; route the typed error through a Result.
        let result: Result<R, SyncDecodeError> = bytes.withUnsafeBytes { raw in
            do throws(SyncDecodeError) { return .success(try body(raw)) } catch { return .failure(error) }
        }
        return try result.get()
    }
}

/// Lower-case hex of an integer, zero-padded to its width (for error details).
fileprivate func hex<T: FixedWidthInteger & UnsignedInteger>(_ v: T) -> String {
    let digits = String(v, radix: 16)
    let width = T.bitWidth / 4
    return digits.count >= width ? digits : String(repeating: "0", count: width - digits.count) + digits
}

extension SyncMessageType {
    /// The name SPEC.md and the vectors use ("delta batch" -> "deltaBatch").
    public var wireName: String {
        switch self {
        case .hello: "hello"
        case .deltaBatch: "deltaBatch"
        case .ack: "ack"
        case .nack: "nack"
        case .bulkRequest: "bulkRequest"
        case .bulkBegin: "bulkBegin"
        case .bulkChunk: "bulkChunk"
        case .bulkEnd: "bulkEnd"
        case .keepalive: "keepalive"
        case .digest: "digest"
        case .digestRequest: "digestRequest"
        case .probe: "probe"
        case .probeRequest: "probeRequest"
        case .probeAck: "probeAck"
        case .serviceDigest: "serviceDigest"
        case .serviceRecords: "serviceRecords"
        case .endpointVerdicts: "endpointVerdicts"
        }
    }

    /// Membership types, which travel only on the gossip channel.
    public var isGossip: Bool {
        switch self {
        case .probe, .probeRequest, .probeAck: true
        default: false
        }
    }

    /// Service-sharing and verdict types, which travel only on the config channel.
    public var isConfig: Bool {
        switch self {
        case .serviceDigest, .serviceRecords, .endpointVerdicts: true
        default: false
        }
    }
}
