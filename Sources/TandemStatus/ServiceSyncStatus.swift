/// What `GET /netlox/v1/cluster/services` answers and `tandem get cluster` shows: this node's
/// service-table digest beside each peer's, so an operator sees at once which nodes differ.
public struct ServiceSyncStatus: Codable, Sendable, Equatable {
    public struct Peer: Codable, Sendable, Equatable {
        public var node: UInt32
        public var address: String
        /// The peer's live services and digest at the last exchange; nil before the first.
        public var services: UInt32?
        public var digest: String?
        /// Whether the peer's table equals this node's (as of the last exchange); nil: unknown.
        public var agrees: Bool?
        /// Seconds since the last completed exchange; nil: none yet.
        public var lastExchangeSecondsAgo: Double?
        /// Why the last exchange failed, if it did.
        public var lastError: String?
        public init(node: UInt32, address: String, services: UInt32? = nil, digest: String? = nil, agrees: Bool? = nil,
                    lastExchangeSecondsAgo: Double? = nil, lastError: String? = nil) {
            self.node = node
            self.address = address
            self.services = services
            self.digest = digest
            self.agrees = agrees
            self.lastExchangeSecondsAgo = lastExchangeSecondsAgo
            self.lastError = lastError
        }
    }

    public var node: UInt32
    /// This node's live services and their digest (hex).
    public var services: UInt32
    public var digest: String
    /// Tombstones held (deletes remembered for peers that were away).
    public var tombstones: Int
    public var peers: [Peer]
    public var counters: ServiceSyncCounters
    /// Config-channel frames dropped, by reason (forged, replayed, malformed ...).
    public var dropped: [String: UInt64]
    /// Records whose spec did not validate as an API request.
    public var refused: UInt64
    /// Endpoint verdict sharing (§14.5): counters, and per peer the set held from it.
    public var verdicts: VerdictStatus?

    public init(node: UInt32, services: UInt32, digest: String, tombstones: Int, peers: [Peer],
                counters: ServiceSyncCounters, dropped: [String: UInt64], refused: UInt64) {
        self.node = node
        self.services = services
        self.digest = digest
        self.tombstones = tombstones
        self.peers = peers
        self.counters = counters
        self.dropped = dropped
        self.refused = refused
    }

    /// True when every peer agreed at its last exchange.
    public var allAgree: Bool { peers.allSatisfy { $0.agrees == true } }
}

/// Endpoint verdicts as this node holds them: what it publishes, what it took from peers, and
/// how often a peer's verdict changed its datapath.
public struct VerdictStatus: Codable, Sendable, Equatable {
    public struct Peer: Codable, Sendable, Equatable {
        public var node: UInt32
        public var address: String
        public var generation: UInt64
        /// Seconds since the peer's set was last received (a repeat refreshes it).
        public var receivedSecondsAgo: Double
        /// Endpoints the peer holds down, over all its services.
        public var down: Int
        /// Whether the set is recent enough to be used.
        public var fresh: Bool
        public init(node: UInt32, address: String, generation: UInt64, receivedSecondsAgo: Double, down: Int, fresh: Bool) {
            self.node = node
            self.address = address
            self.generation = generation
            self.receivedSecondsAgo = receivedSecondsAgo
            self.down = down
            self.fresh = fresh
        }
    }

    /// The generation of the set this node publishes.
    public var generation: UInt64
    public var counters: VerdictCounters
    /// Times a peer's verdict changed this node's datapath.
    public var applied: UInt64
    public var peers: [Peer]
    public init(generation: UInt64, counters: VerdictCounters, applied: UInt64, peers: [Peer]) {
        self.generation = generation
        self.counters = counters
        self.applied = applied
        self.peers = peers
    }
}

/// Lower-case, zero-padded hex of a digest.
public func digestHex(_ v: UInt64) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: max(0, 16 - s.count)) + s
}

/// Counters of the merge rule, for status and metrics.
public struct ServiceSyncCounters: Hashable, Sendable, Codable {
    /// Records from peers that won and were handed to the node.
    public var accepted: UInt64 = 0
    /// Records from peers that were not newer than what this node holds.
    public var stale: UInt64 = 0
    /// Winning records the node could not apply (a spec that does not validate, an endpoint this
    /// node cannot reach, a full table): retried on the next exchange.
    public var applyFailed: UInt64 = 0
    /// Tombstones forgotten because they were old or too many.
    public var tombstonesExpired: UInt64 = 0
    public init() {}
}

/// Counters of verdict sharing, for status and metrics.
public struct VerdictCounters: Hashable, Sendable, Codable {
    /// Verdict sets from peers that were newer than the one held and were taken.
    public var received: UInt64 = 0
    /// Sets not newer than the one held (a reordered or repeated exchange).
    public var outdated: UInt64 = 0
    /// Host states from peers that won the merge.
    public var hostStatesMerged: UInt64 = 0
    /// Host states not taken because the table is full.
    public var hostStatesOverCap: UInt64 = 0
    public init() {}
}
