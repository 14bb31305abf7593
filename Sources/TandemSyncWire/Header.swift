import TandemCore

/// Header flag bits.
public struct SyncHeaderFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// Sent on the TCP (bulk) channel: its own nonce space and replay rule.
    public static let stream = SyncHeaderFlags(rawValue: 0x01)
    /// Sealed for the gossip channel (membership and election); never together with `stream`.
    public static let gossip = SyncHeaderFlags(rawValue: 0x02)
    /// Sealed for the config channel (service table sharing); never with another channel flag.
    public static let config = SyncHeaderFlags(rawValue: 0x04)
    /// Sealed for the kernel-conntrack replication channels (§15): alone on their datagrams, with
    /// `stream` on their bulk transfers; never with `gossip` or `config`.
    public static let kernel = SyncHeaderFlags(rawValue: 0x08)
    public static let known: SyncHeaderFlags = [.stream, .gossip, .config, .kernel]
}

/// The clear-text header, authenticated as AEAD associated data.
public struct SyncHeader: Hashable, Sendable {
    public var type: SyncMessageType
    public var flags: SyncHeaderFlags
    /// The sender's node id (unique in the cluster).
    public var sender: UInt32
    /// The sender's boot epoch: grows on every restart (microseconds of wall-clock time at start).
    public var epoch: UInt64
    /// Per (sender, epoch, channel) message counter; the AEAD nonce, and the replay window's index.
    public var sequence: UInt64
    /// Bytes of sealed payload after the header, tag included.
    public var length: UInt16

    public init(type: SyncMessageType, flags: SyncHeaderFlags = [], sender: UInt32, epoch: UInt64, sequence: UInt64,
                length: UInt16) {
        self.type = type
        self.flags = flags
        self.sender = sender
        self.epoch = epoch
        self.sequence = sequence
        self.length = length
    }
}

/// The channels a sealed message travels on. The raw value is the first four bytes of the AEAD
/// nonce, so the same sequence number on two channels never reuses a nonce.
public enum SyncChannel: UInt32, Sendable, CaseIterable, Hashable, CustomStringConvertible {
    /// UDP: deltas, acks, nacks, keepalives, hellos, digests.
    case datagram = 0
    /// TCP: bulk requests and transfers, sealed frames back to back.
    case stream = 1
    /// UDP on the gossip port: membership probes and election adverts.
    case gossip = 2
    /// TCP on the config port: service table sharing (digests and records) and endpoint verdicts.
    case config = 3
    /// UDP on the kernel-sync port: the kernel conntrack table's deltas, acks, nacks, keepalives,
    /// hellos and digests (§15), a delta stream of its own beside the BPF table's.
    case kernelDatagram = 4
    /// TCP: bulk transfers of the kernel conntrack table.
    case kernelStream = 5

    /// Largest whole sealed message (header, ciphertext and tag) on this channel.
    public var maxFrame: Int {
        switch self {
        case .datagram, .gossip, .kernelDatagram: SyncWire.maxDatagram
        case .stream, .config, .kernelStream: SyncWire.maxStreamFrame
        }
    }

    /// Largest plaintext payload that fits in one message on this channel.
    public var maxPayload: Int { maxFrame - SyncWire.headerSize - SyncWire.tagSize }

    /// The header flags a message sealed for this channel carries.
    public var headerFlags: SyncHeaderFlags {
        switch self {
        case .datagram: []
        case .stream: .stream
        case .gossip: .gossip
        case .config: .config
        case .kernelDatagram: .kernel
        case .kernelStream: [.kernel, .stream]
        }
    }

    /// The channel a header says its message was sealed for (the header decoder refuses the flag
    /// combinations that name no channel).
    public init(flags: SyncHeaderFlags) {
        if flags.contains(.kernel) {
            self = flags.contains(.stream) ? .kernelStream : .kernelDatagram
        } else {
            self = flags.contains(.stream) ? .stream : flags.contains(.gossip) ? .gossip
                : flags.contains(.config) ? .config : .datagram
        }
    }

    /// A channel of the kernel conntrack table's replication.
    public var isKernel: Bool { self == .kernelDatagram || self == .kernelStream }

    public var description: String {
        switch self {
        case .datagram: "datagram"
        case .stream: "stream"
        case .gossip: "gossip"
        case .config: "config"
        case .kernelDatagram: "kernel-datagram"
        case .kernelStream: "kernel-stream"
        }
    }
}

extension SyncCodec {
    public static func encodeHeader(_ h: SyncHeader) -> [UInt8] {
        var w = ByteWriter(capacity: SyncWire.headerSize)
        w.u16(SyncWire.magic)
        w.u8(SyncWire.version)
        w.u8(h.type.rawValue)
        w.u8(h.flags.rawValue)
        w.u8(0)  // reserved
        w.u16(h.length)
        w.u32(h.sender)
        w.u64(h.epoch)
        w.u64(h.sequence)
        return w.bytes
    }

    /// Decodes the first 28 bytes (anything after them is ignored here; the opener checks the
    /// header's length against the bytes received). Checks magic, version, type, flags and the
    /// reserved byte, in that order.
    public static func decodeHeader(_ bytes: UnsafeRawBufferPointer) throws(SyncDecodeError) -> SyncHeader {
        guard bytes.count >= SyncWire.headerSize else {
            throw SyncDecodeError(.truncated, "\(bytes.count) byte(s), a header needs \(SyncWire.headerSize)")
        }
        var r = ByteReader(bytes, context: "header")
        // Lengths were checked above, so these reads cannot fail; `try` only satisfies the type.
        let magic = try r.u16("magic")
        guard magic == SyncWire.magic else {
            throw SyncDecodeError(.badMagic, "magic 0x\(hex(magic)), expected 0x\(hex(SyncWire.magic))")
        }
        let version = try r.u8("version")
        guard version == SyncWire.version else {
            throw SyncDecodeError(.badVersion, "version \(version), this node speaks \(SyncWire.version)")
        }
        let rawType = try r.u8("type")
        guard let type = SyncMessageType(rawValue: rawType) else {
            throw SyncDecodeError(.unknownType, "message type \(rawType)")
        }
        let flags = SyncHeaderFlags(rawValue: try r.u8("flags"))
        guard SyncHeaderFlags.known.isSuperset(of: flags) else {
            throw SyncDecodeError(.badFlags, "undefined flag bits 0x\(hex(flags.subtracting(.known).rawValue))")
        }
        guard flags.intersection([.stream, .gossip, .config]).rawValue.nonzeroBitCount <= 1 else {
            throw SyncDecodeError(.badFlags, "more than one channel flag (0x\(hex(flags.rawValue)))")
        }
        guard !flags.contains(.kernel) || flags.isDisjoint(with: [.gossip, .config]) else {
            throw SyncDecodeError(.badFlags, "the kernel flag with the gossip or config flag (0x\(hex(flags.rawValue)))")
        }
        // Kernel entries travel only on the kernel channels, BPF entries never do.
        if type.carriesKernelEntries != flags.contains(.kernel), type.carriesEntries {
            throw SyncDecodeError(.badFlags, flags.contains(.kernel) ? "\(type.wireName) with the kernel flag"
                                                                      : "\(type.wireName) without the kernel flag")
        }
        // Membership messages travel only on the gossip channel, and only they do.
        guard type.isGossip == flags.contains(.gossip) else {
            throw SyncDecodeError(.badFlags, type.isGossip ? "\(type.wireName) without the gossip flag"
                                                           : "\(type.wireName) with the gossip flag")
        }
        // The same for service sharing and the config channel.
        guard type.isConfig == flags.contains(.config) else {
            throw SyncDecodeError(.badFlags, type.isConfig ? "\(type.wireName) without the config flag"
                                                           : "\(type.wireName) with the config flag")
        }
        let reserved = try r.u8("reserved")
        guard reserved == 0 else {
            throw SyncDecodeError(.badFlags, "reserved header byte is 0x\(hex(reserved)), must be 0")
        }
        let length = try r.u16("length")
        let sender = try r.u32("sender")
        let epoch = try r.u64("epoch")
        let sequence = try r.u64("sequence")
        return SyncHeader(type: type, flags: flags, sender: sender, epoch: epoch, sequence: sequence, length: length)
    }

    public static func decodeHeader(_ bytes: [UInt8]) throws(SyncDecodeError) -> SyncHeader {
        try withBytes(bytes) { (b) throws(SyncDecodeError) in try decodeHeader(b) }
    }
}
