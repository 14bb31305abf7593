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

/// `serviceArguments` of a LoxiLB load-balancer rule. Keys are matched without regard to case, as
/// Go's encoding/json does on LoxiLB's side: kube-loxilb sends `BGP` and `Monitor`, LoxiLB's
/// swagger says `bgp` and `monitor`. Keys nobody defines are kept in `unknownFields` so the request
/// is refused naming them instead of being half understood.
public struct ServiceArguments: Codable, Sendable, Equatable {
    public var externalIP: String
    public var privateIP: String?
    public var port: Int
    public var portMax: Int?
    public var protocol_: String
    public var sel: NumberOrName?
    public var mode: NumberOrName?
    public var bgp: Bool?
    public var monitor: Bool?
    public var inactiveTimeOut: Int?
    public var block: Int?
    public var managed: Bool?
    public var probetype: String?
    public var probeport: Int?
    public var probereq: String?
    public var proberesp: String?
    public var probeRetries: Int?
    public var probeTimeout: Int?
    public var security: Int?
    public var name: String?
    public var oper: Int?
    public var host: String?
    public var proxyprotocolv2: Bool?
    public var egress: Bool?
    public var snat: Bool?
    /// Tandem's own: the fullnat source address, and the persistence lifetime.
    public var snatIP: String?
    public var persistTimeout: Int?
    /// Tandem's own field (LoxiLB has none like it): reset a down endpoint's established TCP
    /// connections (RST to the client) instead of letting them run to their timeout.
    public var resetOnEndpointDown: Bool?
    /// Tandem's own field: the probe in Tandem's syntax (`http:/healthz:200`); LoxiLB's probe
    /// fields then give only the timing.
    public var probe: String?
    /// Keys of LoxiLB's layer-7 proxy (path_prefix, backend_protocol, path_match_mode,
    /// mtls_frontend, mtls_backend) that were present: Tandem is a layer-4 balancer.
    public var proxyFields: [String] = []
    public var unknownFields: [String] = []

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

    struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ s: String) { stringValue = s }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    static let proxyKeys: Set<String> = ["path_prefix", "backend_protocol", "path_match_mode", "mtls_frontend", "mtls_backend"]

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        var externalIP: String?, port: Int?, proto: String?
        for k in c.allKeys {
            // A JSON null is the same as leaving the key out, as for Go.
            if try c.decodeNil(forKey: k) { continue }
            switch k.stringValue.lowercased() {
            case "externalip": externalIP = try c.decode(String.self, forKey: k)
            case "privateip": privateIP = try c.decode(String.self, forKey: k)
            case "port": port = try c.decode(Int.self, forKey: k)
            case "portmax": portMax = try c.decode(Int.self, forKey: k)
            case "protocol": proto = try c.decode(String.self, forKey: k)
            case "sel": sel = try c.decode(NumberOrName.self, forKey: k)
            case "mode": mode = try c.decode(NumberOrName.self, forKey: k)
            case "bgp": bgp = try c.decode(Bool.self, forKey: k)
            case "monitor": monitor = try c.decode(Bool.self, forKey: k)
            case "inactivetimeout": inactiveTimeOut = try c.decode(Int.self, forKey: k)
            case "block": block = try c.decode(Int.self, forKey: k)
            case "managed": managed = try c.decode(Bool.self, forKey: k)
            case "probetype": probetype = try c.decode(String.self, forKey: k)
            case "probeport": probeport = try c.decode(Int.self, forKey: k)
            case "probereq": probereq = try c.decode(String.self, forKey: k)
            case "proberesp": proberesp = try c.decode(String.self, forKey: k)
            case "proberetries": probeRetries = try c.decode(Int.self, forKey: k)
            case "probetimeout": probeTimeout = try c.decode(Int.self, forKey: k)
            case "security": security = try c.decode(Int.self, forKey: k)
            case "name": name = try c.decode(String.self, forKey: k)
            case "oper": oper = try c.decode(Int.self, forKey: k)
            case "host": host = try c.decode(String.self, forKey: k)
            case "proxyprotocolv2": proxyprotocolv2 = try c.decode(Bool.self, forKey: k)
            case "egress": egress = try c.decode(Bool.self, forKey: k)
            case "snat": snat = try c.decode(Bool.self, forKey: k)
            case "snatip": snatIP = try c.decode(String.self, forKey: k)
            case "persisttimeout": persistTimeout = try c.decode(Int.self, forKey: k)
            case "resetonendpointdown": resetOnEndpointDown = try c.decode(Bool.self, forKey: k)
            case "probe": probe = try c.decode(String.self, forKey: k)
            case let other where Self.proxyKeys.contains(other): proxyFields.append(k.stringValue)
            default: unknownFields.append(k.stringValue)
            }
        }
        guard let externalIP else {
            throw DecodingError.keyNotFound(Key("externalIP"), .init(codingPath: c.codingPath, debugDescription: "required"))
        }
        guard let port else { throw DecodingError.keyNotFound(Key("port"), .init(codingPath: c.codingPath, debugDescription: "required")) }
        self.externalIP = externalIP
        self.port = port
        // LoxiLB's swagger does not require a protocol; its rules default to tcp.
        self.protocol_ = proto ?? "tcp"
        proxyFields.sort()
        unknownFields.sort()
    }

    /// LoxiLB's swagger names; fields never set are left out.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        try c.encode(externalIP, forKey: Key("externalIP"))
        try c.encodeIfPresent(privateIP, forKey: Key("privateIP"))
        try c.encode(port, forKey: Key("port"))
        try c.encodeIfPresent(portMax, forKey: Key("portMax"))
        try c.encode(protocol_, forKey: Key("protocol"))
        try c.encodeIfPresent(sel, forKey: Key("sel"))
        try c.encodeIfPresent(mode, forKey: Key("mode"))
        try c.encodeIfPresent(bgp, forKey: Key("bgp"))
        try c.encodeIfPresent(monitor, forKey: Key("monitor"))
        try c.encodeIfPresent(inactiveTimeOut, forKey: Key("inactiveTimeOut"))
        try c.encodeIfPresent(block, forKey: Key("block"))
        try c.encodeIfPresent(managed, forKey: Key("managed"))
        try c.encodeIfPresent(probetype, forKey: Key("probetype"))
        try c.encodeIfPresent(probeport, forKey: Key("probeport"))
        try c.encodeIfPresent(probereq, forKey: Key("probereq"))
        try c.encodeIfPresent(proberesp, forKey: Key("proberesp"))
        try c.encodeIfPresent(probeRetries, forKey: Key("probeRetries"))
        try c.encodeIfPresent(probeTimeout, forKey: Key("probeTimeout"))
        try c.encodeIfPresent(security, forKey: Key("security"))
        try c.encodeIfPresent(name, forKey: Key("name"))
        try c.encodeIfPresent(oper, forKey: Key("oper"))
        try c.encodeIfPresent(host, forKey: Key("host"))
        try c.encodeIfPresent(proxyprotocolv2, forKey: Key("proxyprotocolv2"))
        try c.encodeIfPresent(egress, forKey: Key("egress"))
        try c.encodeIfPresent(snat, forKey: Key("snat"))
        try c.encodeIfPresent(snatIP, forKey: Key("snatIP"))
        try c.encodeIfPresent(persistTimeout, forKey: Key("persistTimeout"))
        try c.encodeIfPresent(resetOnEndpointDown, forKey: Key("resetOnEndpointDown"))
        try c.encodeIfPresent(probe, forKey: Key("probe"))
    }
}

/// One of `allowedSources` (LoxiLB's LbAllowedSrcIPArg).
public struct AllowedSource: Codable, Sendable, Equatable {
    public var prefix: String
    public init(prefix: String) { self.prefix = prefix }
}

/// One of `secondaryIPs` (SCTP multihoming in LoxiLB).
public struct SecondaryIP: Codable, Sendable, Equatable {
    public var secondaryIP: String
    public init(secondaryIP: String) { self.secondaryIP = secondaryIP }
}

public struct EndpointArguments: Codable, Sendable, Equatable {
    public var endpointIP: String
    public var targetPort: Int
    public var weight: Int?
    public var state: String?
    public var counter: String?
    /// Tandem's addition in listings: health state changes since the endpoint was first probed.
    public var healthTransitions: UInt64?

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
    public var allowedSources: [AllowedSource]?
    public var secondaryIPs: [SecondaryIP]?
    public var counters: ServiceCountersBody?

    public init(serviceArguments: ServiceArguments, endpoints: [EndpointArguments], allowedSources: [AllowedSource]? = nil,
                secondaryIPs: [SecondaryIP]? = nil, counters: ServiceCountersBody? = nil) {
        self.serviceArguments = serviceArguments
        self.endpoints = endpoints
        self.allowedSources = allowedSources
        self.secondaryIPs = secondaryIPs
        self.counters = counters
    }

    enum CodingKeys: String, CodingKey {
        case serviceArguments, endpoints, allowedSources, secondaryIPs, counters
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        serviceArguments = try c.decode(ServiceArguments.self, forKey: .serviceArguments)
        // kube-loxilb always sends the lists, possibly empty; Go's nil slices arrive as null.
        endpoints = try c.decodeIfPresent([EndpointArguments].self, forKey: .endpoints) ?? []
        allowedSources = try c.decodeIfPresent([AllowedSource].self, forKey: .allowedSources)
        secondaryIPs = try c.decodeIfPresent([SecondaryIP].self, forKey: .secondaryIPs)
        counters = try c.decodeIfPresent(ServiceCountersBody.self, forKey: .counters)
    }
}

public struct ServiceCountersBody: Codable, Sendable, Equatable {
    public var packets: UInt64
    public var bytes: UInt64
    public var newConnections: UInt64
    public var activeConnections: Int
    /// New connections dropped because their source is outside allowedSources.
    public var deniedSources: UInt64?
    /// New connections refused (RST / ICMP unreachable) because no endpoint was in rotation.
    public var noEndpoint: UInt64?

    public init(packets: UInt64, bytes: UInt64, newConnections: UInt64, activeConnections: Int, deniedSources: UInt64? = nil) {
        self.packets = packets
        self.bytes = bytes
        self.newConnections = newConnections
        self.activeConnections = activeConnections
        self.deniedSources = deniedSources
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

/// The body of every answer to a change and of every error, shaped as LoxiLB's: kube-loxilb reads
/// `result` (it must be "Success" on a 200 to a POST or DELETE, and is the error's text
/// otherwise); `code` and `message` are LoxiLB's newer error fields.
public struct APIErrorBody: Codable, Sendable, Equatable {
    public var result: String
    public var code: Int?
    public var message: String?

    public init(code: Int, message: String) {
        self.result = message
        self.code = code
        self.message = message
    }

    public init(result: String) {
        self.result = result
    }

    public static let success = APIErrorBody(result: "Success")

    /// The text to show a person: LoxiLB puts it in `result`, older Tandem in `message`.
    public var reason: String { message ?? result }
}

/// What a POST to config/loadbalancer asks for (LoxiLB's `oper`).
public enum LoadBalancerOperation: Int, Sendable, Equatable {
    /// Create, or replace the existing rule's definition in place ("replace if existing").
    case add = 0
    /// Add the request's endpoints to the rule (kube-loxilb's --appendEPs); creates a missing rule.
    case attach = 1
    /// Remove the request's endpoints; a rule left with none is deleted.
    case detach = 2
}

/// A validated POST: the datapath's service, what the control plane keeps beside it, and the
/// operation.
public struct LoadBalancerRequest: Sendable, Equatable {
    public var service: Service
    public var options: ServiceOptions
    public var operation: LoadBalancerOperation
}

extension LoadBalancerEntry {
    /// The datapath service alone (config-file and older callers).
    public func toService() throws(ServiceError) -> Service { try toRequest().service }

    /// Turns a request into a validated service; every problem is a ServiceError for a 400 whose
    /// text names the field. Fields Tandem cannot honour are refused, never dropped.
    public func toRequest() throws(ServiceError) -> LoadBalancerRequest {
        let a = serviceArguments
        if let f = a.unknownFields.first {
            throw ServiceError("serviceArguments.\(f) is not a field of LoxiLB's load-balancer rule")
        }
        if let f = a.proxyFields.first {
            throw ServiceError("serviceArguments.\(f) belongs to LoxiLB's layer-7 proxy (fullproxy); Tandem balances at layer 4")
        }
        guard let vip = IPv4Address(a.externalIP) else {
            throw ServiceError("externalIP '\(a.externalIP)' is not an IPv4 address")
        }
        guard (1...65535).contains(a.port) else { throw ServiceError("port must be 1-65535, got \(a.port)") }
        if let m = a.portMax, m != 0, m != a.port {
            throw ServiceError("portMax \(m): port ranges are not supported; create one rule per port")
        }
        guard let proto = L4Protocol(name: a.protocol_) else {
            throw ServiceError("protocol '\(a.protocol_)' is not supported; use tcp or udp")
        }
        if let p = a.privateIP, !p.isEmpty {
            throw ServiceError("privateIP '\(p)' is not supported: put the address the node receives (OCI: the private IP behind a reserved public IP) in externalIP")
        }
        if let s = secondaryIPs, !s.isEmpty {
            throw ServiceError("secondaryIPs are SCTP multihoming in LoxiLB; Tandem serves tcp and udp")
        }
        if a.bgp == true {
            throw ServiceError("BGP: true is not supported: this node has no BGP speaker; the floating IP moves by its cloud provider (l2, oci)")
        }
        if a.proxyprotocolv2 == true { throw ServiceError("proxyprotocolv2 needs a proxying (fullproxy) rule; Tandem forwards packets at layer 4") }
        if a.egress == true { throw ServiceError("egress rules (cluster egress gateway) are not supported") }
        if a.snat == true { throw ServiceError("snat rules (LoxiLB's firewall SNAT) are not supported; use mode fullnat with snatIP") }
        if let h = a.host, !h.isEmpty { throw ServiceError("host '\(h)' is a layer-7 (fullproxy) match; Tandem balances at layer 4") }
        if let sec = a.security, sec != 0 {
            throw ServiceError("security \(sec) (https termination) is not supported; Tandem passes TLS through untouched")
        }
        let operation: LoadBalancerOperation
        switch a.oper {
        case nil: operation = .add
        case let n?:
            guard let o = LoadBalancerOperation(rawValue: n) else {
                throw ServiceError("oper \(n) is not supported; use 0 (add), 1 (attach endpoints) or 2 (detach endpoints)")
            }
            operation = o
        }
        let selection: Selection
        switch a.sel {
        case nil: selection = .roundRobin
        case .number(let n)?:
            guard let s = Selection(loxiNumber: n) else {
                let what = [5: " (n2, SCTP)", 6: " (n3 / n2det, GTP)", 7: " (n3, GTP)"][n] ?? ""
                throw ServiceError("sel \(n)\(what) is not supported; use 0 (rr), 1 (hash), 2 (priority), 3 (persist) or 4 (lc)")
            }
            selection = s
        case .name(let s)?:
            guard let v = Selection(name: s) else {
                throw ServiceError("sel '\(s)' is not supported; use rr, hash, priority, persist or lc")
            }
            selection = v
        }
        let mode: NATMode
        switch a.mode {
        case nil: mode = .default
        case .number(let n)?:
            guard n >= 0, n <= 255, let m = NATMode(rawValue: UInt8(n)) else {
                let what = [3: " (dsr)", 4: " (fullproxy)", 5: " (hostonearm)"][n] ?? ""
                throw ServiceError("mode \(n)\(what) is not supported; use 0 (default), 1 (onearm) or 2 (fullnat)")
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
        var sources: [IPv4Prefix] = []
        for (i, src) in (allowedSources ?? []).enumerated() {
            guard let p = IPv4Prefix(src.prefix), src.prefix.contains("/") || IPv4Address(src.prefix) != nil else {
                throw ServiceError("allowedSources[\(i)].prefix '\(src.prefix)' is not an IPv4 prefix (a.b.c.d/n)")
            }
            sources.append(p)
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
        let persist = a.persistTimeout ?? 10_800
        guard persist > 0, persist <= Int(UInt32.max) else { throw ServiceError("persistTimeout must be positive") }
        // LoxiLB: 0 means its default; Tandem's default is the node's timeouts.
        var idle: UInt32?
        if let t = a.inactiveTimeOut, t != 0 {
            guard t > 0, t <= Int(DatapathLimits.maxIdleTimeout) else {
                throw ServiceError("inactiveTimeOut must be 0 (the node's timeouts) or 1-\(DatapathLimits.maxIdleTimeout) seconds, got \(t)")
            }
            idle = UInt32(t)
        }
        guard (0...Int(UInt16.max)).contains(a.block ?? 0) else {
            throw ServiceError("block must be 0-65535, got \(a.block ?? 0)")
        }
        let probe = try Self.probe(a)
        let svc = Service(key: ServiceKey(vip: vip, port: UInt16(a.port), proto: proto), name: a.name ?? "",
                          mode: mode, selection: selection, endpoints: eps, snatIP: snat,
                          persistTimeout: UInt32(persist), mark: UInt32(a.block ?? 0), allowedSources: sources,
                          idleTimeout: idle, resetOnEndpointDown: a.resetOnEndpointDown ?? false)
        // Attach and detach carry only the endpoints to add or remove; the result is checked
        // when it is applied to the existing rule.
        if operation == .add { try svc.validate() }
        let options = ServiceOptions(monitor: (a.monitor ?? false) || (probe.kind.map { $0 != .none } ?? false),
                                     probe: probe, managed: a.managed ?? false)
        return LoadBalancerRequest(service: svc, options: options, operation: operation)
    }

    static func probe(_ a: ServiceArguments) throws(ServiceError) -> HealthProbe {
        var p = HealthProbe()
        if let t = a.probetype, !t.isEmpty {
            guard let k = HealthProbe.Kind(rawValue: t.lowercased()) else {
                throw ServiceError("probetype '\(t)' is not supported; use none, ping, tcp, udp, http or https")
            }
            p.kind = k
        }
        let port = a.probeport ?? 0
        guard (0...65535).contains(port) else { throw ServiceError("probeport must be 0-65535, got \(port)") }
        if port != 0, p.kind == nil || p.kind == HealthProbe.Kind.none || p.kind == .ping {
            throw ServiceError("probeport \(port) needs probetype tcp, udp, http or https")
        }
        p.port = UInt16(port)
        p.request = a.probereq ?? ""
        p.response = a.proberesp ?? ""
        let timeout = a.probeTimeout ?? 0
        guard (0...3600).contains(timeout) else { throw ServiceError("probeTimeout must be 0-3600 seconds, got \(timeout)") }
        p.timeoutSeconds = UInt32(timeout)
        let retries = a.probeRetries ?? 0
        guard (0...100).contains(retries) else { throw ServiceError("probeRetries must be 0-100, got \(retries)") }
        p.retries = UInt32(retries)
        if let spec = a.probe, !spec.isEmpty {
            guard spec.count <= 255, !spec.contains(where: { $0.isWhitespace || $0.isNewline }) else {
                throw ServiceError("probe '\(spec.prefix(40))' must be at most 255 characters without spaces (syntax in docs/health.md)")
            }
            p.spec = spec
        }
        return p
    }

    /// The rule as LoxiLB lists it, every stored field named as LoxiLB names it.
    public init(service s: Service, options o: ServiceOptions = ServiceOptions()) {
        var a = ServiceArguments(externalIP: s.key.vip.description, port: Int(s.key.port),
                                 protocol_: s.key.proto.description, sel: .number(s.selection.loxiNumber),
                                 mode: .number(Int(s.mode.rawValue)), name: s.name,
                                 snatIP: s.snatIP?.description, persistTimeout: Int(s.persistTimeout),
                                 block: Int(s.mark), monitor: o.monitor)
        a.bgp = false
        a.managed = o.managed
        a.resetOnEndpointDown = s.resetOnEndpointDown ? true : nil
        a.inactiveTimeOut = Int(s.idleTimeout ?? 0)
        a.probetype = o.probe.kind?.rawValue ?? ""
        a.probeport = Int(o.probe.port)
        a.probereq = o.probe.request
        a.proberesp = o.probe.response
        a.probeTimeout = Int(o.probe.timeoutSeconds)
        a.probeRetries = Int(o.probe.retries)
        a.probe = o.probe.spec
        self.init(serviceArguments: a,
                  endpoints: s.endpoints.map { EndpointArguments(endpointIP: $0.ip.description, targetPort: Int($0.port),
                                                                 weight: Int($0.weight)) },
                  allowedSources: s.allowedSources.map { AllowedSource(prefix: $0.description) },
                  secondaryIPs: [])
    }
}
