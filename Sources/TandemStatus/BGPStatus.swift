/// What a node reports of its BGP speaker (`GET /netlox/v1/bgp`, `tandem get bgp`).
public struct BGPStatus: Sendable, Equatable, Codable {
    public struct Session: Sendable, Equatable, Codable {
        public var neighbor: String
        public var asn: UInt32
        /// BIRD's protocol state: up, start, down.
        public var state: String
        /// The BGP state (Established, Active, Connect, ...) and BIRD's last reason.
        public var info: String
        public var since: String
        public init(neighbor: String, asn: UInt32, state: String, info: String, since: String) {
            self.neighbor = neighbor
            self.asn = asn
            self.state = state
            self.info = info
            self.since = since
        }
    }
    /// active-active or master-backup.
    public var mode: String
    public var running: Bool
    public var pid: Int32?
    /// Times BIRD was started again after it exited on its own.
    public var restarts: UInt64
    /// The VIPs announced now, and with which MED.
    public var announced: [String]
    public var sessions: [Session]
    /// Route sets BIRD refused (or could not be given): retried every second.
    public var applyFailures: UInt64
    /// `tandem node drain`: every VIP withdrawn.
    public var draining: Bool
    /// Connections this node's datapath created since it started (a drain waits for this to
    /// stand still).
    public var newConnections: UInt64

    public init(mode: String, running: Bool, pid: Int32?, restarts: UInt64, announced: [String], sessions: [Session],
                applyFailures: UInt64, draining: Bool = false, newConnections: UInt64 = 0) {
        self.mode = mode
        self.running = running
        self.pid = pid
        self.restarts = restarts
        self.announced = announced
        self.sessions = sessions
        self.applyFailures = applyFailures
        self.draining = draining
        self.newConnections = newConnections
    }
}

/// POST /netlox/v1/node/drain: `drain` true withdraws every VIP, false announces them again.
public struct NodeDrainEntry: Codable, Sendable, Equatable {
    public var drain: Bool
    public init(drain: Bool) { self.drain = drain }
}
