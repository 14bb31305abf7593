import Crypto
// DataProtocol conformances of [UInt8] and raw buffers, which swift-crypto's APIs take.
import Foundation
import TandemCore
import TandemSyncWire

/// The sealing construction of proto/SPEC.md ("Sealing"): ChaCha20-Poly1305 under a per-sender,
/// per-epoch subkey, the nonce built from channel and sequence, the clear header as associated data.
public enum SyncSealing {
    /// HKDF salt: names the protocol version, so a future version's keys differ.
    public static let salt: [UInt8] = Array("tandem-sync-v1".utf8)

    /// HKDF-SHA256(ikm: cluster key, salt: "tandem-sync-v1", info: sender u32 BE || epoch u64 BE), 32 bytes.
    /// One subkey per (sender, epoch): a restart gets a fresh key, so restarting the sequence at 1
    /// never reuses a nonce under the same key.
    public static func subkey(_ key: ClusterKey, sender: UInt32, epoch: UInt64) -> SymmetricKey {
        var info: [UInt8] = []
        info.reserveCapacity(12)
        for shift in stride(from: 24, through: 0, by: -8) { info.append(UInt8(truncatingIfNeeded: sender >> UInt32(shift))) }
        for shift in stride(from: 56, through: 0, by: -8) { info.append(UInt8(truncatingIfNeeded: epoch >> UInt64(shift))) }
        return HKDF<SHA256>.deriveKey(inputKeyMaterial: key.symmetricKey, salt: salt, info: info, outputByteCount: 32)
    }

    /// 12 bytes: channel u32 BE || sequence u64 BE.
    public static func nonceBytes(channel: SyncChannel, sequence: UInt64) -> [UInt8] {
        var n: [UInt8] = []
        n.reserveCapacity(12)
        for shift in stride(from: 24, through: 0, by: -8) { n.append(UInt8(truncatingIfNeeded: channel.rawValue >> UInt32(shift))) }
        for shift in stride(from: 56, through: 0, by: -8) { n.append(UInt8(truncatingIfNeeded: sequence >> UInt64(shift))) }
        return n
    }

    /// Seals already encoded payload bytes under `header` (whose `length` is overwritten with
    /// payload + tag). Low level: it does not check the payload, so tests and the vector
    /// generator use it to make authentic frames with malformed payloads. Nodes use `SyncSealer`.
    public static func seal(payload: [UInt8], header: SyncHeader, subkey: SymmetricKey) -> [UInt8] {
        precondition(payload.count + SyncWire.tagSize <= Int(UInt16.max), "payload of \(payload.count) bytes")
        var header = header
        header.length = UInt16(payload.count + SyncWire.tagSize)
        let channel = SyncChannel(flags: header.flags)
        let aad = SyncCodec.encodeHeader(header)
        do {
            let nonce = try ChaChaPoly.Nonce(data: nonceBytes(channel: channel, sequence: header.sequence))
            let box = try ChaChaPoly.seal(payload, using: subkey, nonce: nonce, authenticating: aad)
            var out = aad
            out.reserveCapacity(aad.count + payload.count + SyncWire.tagSize)
            out.append(contentsOf: box.ciphertext)
            out.append(contentsOf: box.tag)
            return out
        } catch {
            // Only a wrong nonce or key size throws; both are fixed by construction.
            preconditionFailure("ChaChaPoly.seal failed: \(error)")
        }
    }

    /// Verifies and decrypts the bytes after a decoded header. Nil when the tag does not verify.
    static func open(_ bytes: UnsafeRawBufferPointer, header: SyncHeader, subkey: SymmetricKey) -> [UInt8]? {
        let size = Int(header.length)
        // The caller checked bytes.count == headerSize + length and length >= tagSize.
        let body = SyncWire.headerSize
        let tagStart = body + size - SyncWire.tagSize
        guard size >= SyncWire.tagSize, bytes.count == body + size else { return nil }
        let aad = UnsafeRawBufferPointer(rebasing: bytes[0..<body])
        let ciphertext = UnsafeRawBufferPointer(rebasing: bytes[body..<tagStart])
        let tag = UnsafeRawBufferPointer(rebasing: bytes[tagStart..<(body + size)])
        do {
            let nonce = try ChaChaPoly.Nonce(data: nonceBytes(channel: SyncChannel(flags: header.flags),
                                                              sequence: header.sequence))
            let box = try ChaChaPoly.SealedBox(nonce: nonce, ciphertext: ciphertext, tag: tag)
            let plain = try ChaChaPoly.open(box, using: subkey, authenticating: aad)
            return Array(plain)
        } catch {
            return nil
        }
    }
}

/// Seals this node's outgoing messages. One per node and boot epoch, owned in one place: a copy
/// would reuse sequence numbers, and a reused (key, nonce) pair breaks ChaCha20-Poly1305. For
/// the same reason the epoch must grow across restarts (SPEC.md, "Epochs").
public struct SyncSealer: Sendable {
    public let sender: UInt32
    public let epoch: UInt64
    private let subkey: SymmetricKey
    /// Next header sequence per channel; each starts at 1.
    private var next = [UInt64](repeating: 1, count: SyncChannel.allCases.count)

    public init(key: ClusterKey, sender: UInt32, epoch: UInt64) {
        self.sender = sender
        self.epoch = epoch
        subkey = SyncSealing.subkey(key, sender: sender, epoch: epoch)
    }

    /// The sequence the next message on `channel` will carry.
    public func nextSequence(_ channel: SyncChannel) -> UInt64 { next[Int(channel.rawValue)] }

    /// Header, ciphertext and tag of `m`, ready to send on `channel`. The message must fit the
    /// channel (`SyncCodec.maxEntriesPerDatagram`, `maxEntriesPerStreamFrame`): building batches
    /// that fit is the caller's job, so an oversized one is a programming error and traps.
    public mutating func seal(_ m: SyncMessage, channel: SyncChannel) -> [UInt8] {
        let payload = SyncCodec.encodePayload(m)
        precondition(payload.count <= channel.maxPayload,
                     "\(m.type.wireName) payload of \(payload.count) bytes exceeds the \(channel) limit \(channel.maxPayload)")
        #if DEBUG
        if let problem = SyncCodec.validate(m) { assertionFailure("sealing a message receivers would drop: \(problem)") }
        #endif
        let index = Int(channel.rawValue)
        let sequence = next[index]
        precondition(sequence < UInt64.max, "sequence space exhausted")
        next[index] = sequence + 1
        let header = SyncHeader(type: m.type, flags: channel.headerFlags, sender: sender, epoch: epoch,
                                sequence: sequence, length: 0)
        return SyncSealing.seal(payload: payload, header: header, subkey: subkey)
    }
}

/// Authenticates and decodes received messages, rejecting replays, stale epochs, strangers and
/// our own reflected traffic. Keeps per-sender state: the newest epoch seen, that epoch's subkey
/// (derived once, not per message) and a replay window per channel.
///
/// Checks run cheapest first and state changes only after the tag verifies, so forged traffic
/// cannot move windows or epochs: size, header, length, sender, tag, epoch and replay, payload.
public struct SyncOpener: Sendable {
    public let selfID: UInt32
    /// Node ids accepted; nil accepts any id but our own (up to `maxSenders` of them).
    public var members: Set<UInt32>?
    /// Bound on tracked senders when `members` is nil. Tracked state is never evicted (evicting a
    /// sender would reopen its replay window), so a sender beyond the bound is refused.
    public static let maxSenders = 1024

    public private(set) var counters: [SyncDropReason: UInt64] = [:]
    /// Messages that passed every check.
    public private(set) var opened: UInt64 = 0

    private struct Peer: Sendable {
        var epoch: UInt64
        var subkey: SymmetricKey
        var windows: [ReplayWindow]
    }

    private static var freshWindows: [ReplayWindow] {
        [ReplayWindow](repeating: ReplayWindow(), count: SyncChannel.allCases.count)
    }

    private let key: ClusterKey
    private var peers: [UInt32: Peer] = [:]

    public init(key: ClusterKey, selfID: UInt32, members: Set<UInt32>? = nil) {
        self.key = key
        self.selfID = selfID
        self.members = members
    }

    /// The newest epoch authenticated from `sender`, if any.
    public func epoch(of sender: UInt32) -> UInt64? { peers[sender]?.epoch }

    /// Forgets a sender's state (it left the cluster).
    public mutating func forget(_ sender: UInt32) { peers[sender] = nil }

    public mutating func open(_ bytes: [UInt8], channel: SyncChannel)
        -> Result<(header: SyncHeader, message: SyncMessage), SyncDecodeError>
    {
        bytes.withUnsafeBytes { open($0, channel: channel) }
    }

    public mutating func open(_ bytes: UnsafeRawBufferPointer, channel: SyncChannel)
        -> Result<(header: SyncHeader, message: SyncMessage), SyncDecodeError>
    {
        let result = check(bytes, channel: channel)
        switch result {
        case .success: opened &+= 1
        case .failure(let e): counters[e.reason, default: 0] &+= 1
        }
        return result
    }

    private mutating func check(_ bytes: UnsafeRawBufferPointer, channel: SyncChannel)
        -> Result<(header: SyncHeader, message: SyncMessage), SyncDecodeError>
    {
        guard bytes.count <= channel.maxFrame else {
            return .failure(SyncDecodeError(.oversized, "\(bytes.count) bytes, the \(channel) limit is \(channel.maxFrame)"))
        }
        let header: SyncHeader
        do { header = try SyncCodec.decodeHeader(bytes) } catch { return .failure(error) }
        guard SyncChannel(flags: header.flags) == channel else {
            return .failure(SyncDecodeError(.badFlags, "sealed for the \(SyncChannel(flags: header.flags)) channel, received on the \(channel) channel"))
        }
        let length = Int(header.length)
        guard length >= SyncWire.tagSize else {
            return .failure(SyncDecodeError(.badLength, "length \(length) is shorter than the \(SyncWire.tagSize)-byte tag"))
        }
        let expected = SyncWire.headerSize + length
        guard bytes.count >= expected else {
            return .failure(SyncDecodeError(.truncated, "header says \(expected) bytes, \(bytes.count) received"))
        }
        guard bytes.count == expected else {
            return .failure(SyncDecodeError(.badLength, "header says \(expected) bytes, \(bytes.count) received"))
        }
        guard header.sender != selfID else {
            return .failure(SyncDecodeError(.selfSent, "sender \(header.sender) is this node"))
        }
        let known = peers[header.sender]
        if let members {
            guard members.contains(header.sender) else {
                return .failure(SyncDecodeError(.unknownSender, "sender \(header.sender) is not a cluster member"))
            }
        } else if known == nil && peers.count >= Self.maxSenders {
            return .failure(SyncDecodeError(.unknownSender, "sender \(header.sender): already tracking \(Self.maxSenders) senders"))
        }

        // Reuse the cached subkey for the sender's current epoch; any other epoch derives one, and
        // it is kept only once a message under it verifies.
        let subkey = known.flatMap { $0.epoch == header.epoch ? $0.subkey : nil }
            ?? SyncSealing.subkey(key, sender: header.sender, epoch: header.epoch)
        guard let plain = SyncSealing.open(bytes, header: header, subkey: subkey) else {
            return .failure(SyncDecodeError(.authFailed, "tag did not verify (sender \(header.sender), epoch \(header.epoch), sequence \(header.sequence)); the cluster key may differ"))
        }

        var peer = known ?? Peer(epoch: header.epoch, subkey: subkey, windows: Self.freshWindows)
        if header.epoch < peer.epoch {
            return .failure(SyncDecodeError(.staleEpoch, "sender \(header.sender) epoch \(header.epoch) is older than \(peer.epoch)"))
        }
        if header.epoch > peer.epoch {
            // The sender restarted: its sequences begin again under a new subkey.
            peer = Peer(epoch: header.epoch, subkey: subkey, windows: Self.freshWindows)
        }
        let index = Int(channel.rawValue)
        switch peer.windows[index].accept(header.sequence) {
        case .fresh:
            break
        case .duplicate:
            peers[header.sender] = peer
            return .failure(SyncDecodeError(.replayed, "sender \(header.sender) sequence \(header.sequence) already seen"))
        case .tooOld:
            peers[header.sender] = peer
            return .failure(SyncDecodeError(.replayed, "sender \(header.sender) sequence \(header.sequence) is below the replay window (highest \(peer.windows[index].highest))"))
        }
        peers[header.sender] = peer

        do {
            let message = try SyncCodec.decodePayload(type: header.type, plain)
            return .success((header, message))
        } catch {
            return .failure(error)
        }
    }
}
