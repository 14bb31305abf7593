import TandemCore

/// The sync protocol's constants. The byte layouts, limits and the receiver's handling of every
/// malformed case are specified in proto/SPEC.md. Each message group's values and their codec
/// (size, encode, decode) share a file: Header, Deltas, Bulk, Digests, Gossip, Services,
/// Verdicts; Codec.swift is the entry point that dispatches on the message type.
public enum SyncWire {
    /// First two bytes of every message: "TS".
    public static let magic: UInt16 = 0x5453
    public static let version: UInt8 = 1
    public static let headerSize = 28
    /// Poly1305 tag appended to every sealed payload.
    public static let tagSize = 16
    /// Largest UDP datagram we send or accept: 1500-byte MTU minus IPv4 and UDP headers.
    public static let maxDatagram = 1472
    /// Largest sealed frame on the TCP (bulk) channel, header and tag included.
    public static let maxStreamFrame = 65_536
    /// Encoded size of one SyncEntry.
    public static let entrySize = 52
    /// Level-0 and level-1 digest fan-out (buckets per level).
    public static let digestFanout = 128
    /// Most nack ranges in one message.
    public static let maxNackRanges = 64
    /// Largest service spec (its JSON) in one service record.
    public static let maxServiceSpec = 32_768
    /// Fixed part of a service record: vip u32, port u16, proto u8, flags u8, version u64,
    /// origin u32, specLength u16.
    public static let serviceRecordFixed = 22
    /// Fixed part of an endpoint-verdicts part: generation u64, flags u8, part u8,
    /// serviceCount u16, hostCount u16.
    public static let endpointVerdictsFixed = 14
    /// Fixed part of one service's verdicts: vip u32, port u16, proto u8, count u8.
    public static let serviceVerdictFixed = 8
    /// One endpoint held down: address u32, port u16, reasons u8, reserved u8, since u64.
    public static let downEndpointSize = 16
    /// One host state: address u32, state u8, reserved u8, version u64, origin u32.
    public static let hostVerdictSize = 18
    /// Most parts one verdict set is split into (a whole set of 256 services with every
    /// endpoint down and 16384 host states takes 9).
    public static let maxVerdictParts = 16
}

public enum SyncMessageType: UInt8, Sendable, CaseIterable {
    case hello = 1
    case deltaBatch = 2
    case ack = 3
    case nack = 4
    case bulkRequest = 5
    case bulkBegin = 6
    case bulkChunk = 7
    case bulkEnd = 8
    case keepalive = 9
    case digest = 10
    case digestRequest = 11
    // Membership and election (gossip channel, proto/SPEC.md §12).
    case probe = 12
    case probeRequest = 13
    case probeAck = 14
    // Service table sharing (config channel, proto/SPEC.md §14).
    case serviceDigest = 15
    case serviceRecords = 16
    // Endpoint health verdicts (config channel, proto/SPEC.md §14.5).
    case endpointVerdicts = 17
    // Kernel conntrack entries (kernel channels, proto/SPEC.md §15).
    case kernelDeltaBatch = 18
    case kernelBulkChunk = 19
}

extension SyncMessageType {
    /// The name SPEC.md and the vectors use ("delta batch" -> "deltaBatch").
    public var wireName: String {
        switch self {
        case .hello: "hello"
        case .deltaBatch: "deltaBatch"
        case .ack: "ack"
        case .nack: "nack"
        case .bulkRequest: "bulkRequest"
        case .bulkBegin: "bulkBegin"
        case .bulkChunk: "bulkChunk"
        case .bulkEnd: "bulkEnd"
        case .keepalive: "keepalive"
        case .digest: "digest"
        case .digestRequest: "digestRequest"
        case .probe: "probe"
        case .probeRequest: "probeRequest"
        case .probeAck: "probeAck"
        case .serviceDigest: "serviceDigest"
        case .serviceRecords: "serviceRecords"
        case .endpointVerdicts: "endpointVerdicts"
        case .kernelDeltaBatch: "kernelDeltaBatch"
        case .kernelBulkChunk: "kernelBulkChunk"
        }
    }

    /// Types that carry connection entries: BPF ones (2, 7) or kernel ones (18, 19).
    public var carriesEntries: Bool {
        switch self {
        case .deltaBatch, .bulkChunk, .kernelDeltaBatch, .kernelBulkChunk: true
        default: false
        }
    }

    /// Kernel conntrack entry types, which travel only on the kernel channels.
    public var carriesKernelEntries: Bool { self == .kernelDeltaBatch || self == .kernelBulkChunk }

    /// Membership types, which travel only on the gossip channel.
    public var isGossip: Bool {
        switch self {
        case .probe, .probeRequest, .probeAck: true
        default: false
        }
    }

    /// Service-sharing and verdict types, which travel only on the config channel.
    public var isConfig: Bool {
        switch self {
        case .serviceDigest, .serviceRecords, .endpointVerdicts: true
        default: false
        }
    }
}

public enum SyncMessage: Hashable, Sendable {
    case hello(Hello)
    case deltaBatch(DeltaBatch)
    case ack(Ack)
    case nack(Nack)
    case bulkRequest(BulkRequest)
    case bulkBegin(BulkBegin)
    case bulkChunk(BulkChunk)
    case bulkEnd(BulkEnd)
    case keepalive(Keepalive)
    case digest(Digest)
    case digestRequest(DigestRequest)
    case probe(Probe)
    case probeRequest(ProbeRequest)
    case probeAck(ProbeAck)
    case serviceDigest(ServiceDigest)
    case serviceRecords(ServiceRecords)
    case endpointVerdicts(EndpointVerdicts)
    case kernelDeltaBatch(KernelDeltaBatch)
    case kernelBulkChunk(KernelBulkChunk)

    public var type: SyncMessageType {
        switch self {
        case .hello: .hello
        case .deltaBatch: .deltaBatch
        case .ack: .ack
        case .nack: .nack
        case .bulkRequest: .bulkRequest
        case .bulkBegin: .bulkBegin
        case .bulkChunk: .bulkChunk
        case .bulkEnd: .bulkEnd
        case .keepalive: .keepalive
        case .digest: .digest
        case .digestRequest: .digestRequest
        case .probe: .probe
        case .probeRequest: .probeRequest
        case .probeAck: .probeAck
        case .serviceDigest: .serviceDigest
        case .serviceRecords: .serviceRecords
        case .endpointVerdicts: .endpointVerdicts
        case .kernelDeltaBatch: .kernelDeltaBatch
        case .kernelBulkChunk: .kernelBulkChunk
        }
    }
}

/// Why a received message was dropped; each has its own counter.
public enum SyncDropReason: String, Sendable, CaseIterable, Hashable {
    case truncated          // shorter than a header, or than the header's length says
    case oversized          // longer than maxDatagram / maxStreamFrame
    case badMagic
    case badVersion
    case unknownType
    case badFlags           // undefined flag bits, a non-zero reserved byte, or the stream flag disagrees with the channel
    case badLength          // header length disagrees with the bytes received
    case authFailed         // AEAD tag did not verify: forged, corrupted, or a different key
    case replayed           // sequence already seen or below the replay window
    case staleEpoch         // an epoch older than one already seen from that sender
    case malformedPayload   // authenticated but does not decode (bad count, bad field value, trailing bytes)
    case unknownSender      // a node id that is not in the cluster
    case selfSent           // our own node id
}

/// A decode failure with the counter it goes to and a human-readable detail.
public struct SyncDecodeError: Error, Hashable, Sendable, CustomStringConvertible {
    public var reason: SyncDropReason
    public var detail: String
    public init(_ reason: SyncDropReason, _ detail: String) {
        self.reason = reason
        self.detail = detail
    }
    public var description: String { "\(reason.rawValue): \(detail)" }
}
