/// The body of the libFuzzer target (Fuzz/FuzzSyncDecode.swift), here so the regression test runs
/// exactly what the fuzzer runs. Feeds untrusted bytes to every decoder and checks the codec's
/// invariants; a violation traps, which libFuzzer reports as a crash.
public enum SyncDecodeFuzzing {
    /// Input layout: byte 0 selects the payload type (its raw value when it names a type, otherwise
    /// modulo the type count); the rest is given to the header decoder and, as a payload of the
    /// selected type, to the payload decoder.
    public static func run(_ input: UnsafeRawBufferPointer) {
        guard let selector = input.first else { return }
        let rest = UnsafeRawBufferPointer(rebasing: input[1...])
        let types = SyncMessageType.allCases
        let type = SyncMessageType(rawValue: selector) ?? types[Int(selector) % types.count]

        if let header = try? SyncCodec.decodeHeader(rest) {
            // A header that decodes has one encoding: the 28 bytes it came from.
            let again = SyncCodec.encodeHeader(header)
            precondition(again.elementsEqual(rest.prefix(SyncWire.headerSize)), "header re-encodes differently")
        }

        if let message = try? SyncCodec.decodePayload(type: type, rest) {
            precondition(message.type == type, "decoded a \(message.type) from a \(type) payload")
            // Canonical encoding: whatever decodes re-encodes to the same bytes.
            let again = SyncCodec.encodePayload(message)
            precondition(again.elementsEqual(rest), "\(type.wireName) payload re-encodes differently")
            precondition(SyncCodec.payloadSize(message) == rest.count, "payloadSize disagrees")
            // The hashes and leaf arithmetic must not trap on any decoded entry.
            switch message {
            case .deltaBatch(let b): for e in b.entries { _ = SyncHashing.leaf(of: e.record.key) &+ Int(truncatingIfNeeded: SyncHashing.entryHash(e)) }
            case .bulkChunk(let c): for e in c.entries { _ = SyncHashing.leaf(of: e.record.key) &+ Int(truncatingIfNeeded: SyncHashing.entryHash(e)) }
            case .kernelDeltaBatch(let b): for e in b.entries { _ = SyncHashing.leaf(of: e.connection.key) &+ Int(truncatingIfNeeded: SyncHashing.entryHash(e)) }
            case .kernelBulkChunk(let c): for e in c.entries { _ = SyncHashing.leaf(of: e.connection.key) &+ Int(truncatingIfNeeded: SyncHashing.entryHash(e)) }
            default: break
            }
        }
    }
}
