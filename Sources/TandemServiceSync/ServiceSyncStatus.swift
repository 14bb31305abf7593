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

/// Lower-case, zero-padded hex of a digest.
public func digestHex(_ v: UInt64) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: max(0, 16 - s.count)) + s
}
