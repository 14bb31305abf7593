import TandemCore

/// The hashes anti-entropy digests are built from (proto/SPEC.md, "Anti-entropy"). Every node must
/// compute them bit for bit the same, so they are defined here once, in plain integer arithmetic
/// (SplitMix64's finalizer), and pinned by proto/vectors/hashes.json. Not a cryptographic hash:
/// digests only travel sealed, between nodes that hold the cluster key.
public enum SyncHashing {
    /// 2^64 / golden ratio, SplitMix64's increment.
    public static let golden: UInt64 = 0x9E37_79B9_7F4A_7C15

    /// SplitMix64's output function (Steele, Lea, Flood 2014; the constants of Stafford's Mix13).
    @inlinable
    public static func mix(_ x: UInt64) -> UInt64 {
        var z = x
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Hash of a flow key's 13 bytes (saddr, daddr, sport, dport, proto):
    /// a = saddr << 32 | daddr, b = sport << 24 | dport << 8 | proto,
    /// flowHash = mix(mix(a + golden) ^ b).
    @inlinable
    public static func flowHash(_ key: FlowTuple) -> UInt64 {
        let a = UInt64(key.source.value) << 32 | UInt64(key.destination.value)
        let b = UInt64(key.sourcePort) << 24 | UInt64(key.destinationPort) << 8 | UInt64(key.proto)
        return mix(mix(a &+ golden) ^ b)
    }

    /// Hash of what anti-entropy compares for one entry: its flow key, version and operation.
    /// entryHash = mix(mix(flowHash(key) ^ version) + op).
    @inlinable
    public static func entryHash(_ e: SyncEntry) -> UInt64 {
        mix(mix(flowHash(e.record.key) ^ e.version) &+ UInt64(e.operation.rawValue))
    }

    /// Hash of a kernel entry's key (§15.4): its original tuple and zone.
    /// a = saddr << 32 | daddr, b = l4a << 48 | l4b << 32 | proto << 16 | zone,
    /// kernelKeyHash = mix(mix(a + golden) ^ b), with l4a and l4b as in the entry's tuple.
    public static func kernelKeyHash(_ key: KernelConnection.Key) -> UInt64 {
        let t = key.original
        let (l4a, l4b): (UInt16, UInt16) = switch t.l4 {
        case .ports(let s, let d): (s, d)
        case .icmp(let id, let type, let code): (id, UInt16(type) << 8 | UInt16(code))
        case .none: (0, 0)
        }
        let a = UInt64(t.source.value) << 32 | UInt64(t.destination.value)
        let b = UInt64(l4a) << 48 | UInt64(l4b) << 32 | UInt64(t.proto) << 16 | UInt64(key.zone)
        return mix(mix(a &+ golden) ^ b)
    }

    /// entryHash for kernel entries: mix(mix(kernelKeyHash(key) ^ version) + op).
    public static func entryHash(_ e: KernelSyncEntry) -> UInt64 {
        mix(mix(kernelKeyHash(e.connection.key) ^ e.version) &+ UInt64(e.operation.rawValue))
    }

    public static func leaf(of key: KernelConnection.Key) -> Int { leaf(ofFlowHash: kernelKeyHash(key)) }

    /// Level-0 bucket of a flow: the top 7 bits of its flow hash.
    @inlinable
    public static func bucket(ofFlowHash h: UInt64) -> Int { Int(truncatingIfNeeded: h >> 57) }

    /// Level-1 sub-bucket: the next 7 bits.
    @inlinable
    public static func subBucket(ofFlowHash h: UInt64) -> Int { Int(truncatingIfNeeded: (h >> 50) & 0x7F) }

    /// Digest leaf (bucket * 128 + sub-bucket): the top 14 bits.
    @inlinable
    public static func leaf(ofFlowHash h: UInt64) -> Int { Int(truncatingIfNeeded: h >> 50) }

    public static func leaf(of key: FlowTuple) -> Int { leaf(ofFlowHash: flowHash(key)) }

    /// FNV-1a 64 of a byte string (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
    public static func fnv1a64(_ bytes: [UInt8]) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in bytes {
            h ^= UInt64(b)
            h = h &* 0x0000_0100_0000_01B3
        }
        return h
    }

    /// Hash of one live service for the service digest: its key and its spec's bytes, not its
    /// version, so two nodes holding the same services agree whoever wrote them.
    /// k = vip << 24 | port << 8 | proto; serviceHash = mix(mix(k + golden) ^ fnv1a64(spec)).
    public static func serviceHash(key: ServiceKey, spec: [UInt8]) -> UInt64 {
        let k = UInt64(key.vip.value) << 24 | UInt64(key.port) << 8 | UInt64(key.proto.rawValue)
        return mix(mix(k &+ golden) ^ fnv1a64(spec))
    }
}
