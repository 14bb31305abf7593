/// Big-endian writer for the codec. Encoding never fails: sizes are the caller's contract
/// (preconditions in Codec.swift), so it appends without checks.
struct ByteWriter {
    var bytes: [UInt8] = []

    init(capacity: Int) { bytes.reserveCapacity(capacity) }

    mutating func u8(_ v: UInt8) { bytes.append(v) }

    // One append per field, not one per byte (each append checks capacity: a profile showed it).
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.bigEndian) { bytes.append(contentsOf: $0) } }

    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.bigEndian) { bytes.append(contentsOf: $0) } }

    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.bigEndian) { bytes.append(contentsOf: $0) } }

    mutating func bool(_ v: Bool) { bytes.append(v ? 1 : 0) }
}

/// Bounds-checked big-endian reader over untrusted bytes. Every read checks the remaining length
/// first and throws `.malformedPayload` naming the field, so no input can trap the decoder.
struct ByteReader {
    let bytes: UnsafeRawBufferPointer
    private(set) var offset = 0
    /// What the message is, for error details ("delta batch", "entry 3").
    var context: String
    /// The entry being decoded inside a message, named in error details. Kept apart from
    /// `context` so that decoding does not build a string per entry.
    var entryIndex: Int?

    init(_ bytes: UnsafeRawBufferPointer, context: String) {
        self.bytes = bytes
        self.context = context
    }

    var remaining: Int { bytes.count - offset }

    func fail(_ detail: String) -> SyncDecodeError {
        SyncDecodeError(.malformedPayload, "\(context)\(entryIndex.map { " entry \($0)" } ?? ""): \(detail)")
    }

    private mutating func need(_ n: Int, _ field: StaticString) throws(SyncDecodeError) {
        guard remaining >= n else {
            throw fail("\(field) needs \(n) byte(s) at offset \(offset), \(remaining) remain")
        }
    }

    mutating func u8(_ field: StaticString) throws(SyncDecodeError) -> UInt8 {
        try need(1, field)
        let v = bytes[offset]
        offset += 1
        return v
    }

    mutating func u16(_ field: StaticString) throws(SyncDecodeError) -> UInt16 {
        try need(2, field)
        let v = UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
        offset += 2
        return v
    }

    mutating func u32(_ field: StaticString) throws(SyncDecodeError) -> UInt32 {
        try need(4, field)
        var v: UInt32 = 0
        for i in 0..<4 { v = v << 8 | UInt32(bytes[offset + i]) }
        offset += 4
        return v
    }

    mutating func u64(_ field: StaticString) throws(SyncDecodeError) -> UInt64 {
        try need(8, field)
        var v: UInt64 = 0
        for i in 0..<8 { v = v << 8 | UInt64(bytes[offset + i]) }
        offset += 8
        return v
    }

    /// A boolean byte: exactly 0 or 1, anything else is malformed (one canonical encoding).
    mutating func bool(_ field: StaticString) throws(SyncDecodeError) -> Bool {
        let v = try u8(field)
        switch v {
        case 0: return false
        case 1: return true
        default: throw fail("\(field) is \(v), must be 0 or 1")
        }
    }

    /// Checks that a count of fixed-size items matches the bytes left exactly (no short or
    /// trailing bytes), before anything is allocated for them.
    func expectItems(_ count: Int, size: Int, _ field: StaticString) throws(SyncDecodeError) {
        // count <= 65535 and size <= 52, so the product cannot overflow.
        let needed = count * size
        guard needed == remaining else {
            throw fail("\(field) \(count) needs \(needed) byte(s), \(remaining) remain")
        }
    }

    /// Checks that at least `count` items of at least `size` bytes each can follow, before
    /// anything is allocated for them (variable-size items).
    func expectAtLeast(_ count: Int, size: Int, _ field: StaticString) throws(SyncDecodeError) {
        let needed = count * size
        guard needed <= remaining else {
            throw fail("\(field) \(count) needs at least \(needed) byte(s), \(remaining) remain")
        }
    }

    /// `n` raw bytes.
    mutating func rawBytes(_ n: Int, _ field: StaticString) throws(SyncDecodeError) -> [UInt8] {
        try need(n, field)
        let out = Array(UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + n)]))
        offset += n
        return out
    }

    /// `count` items decoded one after another, each named by its index in error details.
    mutating func list<T>(_ count: Int, _ one: (inout ByteReader) throws(SyncDecodeError) -> T)
        throws(SyncDecodeError) -> [T]
    {
        var items: [T] = []
        items.reserveCapacity(count)
        for i in 0..<count {
            entryIndex = i
            items.append(try one(&self))
        }
        entryIndex = nil
        return items
    }

    func expectEnd() throws(SyncDecodeError) {
        guard remaining == 0 else { throw fail("\(remaining) trailing byte(s)") }
    }
}
