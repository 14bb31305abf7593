import TandemCore

// MARK: - Endpoint health verdicts (config channel)

/// Why a node holds an endpoint out of rotation.
public struct VerdictReasons: OptionSet, Hashable, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// The node's own probes found it dead.
    public static let probe = VerdictReasons(rawValue: 0x01)
    /// Its host's external state (endpointhoststate) is red.
    public static let hostState = VerdictReasons(rawValue: 0x02)
    public static let known: VerdictReasons = [.probe, .hostState]
}

/// An endpoint of one service that the sender holds down.
public struct DownEndpoint: Hashable, Sendable {
    public var address: IPv4Address
    public var port: UInt16
    /// Non-empty.
    public var reasons: VerdictReasons
    /// When the endpoint went down at the sender (wall clock µs; non-zero).
    public var sinceMicros: UInt64

    public init(address: IPv4Address, port: UInt16, reasons: VerdictReasons, sinceMicros: UInt64) {
        self.address = address
        self.port = port
        self.reasons = reasons
        self.sinceMicros = sinceMicros
    }

    /// The endpoint's identity as services name it ("ip:port").
    public var identity: String { "\(address):\(port)" }
}

/// One service the sender serves and the endpoints of it that it holds down (none: all in
/// rotation). Listing every service lets a receiver tell "none down" from "not served".
public struct ServiceVerdict: Hashable, Sendable {
    public var key: ServiceKey
    /// At most `DatapathLimits.maxEndpoints`, ascending by (address, port).
    public var down: [DownEndpoint]
    public init(key: ServiceKey, down: [DownEndpoint]) {
        self.key = key
        self.down = down
    }
}

/// An endpoint host's external state, as `POST config/endpointhoststate` sets it.
public enum HostVerdictState: UInt8, Sendable, CaseIterable, Hashable {
    case green = 1
    case yellow = 2
    case red = 3

    public var name: String {
        switch self {
        case .green: "green"
        case .yellow: "yellow"
        case .red: "red"
        }
    }

    public init?(name: String) {
        guard let s = Self.allCases.first(where: { $0.name == name.lowercased() }) else { return nil }
        self = s
    }
}

/// The newest write of one host's external state: shared cluster-wide, newest (version, origin)
/// wins, like a service record.
public struct HostVerdict: Hashable, Sendable {
    public var host: IPv4Address
    public var state: HostVerdictState
    /// Hybrid logical clock in µs at the node where the state was posted; non-zero.
    public var version: UInt64
    /// That node's id; non-zero.
    public var origin: UInt32

    public init(host: IPv4Address, state: HostVerdictState, version: UInt64, origin: UInt32) {
        self.host = host
        self.state = state
        self.version = version
        self.origin = origin
    }

    /// Whether this write beats `other` of the same host: newer version, then higher origin.
    public func supersedes(_ other: HostVerdict) -> Bool {
        (version, origin) > (other.version, other.origin)
    }
}

/// One part of the sender's verdict set: the services it serves with the endpoints it holds
/// down, and the host states it knows. A set is one or more parts sent back to back, all with
/// the same generation; every part but the last has `more` set.
public struct EndpointVerdicts: Hashable, Sendable {
    /// The set's version at the sender: a hybrid logical clock in µs that grows with every change
    /// of the set; non-zero.
    public var generation: UInt64
    /// Index of this part, from 0; below `SyncWire.maxVerdictParts`.
    public var part: UInt8
    /// Another part of this set follows.
    public var more: Bool
    /// Ascending by service key (vip, port, proto), across the parts of a set too.
    public var services: [ServiceVerdict]
    /// Ascending by address, across the parts of a set too.
    public var hosts: [HostVerdict]

    public init(generation: UInt64, part: UInt8 = 0, more: Bool = false, services: [ServiceVerdict],
                hosts: [HostVerdict]) {
        self.generation = generation
        self.part = part
        self.more = more
        self.services = services
        self.hosts = hosts
    }
}

// MARK: - Codec

extension SyncCodec {
    /// Encoded size of one service's verdicts.
    public static func serviceVerdictSize(_ v: ServiceVerdict) -> Int { v.wireSize }
}

extension ServiceVerdict {
    var wireSize: Int { SyncWire.serviceVerdictFixed + down.count * SyncWire.downEndpointSize }
}

extension EndpointVerdicts: WirePayload {
    var wireSize: Int {
        SyncWire.endpointVerdictsFixed + services.reduce(0) { $0 + $1.wireSize } + hosts.count * SyncWire.hostVerdictSize
    }

    func encode(into w: inout ByteWriter) {
        w.u64(generation)
        w.u8(more ? 0x01 : 0)
        w.u8(part)
        w.u16(count16(services.count, "service verdicts"))
        w.u16(count16(hosts.count, "host verdicts"))
        for s in services {
            w.u32(s.key.vip.value)
            w.u16(s.key.port)
            w.u8(s.key.proto.rawValue)
            precondition(s.down.count <= DatapathLimits.maxEndpoints, "\(s.down.count) endpoints down in one service")
            w.u8(UInt8(s.down.count))
            for d in s.down {
                w.u32(d.address.value)
                w.u16(d.port)
                w.u8(d.reasons.rawValue)
                w.u8(0)  // reserved
                w.u64(d.sinceMicros)
            }
        }
        for h in hosts {
            w.u32(h.host.value)
            w.u8(h.state.rawValue)
            w.u8(0)  // reserved
            w.u64(h.version)
            w.u32(h.origin)
        }
    }

    static func decode(from r: inout ByteReader) throws(SyncDecodeError) -> EndpointVerdicts {
        let generation = try r.u64("generation")
        guard generation != 0 else { throw r.fail("generation is 0; generations start at 1") }
        let flags = try r.u8("flags")
        guard flags & ~0x01 == 0 else { throw r.fail("undefined flag bits 0x\(hex(flags & ~0x01))") }
        let more = flags & 0x01 != 0
        let part = try r.u8("part")
        guard Int(part) < SyncWire.maxVerdictParts else {
            throw r.fail("part \(part), a set has at most \(SyncWire.maxVerdictParts) parts")
        }
        guard !more || Int(part) < SyncWire.maxVerdictParts - 1 else {
            throw r.fail("part \(part) is the last a set may have but says more follow")
        }
        let serviceCount = Int(try r.u16("serviceCount"))
        let hostCount = Int(try r.u16("hostCount"))
        // Both lists' fixed parts must fit the bytes before anything is allocated for them.
        try r.expectAtLeast(serviceCount * SyncWire.serviceVerdictFixed + hostCount * SyncWire.hostVerdictSize, size: 1,
                            "counts")
        var services: [ServiceVerdict] = []
        services.reserveCapacity(serviceCount)
        var previousKey: ServiceKey?
        for i in 0..<serviceCount {
            r.entryIndex = i
            let vip = try r.u32("vip")
            let port = try r.u16("port")
            guard port != 0 else { throw r.fail("service port is 0") }
            let rawProto = try r.u8("proto")
            guard let proto = L4Protocol(rawValue: rawProto) else {
                throw r.fail("protocol \(rawProto), must be 6 (TCP) or 17 (UDP)")
            }
            let key = ServiceKey(vip: IPv4Address(vip), port: port, proto: proto)
            if let p = previousKey, !(p < key) { throw r.fail("service \(key) is not above the previous (\(p))") }
            previousKey = key
            let count = Int(try r.u8("count"))
            guard count <= DatapathLimits.maxEndpoints else {
                throw r.fail("count \(count) exceeds \(DatapathLimits.maxEndpoints) endpoints")
            }
            try r.expectAtLeast(count, size: SyncWire.downEndpointSize, "count")
            var down: [DownEndpoint] = []
            down.reserveCapacity(count)
            for j in 0..<count {
                let address = IPv4Address(try r.u32("address"))
                let epPort = try r.u16("endpoint port")
                guard epPort != 0 else { throw r.fail("endpoint \(j) has port 0") }
                let reasons = VerdictReasons(rawValue: try r.u8("reasons"))
                guard !reasons.isEmpty else { throw r.fail("endpoint \(j) is down for no reason (reasons 0)") }
                guard VerdictReasons.known.isSuperset(of: reasons) else {
                    throw r.fail("endpoint \(j): undefined reason bits 0x\(hex(reasons.subtracting(.known).rawValue))")
                }
                let reserved = try r.u8("reserved")
                guard reserved == 0 else { throw r.fail("endpoint \(j): reserved is 0x\(hex(reserved)), must be 0") }
                let since = try r.u64("since")
                guard since != 0 else { throw r.fail("endpoint \(j): since is 0") }
                if let last = down.last, !((last.address, last.port) < (address, epPort)) {
                    throw r.fail("endpoint \(j) (\(address):\(epPort)) is not above the previous (\(last.identity))")
                }
                down.append(DownEndpoint(address: address, port: epPort, reasons: reasons, sinceMicros: since))
            }
            services.append(ServiceVerdict(key: key, down: down))
        }
        r.entryIndex = nil
        try r.expectItems(hostCount, size: SyncWire.hostVerdictSize, "hostCount")
        var hosts: [HostVerdict] = []
        hosts.reserveCapacity(hostCount)
        for i in 0..<hostCount {
            let host = IPv4Address(try r.u32("host"))
            let rawState = try r.u8("state")
            guard let state = HostVerdictState(rawValue: rawState) else {
                throw r.fail("host \(i): state \(rawState), must be 1 (green), 2 (yellow) or 3 (red)")
            }
            let reserved = try r.u8("reserved")
            guard reserved == 0 else { throw r.fail("host \(i): reserved is 0x\(hex(reserved)), must be 0") }
            let version = try r.u64("version")
            guard version != 0 else { throw r.fail("host \(i): version is 0; versions start at 1") }
            let origin = try nodeID(&r, "origin")
            if let last = hosts.last, !(last.host < host) {
                throw r.fail("host \(i) (\(host)) is not above the previous (\(last.host))")
            }
            hosts.append(HostVerdict(host: host, state: state, version: version, origin: origin))
        }
        return EndpointVerdicts(generation: generation, part: part, more: more, services: services, hosts: hosts)
    }
}
