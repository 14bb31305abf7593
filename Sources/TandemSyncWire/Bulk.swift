import TandemCore

/// Opens a bulk transfer on the TCP channel: the whole table, or only the listed digest leaves
/// (leaf = level-0 bucket * fanout + level-1 bucket), for anti-entropy pulls.
public struct BulkRequest: Hashable, Sendable {
    public var requestID: UInt32
    public var leaves: [UInt16]
    public init(requestID: UInt32, leaves: [UInt16]) {
        self.requestID = requestID
        self.leaves = leaves
    }
}

public struct BulkBegin: Hashable, Sendable {
    public var requestID: UInt32
    /// The sender's delta stream this snapshot is consistent with, and the first delta sequence
    /// not contained in it: the receiver continues the stream from there.
    public var streamEpoch: UInt64
    public var resumeSequence: UInt64
    public var entryCount: UInt64
    public init(requestID: UInt32, streamEpoch: UInt64, resumeSequence: UInt64, entryCount: UInt64) {
        self.requestID = requestID
        self.streamEpoch = streamEpoch
        self.resumeSequence = resumeSequence
        self.entryCount = entryCount
    }
}

public struct BulkChunk: Hashable, Sendable {
    public var requestID: UInt32
    public var entries: [SyncEntry]
    public init(requestID: UInt32, entries: [SyncEntry]) {
        self.requestID = requestID
        self.entries = entries
    }
}

public struct BulkEnd: Hashable, Sendable {
    public var requestID: UInt32
    public var entryCount: UInt64
    public init(requestID: UInt32, entryCount: UInt64) {
        self.requestID = requestID
        self.entryCount = entryCount
    }
}

// MARK: - Codec

extension SyncCodec {
    /// Fixed part of a bulk chunk: requestID u32, count u16.
    static let bulkChunkFixed = 6
    /// Most entries in one bulk chunk frame: (65536 - 28 - 16 - 6) / 52 = 1259.
    public static let maxEntriesPerStreamFrame = (SyncChannel.stream.maxPayload - bulkChunkFixed) / SyncWire.entrySize
}

extension BulkRequest: WirePayload {
    var wireSize: Int { 6 + leaves.count * 2 }

    func encode(into w: inout ByteWriter) {
        w.u32(requestID)
        w.u16(count16(leaves.count, "bulk request leaves"))
        for leaf in leaves { w.u16(leaf) }
    }

    static func decode(from r: inout ByteReader) throws(SyncDecodeError) -> BulkRequest {
        let id = try r.u32("requestID")
        let count = Int(try r.u16("count"))
        let limit = SyncCodec.digestLeaves
        guard count <= limit else { throw r.fail("count \(count) exceeds \(limit) leaves") }
        try r.expectItems(count, size: 2, "count")
        return BulkRequest(requestID: id, leaves: try ascendingU16s(&r, count: count, below: limit, "leaf"))
    }
}

extension BulkBegin: WirePayload {
    var wireSize: Int { 28 }

    func encode(into w: inout ByteWriter) {
        w.u32(requestID)
        w.u64(streamEpoch)
        w.u64(resumeSequence)
        w.u64(entryCount)
    }

    static func decode(from r: inout ByteReader) throws(SyncDecodeError) -> BulkBegin {
        let id = try r.u32("requestID")
        let epoch = try r.u64("streamEpoch")
        let resume = try r.u64("resumeSequence")
        let count = try r.u64("entryCount")
        guard resume >= 1 else { throw r.fail("resumeSequence is 0; delta sequences start at 1") }
        return BulkBegin(requestID: id, streamEpoch: epoch, resumeSequence: resume, entryCount: count)
    }
}

extension BulkChunk: WirePayload {
    var wireSize: Int { SyncCodec.bulkChunkFixed + entries.count * SyncWire.entrySize }

    func encode(into w: inout ByteWriter) {
        w.u32(requestID)
        w.u16(count16(entries.count, "bulk chunk entries"))
        for e in entries { e.encode(into: &w) }
    }

    static func decode(from r: inout ByteReader) throws(SyncDecodeError) -> BulkChunk {
        let id = try r.u32("requestID")
        let count = Int(try r.u16("count"))
        guard count <= SyncCodec.maxEntriesPerStreamFrame else {
            throw r.fail("count \(count) exceeds \(SyncCodec.maxEntriesPerStreamFrame) entries per stream frame")
        }
        try r.expectItems(count, size: SyncWire.entrySize, "count")
        return BulkChunk(requestID: id, entries: try SyncEntry.decodeList(&r, count: count))
    }
}

extension BulkEnd: WirePayload {
    var wireSize: Int { 12 }

    func encode(into w: inout ByteWriter) {
        w.u32(requestID)
        w.u64(entryCount)
    }

    static func decode(from r: inout ByteReader) throws(SyncDecodeError) -> BulkEnd {
        let id = try r.u32("requestID")
        let count = try r.u64("entryCount")
        return BulkEnd(requestID: id, entryCount: count)
    }
}
