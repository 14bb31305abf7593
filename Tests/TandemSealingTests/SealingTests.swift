import Testing
import TandemCore
import TandemTestSupport
import TandemSync
import TandemSyncWire
import TandemSealing

@Suite struct SealingTests {
    typealias Opened = (header: SyncHeader, message: SyncMessage)

    static func reason(_ r: Result<Opened, SyncDecodeError>) -> SyncDropReason? {
        if case .failure(let e) = r { return e.reason }
        return nil
    }

    static func sealer(sender: UInt32 = Fixtures.sender, epoch: UInt64 = Fixtures.epoch,
                       key: ClusterKey = Fixtures.key) -> SyncSealer {
        SyncSealer(key: key, sender: sender, epoch: epoch)
    }

    static let hello = SyncMessage.hello(Hello(bulkPort: 1, inSync: true, nextSequence: 1))

    @Test func roundTripEveryMessage() throws {
        var sealer = Self.sealer()
        var opener = Fixtures.opener()
        var expected = Dictionary(uniqueKeysWithValues: SyncChannel.allCases.map { ($0, UInt64(1)) })
        for (name, channel, m) in Fixtures.messages {
            #expect(sealer.nextSequence(channel) == expected[channel])
            let bytes = sealer.seal(m, channel: channel)
            #expect(bytes.count == SyncWire.headerSize + SyncCodec.payloadSize(m) + SyncWire.tagSize, "\(name)")
            #expect(bytes.count <= channel.maxFrame, "\(name)")
            let (header, message) = try opener.open(bytes, channel: channel).get()
            #expect(message == m, "\(name)")
            #expect(header.type == m.type)
            #expect(header.sender == Fixtures.sender)
            #expect(header.epoch == Fixtures.epoch)
            #expect(header.sequence == expected[channel], "sequences count per channel from 1")
            #expect(header.flags == channel.headerFlags)
            #expect(Int(header.length) == bytes.count - SyncWire.headerSize)
            expected[channel, default: 0] += 1
        }
        #expect(opener.opened == UInt64(Fixtures.messages.count))
        #expect(opener.counters.isEmpty)
        #expect(opener.epoch(of: Fixtures.sender) == Fixtures.epoch)
    }

    @Test func ciphertextHidesThePayload() {
        var sealer = Self.sealer()
        let m = SyncMessage.deltaBatch(DeltaBatch(firstSequence: 1, entries: [Fixtures.tcpUpsert]))
        let bytes = sealer.seal(m, channel: .datagram)
        let plain = SyncCodec.encodePayload(m)
        #expect(Array(bytes[SyncWire.headerSize..<(SyncWire.headerSize + plain.count)]) != plain)
        // Same payload, same sequence, other channel: another nonce, another ciphertext.
        let onStream = sealer.seal(m, channel: .stream)
        #expect(Array(bytes.dropFirst(SyncWire.headerSize)) != Array(onStream.dropFirst(SyncWire.headerSize)))
    }

    @Test func wrongKeyIsAuthFailed() {
        var sealer = Self.sealer(key: Fixtures.otherKey)
        var opener = Fixtures.opener()
        let r = opener.open(sealer.seal(Self.hello, channel: .datagram), channel: .datagram)
        #expect(Self.reason(r) == .authFailed)
        if case .failure(let e) = r { #expect(e.detail.contains("cluster key may differ")) }
        #expect(opener.counters == [.authFailed: 1])
        #expect(opener.epoch(of: Fixtures.sender) == nil, "a forgery leaves no state")
    }

    /// Flipping any single bit anywhere in a sealed message gets it dropped.
    @Test func everyBitFlipIsDropped() {
        var sealer = Self.sealer()
        let bytes = sealer.seal(.deltaBatch(DeltaBatch(firstSequence: 1, entries: [Fixtures.udpDelete])), channel: .datagram)
        for i in 0..<bytes.count {
            for bit in 0..<8 {
                var b = bytes
                b[i] ^= 1 << bit
                var opener = Fixtures.opener()
                #expect(Self.reason(opener.open(b, channel: .datagram)) != nil, "byte \(i) bit \(bit)")
            }
        }
    }

    @Test func replayIsDropped() throws {
        var sealer = Self.sealer()
        var opener = Fixtures.opener()
        let first = sealer.seal(Self.hello, channel: .datagram)
        _ = try opener.open(first, channel: .datagram).get()
        #expect(Self.reason(opener.open(first, channel: .datagram)) == .replayed)
        #expect(Self.reason(opener.open(first, channel: .datagram)) == .replayed)
        #expect(opener.counters == [.replayed: 2])
        #expect(opener.opened == 1)
    }

    @Test func reorderingWithinTheWindowIsAccepted() throws {
        var sealer = Self.sealer()
        let messages = (0..<40).map { _ in sealer.seal(Self.hello, channel: .datagram) }
        var opener = Fixtures.opener()
        var rng = TestRNG(seed: 7)
        for m in messages.shuffled(using: &rng) { _ = try opener.open(m, channel: .datagram).get() }
        for m in messages { #expect(Self.reason(opener.open(m, channel: .datagram)) == .replayed) }
    }

    @Test func tooOldIsReplayed() throws {
        var sealer = Self.sealer()
        let first = sealer.seal(Self.hello, channel: .datagram)       // sequence 1
        var last: [UInt8] = []
        for _ in 0..<ReplayWindow.size { last = sealer.seal(Self.hello, channel: .datagram) }  // ... 1025
        var opener = Fixtures.opener()
        _ = try opener.open(last, channel: .datagram).get()
        // 1025 - 1 = 1024: just outside the window, never seen, still refused.
        #expect(Self.reason(opener.open(first, channel: .datagram)) == .replayed)
    }

    @Test func channelsHaveSeparateWindows() throws {
        var sealer = Self.sealer()
        var opener = Fixtures.opener()
        let d = sealer.seal(Self.hello, channel: .datagram)
        let s = sealer.seal(.bulkEnd(BulkEnd(requestID: 1, entryCount: 0)), channel: .stream)
        #expect(try opener.open(d, channel: .datagram).get().header.sequence == 1)
        #expect(try opener.open(s, channel: .stream).get().header.sequence == 1)
        // Presented on the other channel: the header flag disagrees.
        #expect(Self.reason(opener.open(d, channel: .stream)) == .badFlags)
        #expect(Self.reason(opener.open(s, channel: .datagram)) == .badFlags)
    }

    @Test func epochRules() throws {
        var old = Self.sealer(epoch: 100)
        var new = Self.sealer(epoch: 200)
        var opener = Fixtures.opener()
        let old1 = old.seal(Self.hello, channel: .datagram)
        let old2 = old.seal(Self.hello, channel: .datagram)
        let old3 = old.seal(Self.hello, channel: .datagram)
        _ = try opener.open(old1, channel: .datagram).get()
        _ = try opener.open(old2, channel: .datagram).get()
        // The sender restarts: a newer epoch starts again at sequence 1 with fresh windows.
        let new1 = new.seal(Self.hello, channel: .datagram)
        #expect(try opener.open(new1, channel: .datagram).get().header.epoch == 200)
        #expect(opener.epoch(of: Fixtures.sender) == 200)
        // The old epoch is over, even for a sequence never seen.
        #expect(Self.reason(opener.open(old3, channel: .datagram)) == .staleEpoch)
        #expect(Self.reason(opener.open(old1, channel: .datagram)) == .staleEpoch)
        #expect(Self.reason(opener.open(new1, channel: .datagram)) == .replayed)
        _ = try opener.open(new.seal(Self.hello, channel: .datagram), channel: .datagram).get()
        #expect(opener.counters == [.staleEpoch: 2, .replayed: 1])
        // Other senders are unaffected.
        var other = Self.sealer(sender: 3, epoch: 50)
        _ = try opener.open(other.seal(Self.hello, channel: .datagram), channel: .datagram).get()
    }

    /// Forgeries never change state: not a sequence, not an epoch.
    @Test func stateChangesOnlyAfterTheTagVerifies() throws {
        var opener = Fixtures.opener()
        var real = Self.sealer()
        let r1 = real.seal(Self.hello, channel: .datagram)
        let r2 = real.seal(Self.hello, channel: .datagram)
        // A forged sequence 2 (wrong key) does not mark 2 as seen.
        var forger = Self.sealer(key: Fixtures.otherKey)
        _ = forger.seal(Self.hello, channel: .datagram)
        #expect(Self.reason(opener.open(forger.seal(Self.hello, channel: .datagram), channel: .datagram)) == .authFailed)
        _ = try opener.open(r1, channel: .datagram).get()
        // A forged newer epoch does not reset the windows or make the real epoch stale.
        var forgedEpoch = Self.sealer(epoch: Fixtures.epoch + 1, key: Fixtures.otherKey)
        #expect(Self.reason(opener.open(forgedEpoch.seal(Self.hello, channel: .datagram), channel: .datagram)) == .authFailed)
        #expect(opener.epoch(of: Fixtures.sender) == Fixtures.epoch)
        #expect(Self.reason(opener.open(r1, channel: .datagram)) == .replayed)
        _ = try opener.open(r2, channel: .datagram).get()
    }

    @Test func malformedPayloadStillUsesUpItsSequence() {
        var opener = Fixtures.opener()
        let bad = Fixtures.sealRaw(.ack, [1, 2, 3], sequence: 9)
        #expect(Self.reason(opener.open(bad, channel: .datagram)) == .malformedPayload)
        #expect(Self.reason(opener.open(bad, channel: .datagram)) == .replayed)
    }

    @Test func sendersAreChecked() throws {
        var opener = Fixtures.opener()   // self 2, members {1, 2, 3}
        var me = Self.sealer(sender: 2)
        var stranger = Self.sealer(sender: 9)
        #expect(Self.reason(opener.open(me.seal(Self.hello, channel: .datagram), channel: .datagram)) == .selfSent)
        #expect(Self.reason(opener.open(stranger.seal(Self.hello, channel: .datagram), channel: .datagram)) == .unknownSender)
        // Without a member list: anyone but ourselves.
        var open = SyncOpener(key: Fixtures.key, selfID: 2)
        _ = try open.open(stranger.seal(Self.hello, channel: .datagram), channel: .datagram).get()
        #expect(Self.reason(open.open(me.seal(Self.hello, channel: .datagram), channel: .datagram)) == .selfSent)
        // Membership can change.
        opener.members?.insert(9)
        _ = try opener.open(stranger.seal(Self.hello, channel: .datagram), channel: .datagram).get()
    }

    @Test func trackedSendersAreBounded() throws {
        var opener = SyncOpener(key: Fixtures.key, selfID: 0)
        for id in 1...UInt32(SyncOpener.maxSenders) {
            var s = Self.sealer(sender: id)
            _ = try opener.open(s.seal(Self.hello, channel: .datagram), channel: .datagram).get()
        }
        var one = Self.sealer(sender: UInt32(SyncOpener.maxSenders) + 1)
        #expect(Self.reason(opener.open(one.seal(Self.hello, channel: .datagram), channel: .datagram)) == .unknownSender)
        // Known senders keep working; a forgotten one frees a slot.
        var first = Self.sealer(sender: 1)
        _ = first.seal(Self.hello, channel: .datagram)
        _ = try opener.open(first.seal(Self.hello, channel: .datagram), channel: .datagram).get()
        opener.forget(1)
        _ = try opener.open(one.seal(Self.hello, channel: .datagram), channel: .datagram).get()
    }

    @Test func sizesAndLengthsAreChecked() {
        var sealer = Self.sealer()
        let hello = sealer.seal(Self.hello, channel: .datagram)
        var opener = Fixtures.opener()
        #expect(Self.reason(opener.open([UInt8](repeating: 0, count: 1473), channel: .datagram)) == .oversized)
        #expect(Self.reason(opener.open([UInt8](repeating: 0, count: 65537), channel: .stream)) == .oversized)
        #expect(Self.reason(opener.open([], channel: .datagram)) == .truncated)
        #expect(Self.reason(opener.open(Array(hello.prefix(27)), channel: .datagram)) == .truncated)
        #expect(Self.reason(opener.open(Array(hello.dropLast()), channel: .datagram)) == .truncated)
        #expect(Self.reason(opener.open(hello + [0], channel: .datagram)) == .badLength)
        var short = hello
        short[6] = 0; short[7] = 15
        #expect(Self.reason(opener.open(Array(short.prefix(28 + 15)), channel: .datagram)) == .badLength)
        // A full-size stream frame is fine.
        let chunk = SyncMessage.bulkChunk(BulkChunk(requestID: 1, entries: (0..<SyncCodec.maxEntriesPerStreamFrame).map(Fixtures.numbered)))
        let frame = sealer.seal(chunk, channel: .stream)
        #expect(frame.count <= SyncWire.maxStreamFrame)
        #expect((try? opener.open(frame, channel: .stream).get())?.message == chunk)
        let batch = SyncMessage.deltaBatch(DeltaBatch(firstSequence: 1, entries: (0..<SyncCodec.maxEntriesPerDatagram).map(Fixtures.numbered)))
        let datagram = sealer.seal(batch, channel: .datagram)
        #expect(datagram.count <= SyncWire.maxDatagram)
        #expect((try? opener.open(datagram, channel: .datagram).get())?.message == batch)
    }

    @Test func sealerIsDeterministic() {
        var a = Self.sealer()
        var b = Self.sealer()
        let x = a.seal(Self.hello, channel: .datagram)
        #expect(x == b.seal(Self.hello, channel: .datagram))
        // Same sequence, other sender or epoch: another subkey, another ciphertext.
        var c = Self.sealer(sender: 3)
        var d = Self.sealer(epoch: Fixtures.epoch + 1)
        #expect(c.seal(Self.hello, channel: .datagram).dropFirst(28) != x.dropFirst(28))
        #expect(d.seal(Self.hello, channel: .datagram).dropFirst(28) != x.dropFirst(28))
    }
}
