/// Transport protocols a service can match. Raw values are IP protocol numbers.
public enum L4Protocol: UInt8, Sendable, Codable, CaseIterable, CustomStringConvertible {
    case tcp = 6
    case udp = 17

    public init?(name: String) {
        switch name.lowercased() {
        case "tcp": self = .tcp
        case "udp": self = .udp
        default: return nil
        }
    }

    public var description: String { self == .tcp ? "tcp" : "udp" }
}

/// NAT modes, with LoxiLB's names and numbers (its API sends `mode` as an integer).
public enum NATMode: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// DNAT only: the endpoint sees the client's address.
    case `default` = 0
    /// DNAT and SNAT to the node's own address.
    case onearm = 1
    /// DNAT and SNAT to the service's source IP (the floating IP unless configured).
    case fullnat = 2

    public init?(name: String) {
        switch name.lowercased() {
        case "default", "dnat": self = .default
        case "onearm": self = .onearm
        case "fullnat": self = .fullnat
        default: return nil
        }
    }

    public var description: String {
        switch self {
        case .default: "default"
        case .onearm: "onearm"
        case .fullnat: "fullnat"
        }
    }
}

/// Endpoint selection. Raw values are the datapath's (bpf/include/tandem_maps.h).
public enum Selection: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case roundRobin = 0
    case weighted = 1
    case persist = 2
    case maglev = 3
    /// The endpoint with the fewest active connections, counted in the kernel (LoxiLB's `lc`).
    case leastConnections = 4

    /// Accepts Tandem's names and loxicmd's (`rr`, `hash`, `priority`, `persist`, `lc`).
    public init?(name: String) {
        switch name.lowercased() {
        case "rr", "roundrobin", "round-robin": self = .roundRobin
        case "weighted", "priority", "wrr": self = .weighted
        case "persist", "persistence": self = .persist
        case "maglev", "hash", "consistent": self = .maglev
        case "lc", "leastconnections", "least-connections": self = .leastConnections
        default: return nil
        }
    }

    /// LoxiLB's API numbers for `sel`: 0 rr, 1 hash, 2 priority, 3 persist, 4 lc.
    public init?(loxiNumber: Int) {
        switch loxiNumber {
        case 0: self = .roundRobin
        case 1: self = .maglev
        case 2: self = .weighted
        case 3: self = .persist
        case 4: self = .leastConnections
        default: return nil
        }
    }

    public var loxiNumber: Int {
        switch self {
        case .roundRobin: 0
        case .maglev: 1
        case .weighted: 2
        case .persist: 3
        case .leastConnections: 4
        }
    }

    public var description: String {
        switch self {
        case .roundRobin: "rr"
        case .weighted: "priority"
        case .persist: "persist"
        case .maglev: "hash"
        case .leastConnections: "lc"
        }
    }
}
