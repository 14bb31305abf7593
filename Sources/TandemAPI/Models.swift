import TandemCore

// Wire models of the LoxiLB-shaped API (/netlox/v1), so tools written for LoxiLB (kube-loxilb,
// loxicmd scripts) can drive Tandem. Field names follow LoxiLB's.

/// Decodes a value LoxiLB sends as a number while people type a name ("sel": 0 or "rr").
public enum NumberOrName: Codable, Sendable, Equatable {
    case number(Int)
    case name(String)

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let n = try? c.decode(Int.self) { self = .number(n) } else { self = .name(try c.decode(String.self)) }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .number(let n): try c.encode(n)
        case .name(let s): try c.encode(s)
        }
    }
}

public struct ServiceArguments: Codable, Sendable, Equatable {
    public var externalIP: String
    public var port: Int
    public var protocol_: String
    public var sel: NumberOrName?
    public var mode: NumberOrName?
    public var name: String?
    public var snatIP: String?
    public var persistTimeout: Int?
    public var inactiveTimeOut: Int?
    public var block: Int?
    public var monitor: Bool?
    public var managed: Bool?

    enum CodingKeys: String, CodingKey {
        case externalIP, port, protocol_ = "protocol", sel, mode, name, snatIP, persistTimeout, inactiveTimeOut
        case block, monitor, managed
    }

    public init(externalIP: String, port: Int, protocol_: String, sel: NumberOrName? = nil, mode: NumberOrName? = nil,
                name: String? = nil, snatIP: String? = nil, persistTimeout: Int? = nil, block: Int? = nil,
                monitor: Bool? = nil) {
        self.externalIP = externalIP
        self.port = port
        self.protocol_ = protocol_
        self.sel = sel
        self.mode = mode
        self.name = name
        self.snatIP = snatIP
        self.persistTimeout = persistTimeout
        self.block = block
        self.monitor = monitor
    }
}

public struct EndpointArguments: Codable, Sendable, Equatable {
    public var endpointIP: String
    public var targetPort: Int
    public var weight: Int?
    public var state: String?
    public var counter: String?

    public init(endpointIP: String, targetPort: Int, weight: Int? = nil, state: String? = nil, counter: String? = nil) {
        self.endpointIP = endpointIP
        self.targetPort = targetPort
        self.weight = weight
        self.state = state
        self.counter = counter
    }
}

public struct LoadBalancerEntry: Codable, Sendable, Equatable {
    public var serviceArguments: ServiceArguments
    public var endpoints: [EndpointArguments]
    public var counters: ServiceCountersBody?

    public init(serviceArguments: ServiceArguments, endpoints: [EndpointArguments], counters: ServiceCountersBody? = nil) {
        self.serviceArguments = serviceArguments
        self.endpoints = endpoints
        self.counters = counters
    }
}

public struct ServiceCountersBody: Codable, Sendable, Equatable {
    public var packets: UInt64
    public var bytes: UInt64
    public var newConnections: UInt64
    public var activeConnections: Int

    public init(packets: UInt64, bytes: UInt64, newConnections: UInt64, activeConnections: Int) {
        self.packets = packets
        self.bytes = bytes
        self.newConnections = newConnections
        self.activeConnections = activeConnections
    }
}

public struct LoadBalancerList: Codable, Sendable, Equatable {
    public var lbAttr: [LoadBalancerEntry]
    public init(lbAttr: [LoadBalancerEntry]) { self.lbAttr = lbAttr }
}

public struct ConntrackEntry: Codable, Sendable, Equatable {
    public var serviceName: String
    public var destinationIP: String
    public var sourceIP: String
    public var destinationPort: Int
    public var sourcePort: Int
    public var protocol_: String
    public var conntrackState: String
    public var conntrackAct: String
    public var packets: UInt64
    public var bytes: UInt64
    public var learnedFromPeer: Bool

    enum CodingKeys: String, CodingKey {
        case serviceName, destinationIP, sourceIP, destinationPort, sourcePort, protocol_ = "protocol"
        case conntrackState, conntrackAct, packets, bytes, learnedFromPeer
    }

    public init(serviceName: String, destinationIP: String, sourceIP: String, destinationPort: Int, sourcePort: Int,
                protocol_: String, conntrackState: String, conntrackAct: String, packets: UInt64, bytes: UInt64,
                learnedFromPeer: Bool) {
        self.serviceName = serviceName
        self.destinationIP = destinationIP
        self.sourceIP = sourceIP
        self.destinationPort = destinationPort
        self.sourcePort = sourcePort
        self.protocol_ = protocol_
        self.conntrackState = conntrackState
        self.conntrackAct = conntrackAct
        self.packets = packets
        self.bytes = bytes
        self.learnedFromPeer = learnedFromPeer
    }
}

public struct ConntrackList: Codable, Sendable, Equatable {
    public var ctAttr: [ConntrackEntry]
    public init(ctAttr: [ConntrackEntry]) { self.ctAttr = ctAttr }
}

/// The body of every error answer.
public struct APIErrorBody: Codable, Sendable, Equatable {
    public var code: Int
    public var message: String
    public init(code: Int, message: String) {
        self.code = code
        self.message = message
    }
}

extension LoadBalancerEntry {
    /// Turns a request into a validated service; every problem is a ServiceError for a 400.
    public func toService() throws(ServiceError) -> Service {
        let a = serviceArguments
        guard let vip = IPv4Address(a.externalIP) else {
            throw ServiceError("externalIP '\(a.externalIP)' is not an IPv4 address")
        }
        guard (1...65535).contains(a.port) else { throw ServiceError("port must be 1-65535, got \(a.port)") }
        guard let proto = L4Protocol(name: a.protocol_) else {
            throw ServiceError("protocol '\(a.protocol_)' is not supported; use tcp or udp")
        }
        let selection: Selection
        switch a.sel {
        case nil: selection = .roundRobin
        case .number(let n)?:
            guard let s = Selection(loxiNumber: n) else {
                throw ServiceError("sel \(n) is not supported; use 0 (rr), 1 (hash), 2 (priority) or 3 (persist)")
            }
            selection = s
        case .name(let s)?:
            guard let v = Selection(name: s) else {
                throw ServiceError("sel '\(s)' is not supported; use rr, priority, persist or hash")
            }
            selection = v
        }
        let mode: NATMode
        switch a.mode {
        case nil: mode = .default
        case .number(let n)?:
            guard n >= 0, n <= 255, let m = NATMode(rawValue: UInt8(n)) else {
                throw ServiceError("mode \(n) is not supported; use 0 (default), 1 (onearm) or 2 (fullnat)")
            }
            mode = m
        case .name(let s)?:
            guard let m = NATMode(name: s) else {
                throw ServiceError("mode '\(s)' is not supported; use default, onearm or fullnat")
            }
            mode = m
        }
        var snat: IPv4Address?
        if let s = a.snatIP, !s.isEmpty {
            guard let ip = IPv4Address(s) else { throw ServiceError("snatIP '\(s)' is not an IPv4 address") }
            snat = ip
        }
        var eps: [Endpoint] = []
        for e in endpoints {
            guard let ip = IPv4Address(e.endpointIP) else {
                throw ServiceError("endpointIP '\(e.endpointIP)' is not an IPv4 address")
            }
            guard (1...65535).contains(e.targetPort) else {
                throw ServiceError("targetPort of \(e.endpointIP) must be 1-65535, got \(e.targetPort)")
            }
            let w = e.weight ?? 1
            guard (1...255).contains(w) else { throw ServiceError("weight of \(e.endpointIP) must be 1-255, got \(w)") }
            eps.append(Endpoint(ip: ip, port: UInt16(e.targetPort), weight: UInt8(w)))
        }
        let persist = a.persistTimeout ?? a.inactiveTimeOut.flatMap { $0 > 0 ? $0 : nil } ?? 10_800
        guard persist > 0, persist <= Int(UInt32.max) else { throw ServiceError("persistTimeout must be positive") }
        let svc = Service(key: ServiceKey(vip: vip, port: UInt16(a.port), proto: proto), name: a.name ?? "",
                          mode: mode, selection: selection, endpoints: eps, snatIP: snat,
                          persistTimeout: UInt32(persist))
        try svc.validate()
        return svc
    }

    public init(service s: Service) {
        self.init(serviceArguments: ServiceArguments(externalIP: s.key.vip.description, port: Int(s.key.port),
                                                     protocol_: s.key.proto.description,
                                                     sel: .number(s.selection.loxiNumber),
                                                     mode: .number(Int(s.mode.rawValue)), name: s.name,
                                                     snatIP: s.snatIP?.description,
                                                     persistTimeout: Int(s.persistTimeout)),
                  endpoints: s.endpoints.map { EndpointArguments(endpointIP: $0.ip.description, targetPort: Int($0.port),
                                                                 weight: Int($0.weight)) })
    }
}
