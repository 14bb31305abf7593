/// The cluster as one node sees it: `GET /netlox/v1/cluster` and `tandem get cluster`.
public struct HAStatus: Codable, Sendable, Equatable {
    public struct Member: Codable, Sendable, Equatable {
        public var node: UInt32
        public var address: String
        /// alive, suspect, dead, left (or "self").
        public var state: String
        public var incarnation: UInt32
        /// Milliseconds since a message from this member was authenticated; nil: never.
        public var lastHeardMs: UInt64?
        /// The member's role per instance, from its latest advert.
        public var roles: [String: String]
        public var terms: [String: UInt64]
        public var inSync: Bool?
        /// When this node last saw the member's state change (wall clock, ms since 1970).
        public var changedAtUnixMs: UInt64?
        public init(node: UInt32, address: String, state: String, incarnation: UInt32, lastHeardMs: UInt64? = nil, roles: [String: String], terms: [String: UInt64], inSync: Bool? = nil, changedAtUnixMs: UInt64? = nil) {
            self.node = node
            self.address = address
            self.state = state
            self.incarnation = incarnation
            self.lastHeardMs = lastHeardMs
            self.roles = roles
            self.terms = terms
            self.inSync = inSync
            self.changedAtUnixMs = changedAtUnixMs
        }
    }

    public struct Transition: Codable, Sendable, Equatable {
        public var from: String
        public var to: String
        public var term: UInt64
        public var reason: String
        /// Wall clock, milliseconds since 1970.
        public var atUnixMs: UInt64
        public init(from: String, to: String, term: UInt64, reason: String, atUnixMs: UInt64) {
            self.from = from
            self.to = to
            self.term = term
            self.reason = reason
            self.atUnixMs = atUnixMs
        }
    }

    public struct Instance: Codable, Sendable, Equatable {
        public var name: String
        public var role: String
        public var term: UInt64
        public var master: UInt32?
        public var priority: UInt8
        public var external: Bool
        public var vips: [String]
        public var transitions: [Transition]
        public var takeovers: UInt64
        public var takeoverFailures: UInt64
        /// The last successful takeover: when it finished and how long the provider took.
        public var lastTakeoverAtUnixMs: UInt64?
        public var lastTakeoverMs: Double?
        /// How long the last takeover's preparation (`HAHooks.prepareTakeover`) took before the move.
        public var lastPrepareMs: Double?
        public var lastTakeoverDetail: String?
        public var lastError: String?
        public init(name: String, role: String, term: UInt64, master: UInt32? = nil, priority: UInt8, external: Bool, vips: [String], transitions: [Transition], takeovers: UInt64, takeoverFailures: UInt64, lastTakeoverAtUnixMs: UInt64? = nil, lastTakeoverMs: Double? = nil, lastPrepareMs: Double? = nil, lastTakeoverDetail: String? = nil, lastError: String? = nil) {
            self.name = name
            self.role = role
            self.term = term
            self.master = master
            self.priority = priority
            self.external = external
            self.vips = vips
            self.transitions = transitions
            self.takeovers = takeovers
            self.takeoverFailures = takeoverFailures
            self.lastTakeoverAtUnixMs = lastTakeoverAtUnixMs
            self.lastTakeoverMs = lastTakeoverMs
            self.lastPrepareMs = lastPrepareMs
            self.lastTakeoverDetail = lastTakeoverDetail
            self.lastError = lastError
        }
    }

    public var node: UInt32
    public var address: String
    public var provider: String
    public var inSync: Bool
    public var incarnation: UInt32
    public var members: [Member]
    public var instances: [Instance]
    public var counters: [String: UInt64]
    public var drops: [String: UInt64]
    public init(node: UInt32, address: String, provider: String, inSync: Bool, incarnation: UInt32, members: [Member], instances: [Instance], counters: [String: UInt64], drops: [String: UInt64]) {
        self.node = node
        self.address = address
        self.provider = provider
        self.inSync = inSync
        self.incarnation = incarnation
        self.members = members
        self.instances = instances
        self.counters = counters
        self.drops = drops
    }
}

/// kube-loxilb's cistate entry: `{"instance":"llb-inst0","state":"MASTER","vip":"0.0.0.0"}`.
public struct CIStateEntry: Codable, Sendable, Equatable {
    public var instance: String
    public var state: String
    public var vip: String?
    public init(instance: String, state: String, vip: String? = nil) {
        self.instance = instance
        self.state = state
        self.vip = vip
    }
}
