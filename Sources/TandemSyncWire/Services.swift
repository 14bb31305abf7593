import TandemCore

// MARK: - Service table sharing (config channel)

/// One service as the cluster shares it: the newest write of its key, or a tombstone.
public struct ServiceRecord: Hashable, Sendable {
    public var key: ServiceKey
    /// A hybrid logical clock in microseconds at the node that made the write; newest wins, ties
    /// go to the higher origin.
    public var version: UInt64
    /// Node id of the node where the write was made (non-zero).
    public var origin: UInt32
    /// The service's full configuration as UTF-8 JSON (the API's load-balancer entry); nil for a
    /// delete (tombstone). Opaque to the codec; the node validates it as an API request.
    public var spec: [UInt8]?

    public init(key: ServiceKey, version: UInt64, origin: UInt32, spec: [UInt8]?) {
        self.key = key
        self.version = version
        self.origin = origin
        self.spec = spec
    }

    public var isTombstone: Bool { spec == nil }

    /// Whether this write beats `other` of the same key: newer version, then higher origin.
    public func supersedes(_ other: ServiceRecord) -> Bool {
        (version, origin) > (other.version, other.origin)
    }
}

/// A summary of the sender's live service table: equal digests mean equal tables.
public struct ServiceDigest: Hashable, Sendable {
    /// Live services (tombstones not counted).
    public var count: UInt32
    /// Wrapping sum of SyncHashing.serviceHash over the live services.
    public var digest: UInt64
    /// Highest record version the sender holds, tombstones included (moves peers' clocks).
    public var maxVersion: UInt64
    public init(count: UInt32, digest: UInt64, maxVersion: UInt64) {
        self.count = count
        self.digest = digest
        self.maxVersion = maxVersion
    }
}

/// Part of the sender's service table; an empty one ends the table.
public struct ServiceRecords: Hashable, Sendable {
    public var records: [ServiceRecord]
    public init(records: [ServiceRecord]) { self.records = records }
}

// MARK: - Codec

extension SyncCodec {
    /// Encoded size of one service record.
    public static func serviceRecordSize(_ r: ServiceRecord) -> Int { r.wireSize }
}

extension ServiceRecord {
    var wireSize: Int { SyncWire.serviceRecordFixed + (spec?.count ?? 0) }

    func encode(into w: inout ByteWriter) {
        w.u32(key.vip.value)
        w.u16(key.port)
        w.u8(key.proto.rawValue)
        w.u8(isTombstone ? 0x01 : 0)
        w.u64(version)
        w.u32(origin)
        let spec = spec ?? []
        precondition(spec.count <= SyncWire.maxServiceSpec, "service spec of \(spec.count) bytes")
        w.u16(UInt16(spec.count))
        w.bytes.append(contentsOf: spec)
    }

    static func decode(from r: inout ByteReader) throws(SyncDecodeError) -> ServiceRecord {
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
}

extension ServiceDigest: WirePayload {
    var wireSize: Int { 20 }

    func encode(into w: inout ByteWriter) {
        w.u32(count)
        w.u64(digest)
        w.u64(maxVersion)
    }

    static func decode(from r: inout ByteReader) throws(SyncDecodeError) -> ServiceDigest {
        let count = try r.u32("count")
        let digest = try r.u64("digest")
        let maxVersion = try r.u64("maxVersion")
        guard count > 0 || digest == 0 else { throw r.fail("digest 0x\(hex(digest)) of an empty table, must be 0") }
        return ServiceDigest(count: count, digest: digest, maxVersion: maxVersion)
    }
}

extension ServiceRecords: WirePayload {
    var wireSize: Int { 2 + records.reduce(0) { $0 + $1.wireSize } }

    func encode(into w: inout ByteWriter) {
        w.u16(count16(records.count, "service records"))
        for rec in records { rec.encode(into: &w) }
    }

    static func decode(from r: inout ByteReader) throws(SyncDecodeError) -> ServiceRecords {
        let count = Int(try r.u16("count"))
        // Each record takes at least its fixed part: refuse a count the bytes cannot hold
        // before allocating for it.
        try r.expectAtLeast(count, size: SyncWire.serviceRecordFixed, "count")
        let records = try r.list(count) { (r) throws(SyncDecodeError) in try ServiceRecord.decode(from: &r) }
        return ServiceRecords(records: records)
    }
}
