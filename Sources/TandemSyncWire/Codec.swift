import TandemCore

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
///
/// Each message's size, encoder and decoder sit together in its group's file (`WirePayload`);
/// this file only dispatches on the message type.
public enum SyncCodec {
    /// Encoded payload size, without header and tag.
    public static func payloadSize(_ m: SyncMessage) -> Int { m.body.wireSize }

    public static func encodePayload(_ m: SyncMessage) -> [UInt8] {
        let body = m.body
        var w = ByteWriter(capacity: body.wireSize)
        body.encode(into: &w)
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
        case .hello: message = .hello(try Hello.decode(from: &r))
        case .deltaBatch: message = .deltaBatch(try DeltaBatch.decode(from: &r))
        case .ack: message = .ack(try Ack.decode(from: &r))
        case .nack: message = .nack(try Nack.decode(from: &r))
        case .bulkRequest: message = .bulkRequest(try BulkRequest.decode(from: &r))
        case .bulkBegin: message = .bulkBegin(try BulkBegin.decode(from: &r))
        case .bulkChunk: message = .bulkChunk(try BulkChunk.decode(from: &r))
        case .bulkEnd: message = .bulkEnd(try BulkEnd.decode(from: &r))
        case .keepalive: message = .keepalive(try Keepalive.decode(from: &r))
        case .digest: message = .digest(try Digest.decode(from: &r))
        case .digestRequest: message = .digestRequest(try DigestRequest.decode(from: &r))
        case .probe: message = .probe(try Probe.decode(from: &r))
        case .probeRequest: message = .probeRequest(try ProbeRequest.decode(from: &r))
        case .probeAck: message = .probeAck(try ProbeAck.decode(from: &r))
        case .serviceDigest: message = .serviceDigest(try ServiceDigest.decode(from: &r))
        case .serviceRecords: message = .serviceRecords(try ServiceRecords.decode(from: &r))
        case .endpointVerdicts: message = .endpointVerdicts(try EndpointVerdicts.decode(from: &r))
        case .kernelDeltaBatch: message = .kernelDeltaBatch(try KernelDeltaBatch.decode(from: &r))
        case .kernelBulkChunk: message = .kernelBulkChunk(try KernelBulkChunk.decode(from: &r))
        }
        try r.expectEnd()
        return message
    }

    public static func decodePayload(type: SyncMessageType, _ bytes: [UInt8]) throws(SyncDecodeError) -> SyncMessage {
        try withBytes(bytes) { (b) throws(SyncDecodeError) in try decodePayload(type: type, b) }
    }

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

/// One message body's layout: its encoded size, its encoder and its decoder, kept side by side
/// in the message group's file. Decoders read from a bounds-checked reader and throw the drop
/// reason; encoders trust their input (see `SyncCodec`).
protocol WirePayload {
    var wireSize: Int { get }
    func encode(into w: inout ByteWriter)
    static func decode(from r: inout ByteReader) throws(SyncDecodeError) -> Self
}

extension SyncMessage {
    /// The message's body as the codec sees it.
    var body: any WirePayload {
        switch self {
        case .hello(let m): m
        case .deltaBatch(let m): m
        case .ack(let m): m
        case .nack(let m): m
        case .bulkRequest(let m): m
        case .bulkBegin(let m): m
        case .bulkChunk(let m): m
        case .bulkEnd(let m): m
        case .keepalive(let m): m
        case .digest(let m): m
        case .digestRequest(let m): m
        case .probe(let m), .probeAck(let m): m
        case .probeRequest(let m): m
        case .serviceDigest(let m): m
        case .serviceRecords(let m): m
        case .endpointVerdicts(let m): m
        case .kernelDeltaBatch(let m): m
        case .kernelBulkChunk(let m): m
        }
    }
}

// MARK: - Decoding helpers shared by the message groups

/// `count` strictly ascending u16 values, each below `limit` (digest leaves, buckets).
func ascendingU16s(_ r: inout ByteReader, count: Int, below limit: Int, _ what: String)
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

/// A node id field: node ids are non-zero.
func nodeID(_ r: inout ByteReader, _ field: StaticString) throws(SyncDecodeError) -> UInt32 {
    let v = try r.u32(field)
    guard v != 0 else { throw r.fail("\(field) is 0; node ids are non-zero") }
    return v
}

/// A count the encoder writes as a u16 (its caller keeps it in range).
func count16(_ n: Int, _ what: StaticString) -> UInt16 {
    precondition(n <= Int(UInt16.max), "\(what): \(n) do not fit a u16 count")
    return UInt16(n)
}

/// Lower-case hex of an integer, zero-padded to its width (for error details).
func hex<T: FixedWidthInteger & UnsignedInteger>(_ v: T) -> String {
    let digits = String(v, radix: 16)
    let width = T.bitWidth / 4
    return digits.count >= width ? digits : String(repeating: "0", count: width - digits.count) + digits
}
