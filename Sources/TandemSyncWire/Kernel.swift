import TandemCore

/// One replicated change of one kernel conntrack entry (proto/SPEC.md §15.3): what the kernel
/// table holds for it, versioned like a BPF entry (§9), keyed by its original tuple and zone.
public struct KernelSyncEntry: Hashable, Sendable {
    public var operation: SyncEntry.Operation
    /// For a delete only `connection.key` is meaningful; the other fields are sent as held.
    /// The kernel's entry id is node-local and not sent (decoded as 0); so are the TCP masks,
    /// which only requests carry (decoded as nil).
    public var connection: KernelConnection
    public var version: UInt64
    public var origin: UInt32

    public init(operation: SyncEntry.Operation, connection: KernelConnection, version: UInt64, origin: UInt32) {
        self.operation = operation
        self.connection = connection
        self.version = version
        self.origin = origin
    }
}

/// Consecutive deltas of the kernel table's stream: entry i has delta sequence firstSequence + i.
public struct KernelDeltaBatch: Hashable, Sendable {
    public var firstSequence: UInt64
    public var entries: [KernelSyncEntry]
    public init(firstSequence: UInt64, entries: [KernelSyncEntry]) {
        self.firstSequence = firstSequence
        self.entries = entries
    }
}

/// Part of a bulk transfer of the kernel table.
public struct KernelBulkChunk: Hashable, Sendable {
    public var requestID: UInt32
    public var entries: [KernelSyncEntry]
    public init(requestID: UInt32, entries: [KernelSyncEntry]) {
        self.requestID = requestID
        self.entries = entries
    }
}

// MARK: - Codec

extension SyncWire {
    /// Encoded size of one KernelSyncEntry.
    public static let kernelEntrySize = 60
}

extension SyncCodec {
    /// Most kernel entries in one delta batch datagram: (1472 - 28 - 16 - 10) / 60 = 23.
    public static let maxKernelEntriesPerDatagram =
        (SyncChannel.kernelDatagram.maxPayload - deltaBatchFixed) / SyncWire.kernelEntrySize
    /// Most kernel entries in one bulk chunk frame: (65536 - 28 - 16 - 6) / 60 = 1091.
    public static let maxKernelEntriesPerStreamFrame =
        (SyncChannel.kernelStream.maxPayload - bulkChunkFixed) / SyncWire.kernelEntrySize
}

extension KernelSyncEntry {
    /// Which optional fields an entry carries (byte 2).
    struct Present: OptionSet {
        let rawValue: UInt8
        static let tcp = Present(rawValue: 0x01)
        static let timeout = Present(rawValue: 0x02)
        static let flagsOriginal = Present(rawValue: 0x04)
        static let flagsReply = Present(rawValue: 0x08)
        static let windowScaleOriginal = Present(rawValue: 0x10)
        static let windowScaleReply = Present(rawValue: 0x20)
        static let known: Present = [.tcp, .timeout, .flagsOriginal, .flagsReply, .windowScaleOriginal, .windowScaleReply]
        static let tcpDetails: Present = [.flagsOriginal, .flagsReply, .windowScaleOriginal, .windowScaleReply]
    }

    /// The L4 form of both tuples (byte 10).
    enum L4Kind: UInt8 {
        case none = 0
        case ports = 1
        case icmp = 2
    }

    func encode(into w: inout ByteWriter) {
        let c = connection
        var present: Present = []
        if let tcp = c.tcp {
            present.insert(.tcp)
            if tcp.flagsOriginal != nil { present.insert(.flagsOriginal) }
            if tcp.flagsReply != nil { present.insert(.flagsReply) }
            if tcp.windowScaleOriginal != nil { present.insert(.windowScaleOriginal) }
            if tcp.windowScaleReply != nil { present.insert(.windowScaleReply) }
        }
        if c.timeout != nil { present.insert(.timeout) }
        w.u8(operation.rawValue)
        w.u8(c.original.proto)
        w.u8(present.rawValue)
        w.u8(c.tcp?.state.rawValue ?? 0)
        w.u8(c.tcp?.flagsOriginal ?? 0)
        w.u8(c.tcp?.flagsReply ?? 0)
        w.u8(c.tcp?.windowScaleOriginal ?? 0)
        w.u8(c.tcp?.windowScaleReply ?? 0)
        w.u16(c.zone)
        w.u8(Self.kind(of: c.original.l4).rawValue)
        w.u8(0)  // reserved
        w.u32(c.status.rawValue)
        w.u32(c.mark)
        w.u32(c.timeout ?? 0)
        Self.encodeTuple(c.original, into: &w)
        Self.encodeTuple(c.reply, into: &w)
        w.u64(version)
        w.u32(origin)
    }

    static func kind(of l4: KernelTuple.L4) -> L4Kind {
        switch l4 {
        case .ports: .ports
        case .icmp: .icmp
        case .none: .none
        }
    }

    private static func encodeTuple(_ t: KernelTuple, into w: inout ByteWriter) {
        w.u32(t.source.value)
        w.u32(t.destination.value)
        switch t.l4 {
        case .ports(let s, let d):
            w.u16(s)
            w.u16(d)
        case .icmp(let id, let type, let code):
            w.u16(id)
            w.u16(UInt16(type) << 8 | UInt16(code))
        case .none:
            w.u32(0)
        }
    }

    static func decode(from r: inout ByteReader) throws(SyncDecodeError) -> KernelSyncEntry {
        let rawOp = try r.u8("op")
        guard let op = SyncEntry.Operation(rawValue: rawOp) else { throw r.fail("unknown op \(rawOp)") }
        let proto = try r.u8("proto")
        guard proto != 0 else { throw r.fail("protocol 0") }
        let present = Present(rawValue: try r.u8("present"))
        guard Present.known.isSuperset(of: present) else {
            throw r.fail("undefined present bits 0x\(hex(present.subtracting(.known).rawValue))")
        }
        let hasTCP = present.contains(.tcp)
        guard !hasTCP || proto == 6 else { throw r.fail("TCP state on protocol \(proto)") }
        guard hasTCP || present.isDisjoint(with: .tcpDetails) else { throw r.fail("TCP details without TCP state") }
        let state = try r.u8("tcpState")
        let flagsOriginal = try r.u8("tcpFlagsOriginal")
        let flagsReply = try r.u8("tcpFlagsReply")
        let wscaleOriginal = try r.u8("windowScaleOriginal")
        let wscaleReply = try r.u8("windowScaleReply")
        // Absent fields are 0: one encoding per entry.
        func absent(_ bit: Present, _ value: UInt8, _ name: String) throws(SyncDecodeError) {
            guard present.contains(bit) || value == 0 else { throw r.fail("\(name) is \(value) but not present") }
        }
        try absent(.tcp, state, "tcpState")
        try absent(.flagsOriginal, flagsOriginal, "tcpFlagsOriginal")
        try absent(.flagsReply, flagsReply, "tcpFlagsReply")
        try absent(.windowScaleOriginal, wscaleOriginal, "windowScaleOriginal")
        try absent(.windowScaleReply, wscaleReply, "windowScaleReply")
        // RFC 7323: a shift above 14 is treated as 14; the kernel stores at most that.
        guard wscaleOriginal <= 14, wscaleReply <= 14 else {
            throw r.fail("window scale \(max(wscaleOriginal, wscaleReply)), at most 14")
        }
        let zone = try r.u16("zone")
        let rawKind = try r.u8("l4Kind")
        guard let kind = L4Kind(rawValue: rawKind) else { throw r.fail("unknown L4 kind \(rawKind)") }
        guard (kind == .icmp) == (proto == 1) else {
            throw r.fail(proto == 1 ? "ICMP entry with L4 kind \(rawKind)" : "L4 kind icmp on protocol \(proto)")
        }
        let reserved = try r.u8("reserved")
        guard reserved == 0 else { throw r.fail("reserved is 0x\(hex(reserved)), must be 0") }
        let status = ConntrackStatus(rawValue: try r.u32("status"))
        let mark = try r.u32("mark")
        let timeout = try r.u32("timeout")
        guard present.contains(.timeout) || timeout == 0 else { throw r.fail("timeout is \(timeout) but not present") }
        let original = try decodeTuple(&r, proto: proto, kind: kind, "original")
        let reply = try decodeTuple(&r, proto: proto, kind: kind, "reply")
        let version = try r.u64("version")
        let origin = try nodeID(&r, "origin")
        let tcp = hasTCP ? TCPInfo(state: TCPConntrackState(rawValue: state),
                                   flagsOriginal: present.contains(.flagsOriginal) ? flagsOriginal : nil,
                                   flagsReply: present.contains(.flagsReply) ? flagsReply : nil,
                                   windowScaleOriginal: present.contains(.windowScaleOriginal) ? wscaleOriginal : nil,
                                   windowScaleReply: present.contains(.windowScaleReply) ? wscaleReply : nil) : nil
        let connection = KernelConnection(original: original, reply: reply, tcp: tcp, status: status, mark: mark,
                                          zone: zone, timeout: present.contains(.timeout) ? timeout : nil)
        return KernelSyncEntry(operation: op, connection: connection, version: version, origin: origin)
    }

    private static func decodeTuple(_ r: inout ByteReader, proto: UInt8, kind: L4Kind, _ which: String)
        throws(SyncDecodeError) -> KernelTuple
    {
        let s = IPv4Address(try r.u32("saddr"))
        let d = IPv4Address(try r.u32("daddr"))
        let a = try r.u16("l4a")
        let b = try r.u16("l4b")
        let l4: KernelTuple.L4
        switch kind {
        case .ports: l4 = .ports(source: a, destination: b)
        case .icmp: l4 = .icmp(id: a, type: UInt8(b >> 8), code: UInt8(b & 0xFF))
        case .none:
            guard a == 0, b == 0 else { throw r.fail("\(which) tuple has L4 fields but L4 kind none") }
            l4 = .none
        }
        return KernelTuple(source: s, destination: d, proto: proto, l4: l4)
    }

    /// `count` entries, each named by its index in error details.
    static func decodeList(_ r: inout ByteReader, count: Int) throws(SyncDecodeError) -> [KernelSyncEntry] {
        try r.list(count) { (r) throws(SyncDecodeError) in try decode(from: &r) }
    }
}

extension KernelDeltaBatch: WirePayload {
    var wireSize: Int { SyncCodec.deltaBatchFixed + entries.count * SyncWire.kernelEntrySize }

    func encode(into w: inout ByteWriter) {
        w.u64(firstSequence)
        w.u16(count16(entries.count, "kernel delta batch entries"))
        for e in entries { e.encode(into: &w) }
    }

    static func decode(from r: inout ByteReader) throws(SyncDecodeError) -> KernelDeltaBatch {
        let (first, count) = try DeltaBatch.decodeFixedPart(&r, limit: SyncCodec.maxKernelEntriesPerDatagram,
                                                            entrySize: SyncWire.kernelEntrySize)
        return KernelDeltaBatch(firstSequence: first, entries: try KernelSyncEntry.decodeList(&r, count: count))
    }
}

extension KernelBulkChunk: WirePayload {
    var wireSize: Int { SyncCodec.bulkChunkFixed + entries.count * SyncWire.kernelEntrySize }

    func encode(into w: inout ByteWriter) {
        w.u32(requestID)
        w.u16(count16(entries.count, "kernel bulk chunk entries"))
        for e in entries { e.encode(into: &w) }
    }

    static func decode(from r: inout ByteReader) throws(SyncDecodeError) -> KernelBulkChunk {
        let id = try r.u32("requestID")
        let count = Int(try r.u16("count"))
        let limit = SyncCodec.maxKernelEntriesPerStreamFrame
        guard count <= limit else { throw r.fail("count \(count) exceeds \(limit) entries per stream frame") }
        try r.expectItems(count, size: SyncWire.kernelEntrySize, "count")
        return KernelBulkChunk(requestID: id, entries: try KernelSyncEntry.decodeList(&r, count: count))
    }
}
