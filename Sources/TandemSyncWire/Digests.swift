import TandemCore

/// Anti-entropy digest: level 0 hashes the whole table in `digestFanout` buckets; level 1 hashes
/// the sub-buckets of one level-0 bucket (`bucket`). A bucket's hash is the wrapping sum of its
/// entries' hashes (flow key, version and operation), so it is maintained incrementally.
public struct Digest: Hashable, Sendable {
    /// 0 or 1.
    public var level: UInt8
    /// Level 1: the level-0 bucket (< digestFanout). Level 0: always 0.
    public var bucket: UInt16
    /// Entries (upserts and retained delete tombstones) in the sender's whole table, at both levels.
    public var entryCount: UInt64
    /// Exactly `digestFanout` hashes (SyncHashing.entryHash sums; proto/SPEC.md §10).
    public var hashes: [UInt64]
    public init(level: UInt8, bucket: UInt16, entryCount: UInt64, hashes: [UInt64]) {
        self.level = level
        self.bucket = bucket
        self.entryCount = entryCount
        self.hashes = hashes
    }
}

/// Asks for the level-1 digests of these level-0 buckets.
public struct DigestRequest: Hashable, Sendable {
    public var buckets: [UInt16]
    public init(buckets: [UInt16]) { self.buckets = buckets }
}

// MARK: - Codec

extension SyncCodec {
    /// Fixed part of a digest: level u8, bucket u16, entryCount u64, count u16.
    static let digestFixed = 13
    /// Digest leaves: level-0 buckets times level-1 sub-buckets (128 * 128 = 16384).
    public static let digestLeaves = SyncWire.digestFanout * SyncWire.digestFanout
}

extension Digest: WirePayload {
    var wireSize: Int { SyncCodec.digestFixed + hashes.count * 8 }

    func encode(into w: inout ByteWriter) {
        w.u8(level)
        w.u16(bucket)
        w.u64(entryCount)
        w.u16(count16(hashes.count, "digest hashes"))
        for h in hashes { w.u64(h) }
    }

    static func decode(from r: inout ByteReader) throws(SyncDecodeError) -> Digest {
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
        return Digest(level: level, bucket: bucket, entryCount: entryCount, hashes: hashes)
    }
}

extension DigestRequest: WirePayload {
    var wireSize: Int { 2 + buckets.count * 2 }

    func encode(into w: inout ByteWriter) {
        w.u16(count16(buckets.count, "digest request buckets"))
        for b in buckets { w.u16(b) }
    }

    static func decode(from r: inout ByteReader) throws(SyncDecodeError) -> DigestRequest {
        let count = Int(try r.u16("count"))
        guard count <= SyncWire.digestFanout else {
            throw r.fail("count \(count) exceeds \(SyncWire.digestFanout) buckets")
        }
        try r.expectItems(count, size: 2, "count")
        return DigestRequest(buckets: try ascendingU16s(&r, count: count, below: SyncWire.digestFanout, "bucket"))
    }
}
