import Testing
import TandemCore
import TandemTestSupport
import TandemSyncWire

/// Kernel conntrack entries on the wire (SPEC.md §15): limits, round trips, what is not sent.
@Suite struct KernelCodecTests {
    @Test func limitsFitTheirChannels() {
        #expect(SyncWire.kernelEntrySize == 60)
        #expect(SyncCodec.maxKernelEntriesPerDatagram == 23)
        #expect(SyncCodec.maxKernelEntriesPerStreamFrame == 1091)
        let full = SyncMessage.kernelDeltaBatch(KernelDeltaBatch(
            firstSequence: 1, entries: (0..<SyncCodec.maxKernelEntriesPerDatagram).map(Fixtures.kernelNumbered)))
        #expect(SyncCodec.payloadSize(full) <= SyncChannel.kernelDatagram.maxPayload)
        #expect(SyncCodec.payloadSize(full) + SyncWire.kernelEntrySize > SyncChannel.kernelDatagram.maxPayload)
        let chunk = SyncMessage.kernelBulkChunk(KernelBulkChunk(
            requestID: 1, entries: (0..<SyncCodec.maxKernelEntriesPerStreamFrame).map(Fixtures.kernelNumbered)))
        #expect(SyncCodec.payloadSize(chunk) <= SyncChannel.kernelStream.maxPayload)
        #expect(SyncCodec.payloadSize(chunk) + SyncWire.kernelEntrySize > SyncChannel.kernelStream.maxPayload)
    }

    @Test func everyFixtureRoundTrips() throws {
        let entries = [Fixtures.kernelMasquerade, Fixtures.kernelPortForward, Fixtures.kernelPing, Fixtures.kernelDelete]
        for m in [SyncMessage.kernelDeltaBatch(KernelDeltaBatch(firstSequence: 9, entries: entries)),
                  .kernelBulkChunk(KernelBulkChunk(requestID: 4, entries: entries))] {
            let bytes = SyncCodec.encodePayload(m)
            #expect(bytes.count == SyncCodec.payloadSize(m))
            #expect(try SyncCodec.decodePayload(type: m.type, bytes) == m)
        }
    }

    @Test func nodeLocalFieldsAreNotSent() throws {
        // The kernel's id and the request-only TCP masks mean nothing on another node.
        var e = Fixtures.kernelMasquerade
        e.connection.id = 12345
        e.connection.tcp?.maskOriginal = 0xff
        e.connection.tcp?.maskReply = 0x01
        let m = SyncMessage.kernelDeltaBatch(KernelDeltaBatch(firstSequence: 1, entries: [e]))
        guard case .kernelDeltaBatch(let back) = try SyncCodec.decodePayload(type: m.type, SyncCodec.encodePayload(m)) else {
            Issue.record("not a kernel delta batch")
            return
        }
        #expect(back.entries[0] == Fixtures.kernelMasquerade)
    }

    @Test func portlessProtocolsCarryNoL4Fields() throws {
        var e = Fixtures.kernelPing
        e.connection.original = KernelTuple(source: IPv4Address("10.1.0.5")!, destination: IPv4Address("198.51.100.20")!,
                                            proto: 47, l4: .none)
        e.connection.reply = e.connection.original.inverted
        let m = SyncMessage.kernelDeltaBatch(KernelDeltaBatch(firstSequence: 1, entries: [e]))
        let bytes = SyncCodec.encodePayload(m)
        #expect(try SyncCodec.decodePayload(type: m.type, bytes) == m)
        // L4 fields under kind none are malformed (one encoding per entry).
        var patched = bytes
        patched[10 + 24 + 9] = 1
        #expect(throws: SyncDecodeError.self) { try SyncCodec.decodePayload(type: m.type, patched) }
    }

    @Test func theZoneIsPartOfTheKey() {
        var other = Fixtures.kernelMasquerade.connection
        other.zone = 1
        #expect(SyncHashing.kernelKeyHash(other.key) != SyncHashing.kernelKeyHash(Fixtures.kernelMasquerade.connection.key))
        // The state is not: an update of the same entry lands in the same leaf.
        var updated = Fixtures.kernelMasquerade.connection
        updated.tcp = TCPInfo(state: .finWait)
        updated.timeout = 120
        #expect(SyncHashing.leaf(of: updated.key) == SyncHashing.leaf(of: Fixtures.kernelMasquerade.connection.key))
    }
}
