/// Limits shared with the datapath (bpf/include/tandem_maps.h).
public enum DatapathLimits {
    public static let maxServices = 256
    public static let maxEndpoints = 64
    public static let scheduleLength = 256
    public static let maglevM = 16381
    public static let maglevSlots = 16384
    /// Source prefixes per service (allowedSources).
    public static let maxAllowedSources = 64
    /// Longest per-service idle timeout, seconds (a day; the datapath stores nanoseconds).
    public static let maxIdleTimeout: UInt32 = 86_400
}

/// Identifies a service the way packets do: VIP, port and protocol.
public struct ServiceKey: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var vip: IPv4Address
    public var port: UInt16
    public var proto: L4Protocol

    public init(vip: IPv4Address, port: UInt16, proto: L4Protocol) {
        self.vip = vip
        self.port = port
        self.proto = proto
    }

    public var description: String { "\(vip):\(port)/\(proto)" }

    public static func < (l: Self, r: Self) -> Bool {
        (l.vip, l.port, l.proto.rawValue) < (r.vip, r.port, r.proto.rawValue)
    }
}

public struct Endpoint: Hashable, Sendable {
    public var ip: IPv4Address
    public var port: UInt16
    /// Relative share of new flows, 1...255.
    public var weight: UInt8

    public init(ip: IPv4Address, port: UInt16, weight: UInt8 = 1) {
        self.ip = ip
        self.port = port
        self.weight = weight
    }

    /// Stable name used to place the endpoint in the Maglev table on every node.
    public var identity: String { "\(ip):\(port)" }
}

/// A load-balanced service as the user configures it.
public struct Service: Hashable, Sendable {
    public var key: ServiceKey
    public var name: String
    public var mode: NATMode
    public var selection: Selection
    public var endpoints: [Endpoint]
    /// Fullnat source address; nil means the VIP itself, so replies come back to whichever node
    /// holds the floating IP.
    public var snatIP: IPv4Address?
    /// Source-IP persistence lifetime in seconds (LoxiLB's default is 10,800).
    public var persistTimeout: UInt32
    /// Firewall mark, shown for LoxiLB compatibility.
    public var mark: UInt32
    /// Source prefixes allowed to open connections to the service (Kubernetes'
    /// `loadBalancerSourceRanges`, LoxiLB's `allowedSources`); empty allows every source. The
    /// datapath drops the rest and counts them per service.
    public var allowedSources: [IPv4Prefix]
    /// Idle timeout in seconds of this service's established connections (LoxiLB's
    /// `inactiveTimeOut`); nil keeps the node's timeouts.
    public var idleTimeout: UInt32?
    /// When an endpoint is marked down: reset its established TCP connections (RST to the client,
    /// so clients reconnect at once to a live endpoint) and move its UDP flows, instead of letting
    /// them run on until their own timeout (the default).
    public var resetOnEndpointDown: Bool

    public init(key: ServiceKey, name: String = "", mode: NATMode = .default, selection: Selection = .roundRobin,
                endpoints: [Endpoint], snatIP: IPv4Address? = nil, persistTimeout: UInt32 = 10_800,
                mark: UInt32 = 0, allowedSources: [IPv4Prefix] = [], idleTimeout: UInt32? = nil,
                resetOnEndpointDown: Bool = false) {
        self.key = key
        self.name = name
        self.mode = mode
        self.selection = selection
        self.endpoints = endpoints
        self.snatIP = snatIP
        self.persistTimeout = persistTimeout
        self.mark = mark
        self.allowedSources = allowedSources
        self.idleTimeout = idleTimeout
        self.resetOnEndpointDown = resetOnEndpointDown
    }
}

/// Why a service definition was refused. The text is shown to users as is.
public struct ServiceError: Error, Equatable, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension Service {
    /// Checks everything that can be checked without the network. Throws the first problem.
    public func validate() throws(ServiceError) {
        let vip = key.vip
        if vip.isUnspecified || vip.isMulticastOrBroadcast || vip.isLoopback {
            throw ServiceError("external IP \(vip) cannot be a service address")
        }
        if key.port == 0 { throw ServiceError("service port must be 1-65535, got 0") }
        if endpoints.isEmpty { throw ServiceError("service \(key) has no endpoints") }
        if endpoints.count > DatapathLimits.maxEndpoints {
            throw ServiceError("service \(key) has \(endpoints.count) endpoints; the limit is \(DatapathLimits.maxEndpoints)")
        }
        var seen = Set<String>()
        for ep in endpoints {
            if ep.port == 0 { throw ServiceError("endpoint \(ep.ip) has port 0") }
            if ep.weight == 0 { throw ServiceError("endpoint \(ep.identity) has weight 0; use 1-255") }
            if ep.ip.isUnspecified || ep.ip.isMulticastOrBroadcast {
                throw ServiceError("endpoint address \(ep.ip) is not a unicast address")
            }
            if ep.ip == vip { throw ServiceError("endpoint \(ep.identity) is the service's own address") }
            if !seen.insert(ep.identity).inserted {
                throw ServiceError("endpoint \(ep.identity) is listed twice")
            }
        }
        if let s = snatIP, s.isUnspecified || s.isMulticastOrBroadcast {
            throw ServiceError("source IP \(s) is not a unicast address")
        }
        if allowedSources.count > DatapathLimits.maxAllowedSources {
            throw ServiceError("service \(key) has \(allowedSources.count) allowed sources; the limit is \(DatapathLimits.maxAllowedSources)")
        }
        if let t = idleTimeout, t == 0 || t > DatapathLimits.maxIdleTimeout {
            throw ServiceError("inactiveTimeOut must be 1-\(DatapathLimits.maxIdleTimeout) seconds, got \(t)")
        }
        if selection == .persist && persistTimeout == 0 {
            throw ServiceError("persist selection needs a timeout above 0 seconds")
        }
    }
}

/// The node's services with the datapath slot each occupies. Pure: the datapath module mirrors
/// changes into the maps.
public struct ServiceTable: Sendable {
    public private(set) var services: [ServiceKey: Service] = [:]
    public private(set) var slots: [ServiceKey: UInt32] = [:]
    private var freeSlots: [UInt32]

    public init(capacity: Int = DatapathLimits.maxServices) {
        freeSlots = (0..<UInt32(capacity)).reversed()
    }

    /// Adds a service; a second one with the same key is refused (delete it first). `preferredSlot`
    /// is taken when free: an adopted datapath's connections refer to their service's old slot.
    @discardableResult
    public mutating func add(_ service: Service, preferredSlot: UInt32? = nil) throws(ServiceError) -> UInt32 {
        try service.validate()
        if services[service.key] != nil {
            throw ServiceError("service \(service.key) already exists")
        }
        let slot: UInt32
        if let p = preferredSlot, let i = freeSlots.firstIndex(of: p) {
            slot = freeSlots.remove(at: i)
        } else if let next = freeSlots.popLast() {
            slot = next
        } else {
            throw ServiceError("the service table is full (\(DatapathLimits.maxServices) services)")
        }
        services[service.key] = service
        slots[service.key] = slot
        return slot
    }

    /// Replaces an existing service's definition in place, keeping its slot (and its flows).
    @discardableResult
    public mutating func replace(_ service: Service) throws(ServiceError) -> UInt32 {
        try service.validate()
        guard let slot = slots[service.key] else { throw ServiceError("service \(service.key) does not exist") }
        services[service.key] = service
        return slot
    }

    @discardableResult
    public mutating func remove(_ key: ServiceKey) throws(ServiceError) -> UInt32 {
        guard services.removeValue(forKey: key) != nil, let slot = slots.removeValue(forKey: key) else {
            throw ServiceError("service \(key) does not exist")
        }
        freeSlots.append(slot)
        return slot
    }

    public var sorted: [(slot: UInt32, service: Service)] {
        services.keys.sorted().compactMap { k in
            guard let s = services[k], let slot = slots[k] else { return nil }
            return (slot, s)
        }
    }

    public func service(inSlot slot: UInt32) -> Service? {
        slots.first { $0.value == slot }.flatMap { services[$0.key] }
    }
}
