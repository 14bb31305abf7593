/// HA instance naming: an instance is known on the wire only by a 32-bit id derived from its name,
/// so every node computes the same id without coordination (proto/SPEC.md §12).
public enum HAInstance {
    /// FNV-1a 32-bit offset basis (2166136261).
    public static let fnvOffsetBasis: UInt32 = 0x811C_9DC5
    /// FNV 32-bit prime (16777619 = 2^24 + 2^8 + 0x93).
    public static let fnvPrime: UInt32 = 0x0100_0193

    /// FNV-1a 32 over the UTF-8 bytes of `name`: for each byte, xor it in, then multiply by the
    /// prime (mod 2^32). Not a cryptographic hash; instance names are configuration, not input
    /// from strangers, and a collision would only merge two instances' elections.
    public static func instanceID(_ name: String) -> UInt32 {
        var hash = fnvOffsetBasis
        for byte in name.utf8 {
            hash ^= UInt32(byte)
            hash = hash &* fnvPrime
        }
        return hash
    }
}

/// Timing and identity of one node in one HA instance's election.
public struct ElectionSettings: Sendable, Hashable {
    /// The instance's name (kube-loxilb's "llb-inst0"); its FNV-1a id goes on the wire.
    public var instanceName: String
    /// This node's priority: when nobody is MASTER, the highest (priority, node id) candidate claims.
    public var priority: UInt8
    /// Startup hold: a starting node claims nothing until it has heard every live peer's advert or
    /// this much time passed, so it learns about an existing MASTER before it could compete.
    public var settleNanos: UInt64
    /// How long the other candidates wait for the best one to claim after the master's loss; after
    /// each further timeout the next candidate in rank may claim.
    public var candidateTimeoutNanos: UInt64
    /// How long a node stays in FAULT after a failed takeover before it is eligible again.
    public var faultHoldNanos: UInt64
    /// After stepping down, adverts keep the recentMaster flag this long, so a MASTER that hears
    /// from this node after holding it as dead knows it may have moved the floating IPs.
    public var recentMasterNanos: UInt64

    public init(instanceName: String, priority: UInt8 = 100, settleNanos: UInt64 = 1_000_000_000,
                candidateTimeoutNanos: UInt64 = 400_000_000, faultHoldNanos: UInt64 = 2_000_000_000,
                recentMasterNanos: UInt64 = 30_000_000_000) {
        self.instanceName = instanceName
        self.priority = priority
        self.settleNanos = settleNanos
        self.candidateTimeoutNanos = candidateTimeoutNanos
        self.faultHoldNanos = faultHoldNanos
        self.recentMasterNanos = recentMasterNanos
    }

    /// The instance id adverts carry (`HAInstance.instanceID(instanceName)`).
    public var instanceID: UInt32 { HAInstance.instanceID(instanceName) }
}
