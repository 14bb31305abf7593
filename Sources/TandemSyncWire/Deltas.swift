import TandemCore

/// One replicated change of one connection.
public struct SyncEntry: Hashable, Sendable {
    public enum Operation: UInt8, Sendable {
        case upsert = 1
        case delete = 2
    }
    public var operation: Operation
    /// For a delete only `record.key` is meaningful; the codec writes the other fields as sent.
    public var record: FlowRecord
    /// Orders updates of the same flow, newest wins: a hybrid logical clock in microseconds,
    /// max(wall clock, previous version + 1) at the node that made the change.
    public var version: UInt64
    /// Node id of the node that made this change (the flow's current owner).
    public var origin: UInt32

    public init(operation: Operation, record: FlowRecord, version: UInt64, origin: UInt32) {
        self.operation = operation
        self.record = record
        self.version = version
        self.origin = origin
    }
}

public struct Hello: Hashable, Sendable {
    /// TCP port the sender serves bulk transfers on.
    public var bulkPort: UInt16
    /// The sender holds the cluster's full table.
    public var inSync: Bool
    /// Next delta sequence the sender will use.
    public var nextSequence: UInt64
    public init(bulkPort: UInt16, inSync: Bool, nextSequence: UInt64) {
        self.bulkPort = bulkPort
        self.inSync = inSync
        self.nextSequence = nextSequence
    }
}

/// Consecutive deltas: entry i has delta sequence firstSequence + i.
public struct DeltaBatch: Hashable, Sendable {
    public var firstSequence: UInt64
    public var entries: [SyncEntry]
    public init(firstSequence: UInt64, entries: [SyncEntry]) {
        self.firstSequence = firstSequence
        self.entries = entries
    }
}

/// Receiver -> sender: every delta up to `cumulative` of the sender's stream `streamEpoch` arrived.
public struct Ack: Hashable, Sendable {
    public var streamEpoch: UInt64
    public var cumulative: UInt64
    public init(streamEpoch: UInt64, cumulative: UInt64) {
        self.streamEpoch = streamEpoch
        self.cumulative = cumulative
    }
}

/// Receiver -> sender: an ack plus the ranges still missing above it (inclusive bounds).
public struct Nack: Hashable, Sendable {
    public var streamEpoch: UInt64
    public var cumulative: UInt64
    /// At most `maxNackRanges`, each above `cumulative`, ascending, not overlapping.
    public var missing: [ClosedRange<UInt64>]
    public init(streamEpoch: UInt64, cumulative: UInt64, missing: [ClosedRange<UInt64>]) {
        self.streamEpoch = streamEpoch
        self.cumulative = cumulative
        self.missing = missing
    }
}

/// Sent when the delta stream is idle, so receivers notice lost tail deltas and dead peers.
public struct Keepalive: Hashable, Sendable {
    public var nextSequence: UInt64
    public var inSync: Bool
    public var entryCount: UInt64
    public init(nextSequence: UInt64, inSync: Bool, entryCount: UInt64) {
        self.nextSequence = nextSequence
        self.inSync = inSync
        self.entryCount = entryCount
    }
}

// MARK: - Codec

extension SyncCodec {
    /// Fixed part of a delta batch: firstSequence u64, count u16.
    static let deltaBatchFixed = 10
    /// Fixed part of a nack: streamEpoch u64, cumulative u64, count u8.
    static let nackFixed = 17
    /// Most entries in one delta batch datagram: (1472 - 28 - 16 - 10) / 52 = 27.
    public static let maxEntriesPerDatagram = (SyncChannel.datagram.maxPayload - deltaBatchFixed) / SyncWire.entrySize
    /// Flag bits an entry may carry on the wire: everything ConnectionFlags defines except the
    /// local `.fromPeer` bookkeeping bit.
    public static let wireEntryFlags: ConnectionFlags = [.finOriginal, .finReply, .pickedUp]

    /// One 52-byte entry. `.fromPeer` is local bookkeeping and is cleared; the translated
    /// tuple's protocol is not sent (it is the key's).
    public static func encodeEntry(_ e: SyncEntry) -> [UInt8] {
        var w = ByteWriter(capacity: SyncWire.entrySize)
        e.encode(into: &w)
        return w.bytes
    }

    /// Decodes exactly one 52-byte entry.
    public static func decodeEntry(_ bytes: UnsafeRawBufferPointer) throws(SyncDecodeError) -> SyncEntry {
        var r = ByteReader(bytes, context: "entry")
        let e = try SyncEntry.decode(from: &r)
        try r.expectEnd()
        return e
    }
}

extension SyncEntry {
    func encode(into w: inout ByteWriter) {
        let r = record
        w.u8(operation.rawValue)
        w.u8(r.key.proto)
        w.u8(r.natMode.rawValue)
        w.u8(r.state.rawValue)
        w.u8(r.flags.subtracting(.fromPeer).rawValue)
        w.u8(r.endpointIndex)
        w.u16(0)  // reserved
        Self.encodeTuple(r.key, into: &w)
        Self.encodeTuple(r.translated, into: &w)
        w.u64(version)
        w.u32(origin)
        w.u32(r.ageMilliseconds)
        w.u32(r.remainingMilliseconds)
    }

    private static func encodeTuple(_ t: FlowTuple, into w: inout ByteWriter) {
        w.u32(t.source.value)
        w.u32(t.destination.value)
        w.u16(t.sourcePort)
        w.u16(t.destinationPort)
    }

    static func decode(from r: inout ByteReader) throws(SyncDecodeError) -> SyncEntry {
        let rawOp = try r.u8("op")
        guard let op = Operation(rawValue: rawOp) else { throw r.fail("unknown op \(rawOp)") }
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
        guard SyncCodec.wireEntryFlags.isSuperset(of: flags) else {
            throw r.fail("undefined flag bits 0x\(hex(flags.subtracting(SyncCodec.wireEntryFlags).rawValue))")
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

    /// `count` entries, each named by its index in error details.
    static func decodeList(_ r: inout ByteReader, count: Int) throws(SyncDecodeError) -> [SyncEntry] {
        try r.list(count) { (r) throws(SyncDecodeError) in try decode(from: &r) }
    }
}

extension Hello: WirePayload {
    var wireSize: Int { 11 }

    func encode(into w: inout ByteWriter) {
        w.u16(bulkPort)
        w.bool(inSync)
        w.u64(nextSequence)
    }

    static func decode(from r: inout ByteReader) throws(SyncDecodeError) -> Hello {
        let bulkPort = try r.u16("bulkPort")
        let inSync = try r.bool("inSync")
        let next = try r.u64("nextSequence")
        guard next >= 1 else { throw r.fail("nextSequence is 0; delta sequences start at 1") }
        return Hello(bulkPort: bulkPort, inSync: inSync, nextSequence: next)
    }
}

extension DeltaBatch: WirePayload {
    var wireSize: Int { SyncCodec.deltaBatchFixed + entries.count * SyncWire.entrySize }

    func encode(into w: inout ByteWriter) {
        w.u64(firstSequence)
        w.u16(count16(entries.count, "delta batch entries"))
        for e in entries { e.encode(into: &w) }
    }

    static func decode(from r: inout ByteReader) throws(SyncDecodeError) -> DeltaBatch {
        let (first, count) = try decodeFixedPart(&r, limit: SyncCodec.maxEntriesPerDatagram, entrySize: SyncWire.entrySize)
        return DeltaBatch(firstSequence: first, entries: try SyncEntry.decodeList(&r, count: count))
    }

    /// firstSequence and count of a delta batch of either entry kind, checked against the limit
    /// and the bytes that follow.
    static func decodeFixedPart(_ r: inout ByteReader, limit: Int, entrySize: Int) throws(SyncDecodeError) -> (UInt64, Int) {
        let first = try r.u64("firstSequence")
        let count = Int(try r.u16("count"))
        guard count <= limit else { throw r.fail("count \(count) exceeds \(limit) entries per datagram") }
        // Delta sequences start at 1, and the last one (first + count - 1) must not wrap.
        guard first >= 1 else { throw r.fail("firstSequence is 0; delta sequences start at 1") }
        guard count == 0 || first <= UInt64.max - UInt64(count - 1) else {
            throw r.fail("firstSequence \(first) + count \(count) overflows")
        }
        try r.expectItems(count, size: entrySize, "count")
        return (first, count)
    }
}

extension Ack: WirePayload {
    var wireSize: Int { 16 }

    func encode(into w: inout ByteWriter) {
        w.u64(streamEpoch)
        w.u64(cumulative)
    }

    static func decode(from r: inout ByteReader) throws(SyncDecodeError) -> Ack {
        let epoch = try r.u64("streamEpoch")
        let cumulative = try r.u64("cumulative")
        return Ack(streamEpoch: epoch, cumulative: cumulative)
    }
}

extension Nack: WirePayload {
    var wireSize: Int { SyncCodec.nackFixed + missing.count * 16 }

    func encode(into w: inout ByteWriter) {
        w.u64(streamEpoch)
        w.u64(cumulative)
        precondition(missing.count <= Int(UInt8.max), "nack has \(missing.count) ranges")
        w.u8(UInt8(missing.count))
        for range in missing {
            w.u64(range.lowerBound)
            w.u64(range.upperBound)
        }
    }

    static func decode(from r: inout ByteReader) throws(SyncDecodeError) -> Nack {
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
        return Nack(streamEpoch: epoch, cumulative: cumulative, missing: missing)
    }
}

extension Keepalive: WirePayload {
    var wireSize: Int { 17 }

    func encode(into w: inout ByteWriter) {
        w.u64(nextSequence)
        w.bool(inSync)
        w.u64(entryCount)
    }

    static func decode(from r: inout ByteReader) throws(SyncDecodeError) -> Keepalive {
        let next = try r.u64("nextSequence")
        let inSync = try r.bool("inSync")
        let count = try r.u64("entryCount")
        guard next >= 1 else { throw r.fail("nextSequence is 0; delta sequences start at 1") }
        return Keepalive(nextSequence: next, inSync: inSync, entryCount: count)
    }
}
