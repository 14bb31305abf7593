import TandemCore
import TandemSyncWire
import TandemStatus

/// An endpoint as verdicts name it: address and port (a service's endpoint identity).
public struct EndpointRef: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var address: IPv4Address
    public var port: UInt16
    public init(_ address: IPv4Address, _ port: UInt16) {
        self.address = address
        self.port = port
    }
    public init(_ e: Endpoint) { self.init(e.ip, e.port) }
    public var description: String { "\(address):\(port)" }
    public static func < (a: Self, b: Self) -> Bool { (a.address, a.port) < (b.address, b.port) }
}

/// A node's whole verdict set (proto/SPEC.md §14.5): every service it serves with the endpoints
/// it holds down, and every host state it knows.
public struct VerdictSet: Hashable, Sendable {
    public var generation: UInt64
    /// Ascending by key.
    public var services: [ServiceVerdict]
    /// Ascending by host.
    public var hosts: [HostVerdict]

    public init(generation: UInt64, services: [ServiceVerdict], hosts: [HostVerdict]) {
        self.generation = generation
        self.services = services
        self.hosts = hosts
    }

    /// The set as `endpointVerdicts` parts that each fit one config-channel frame: services
    /// first, then hosts, in order; an empty set is one empty part.
    public func parts() -> [EndpointVerdicts] {
        let budget = SyncChannel.config.maxPayload - SyncWire.endpointVerdictsFixed
        var out: [EndpointVerdicts] = []
        var current = EndpointVerdicts(generation: generation, services: [], hosts: [])
        var size = 0
        func flush() {
            current.part = UInt8(truncatingIfNeeded: out.count)
            out.append(current)
            current = EndpointVerdicts(generation: generation, services: [], hosts: [])
            size = 0
        }
        for s in services {
            let n = SyncCodec.serviceVerdictSize(s)
            if size + n > budget || current.services.count == Int(UInt16.max) { flush() }
            current.services.append(s)
            size += n
        }
        for h in hosts {
            if size + SyncWire.hostVerdictSize > budget || current.hosts.count == Int(UInt16.max) { flush() }
            current.hosts.append(h)
            size += SyncWire.hostVerdictSize
        }
        flush()
        for i in out.indices { out[i].more = i < out.count - 1 }
        return out
    }
}

public struct VerdictAssemblyError: Error, Hashable, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// Puts the parts of one peer's verdict set back together, as they arrive on one connection.
/// Refuses parts out of order, of another generation, or whose entries do not continue the
/// ascending order of the parts before.
public struct VerdictAssembler: Sendable {
    private var set: VerdictSet?
    private var nextPart = 0

    public init() {}

    /// Adds a part; returns the whole set with its last part.
    public mutating func add(_ p: EndpointVerdicts) throws(VerdictAssemblyError) -> VerdictSet? {
        guard Int(p.part) == nextPart else {
            throw VerdictAssemblyError("verdict part \(p.part) where part \(nextPart) was due")
        }
        var s = set ?? VerdictSet(generation: p.generation, services: [], hosts: [])
        guard s.generation == p.generation else {
            throw VerdictAssemblyError("verdict part \(p.part) of generation \(p.generation) inside generation \(s.generation)")
        }
        if let last = s.services.last, let first = p.services.first, !(last.key < first.key) {
            throw VerdictAssemblyError("verdict part \(p.part) repeats or reorders service \(first.key)")
        }
        if let last = s.hosts.last, let first = p.hosts.first, !(last.host < first.host) {
            throw VerdictAssemblyError("verdict part \(p.part) repeats or reorders host \(first.host)")
        }
        s.services += p.services
        s.hosts += p.hosts
        nextPart += 1
        if p.more {
            set = s
            return nil
        }
        set = nil
        nextPart = 0
        return s
    }
}

/// Where the verdict in force for a service came from.
public enum VerdictSource: Hashable, Sendable {
    /// This node's own probes and the host states it knows.
    case own
    /// The verdicts the MASTER of the service's VIP published (its node id).
    case peer(UInt32)
}

/// The down set in force for one service, and where it came from.
public struct EffectiveVerdict: Hashable, Sendable {
    public var down: [EndpointRef: DownEndpoint]
    public var source: VerdictSource
    public init(down: [EndpointRef: DownEndpoint], source: VerdictSource) {
        self.down = down
        self.source = source
    }
    public var downSet: Set<EndpointRef> { Set(down.keys) }
}

/// The cluster's endpoint verdicts as one node keeps them (proto/SPEC.md §14.5). Pure: the caller
/// passes the clocks (wall µs for versions, monotonic ns for freshness).
///
/// Every node probes on its own. What its datapath uses for a service is the MASTER's published
/// down set while it has one fresh from the MASTER of that service's VIP, and its own otherwise
/// (it is MASTER itself, no MASTER is known, or the MASTER's set is stale or does not list the
/// service). So BACKUPs mirror the MASTER's tables, and a BACKUP that takes over starts from the
/// same state, then follows its own probes, which are warm already.
///
/// Host states (endpointhoststate) are shared as writes, newest (version, origin) wins, so every
/// node's own view includes a red set through any node.
public struct ClusterVerdicts: Sendable {
    public struct Peer: Hashable, Sendable {
        /// The sender's boot epoch and set generation: (epoch, generation) orders its sets.
        public var epoch: UInt64
        public var generation: UInt64
        public var receivedAtNanos: UInt64
        public var services: [ServiceKey: [EndpointRef: DownEndpoint]]
    }

    public let selfID: UInt32
    /// A MASTER's set older than this is not used (its exchanges stopped: the config channel is
    /// cut, or it is gone and the election has not caught up yet).
    public var staleAfterNanos: UInt64 = 6_000_000_000
    /// Most host states kept.
    public var maxHosts = 4096

    /// The services this node serves and their endpoints.
    public private(set) var served: [ServiceKey: [EndpointRef]] = [:]
    /// Endpoints this node's probes hold down, with the wall-clock µs of the transition.
    public private(set) var probeDown: [ServiceKey: [EndpointRef: UInt64]] = [:]
    public private(set) var hosts: [IPv4Address: HostVerdict] = [:]
    /// The published set's version: grows with every change of what this node publishes.
    public private(set) var generation: UInt64 = 0
    /// Hybrid logical clock for host-state writes.
    public private(set) var clock: UInt64 = 0
    public private(set) var peers: [UInt32: Peer] = [:]
    public private(set) var counters = VerdictCounters()

    public init(selfID: UInt32) {
        self.selfID = selfID
    }

    private mutating func bump(_ nowMicros: UInt64) {
        generation = max(nowMicros, generation &+ 1)
    }

    /// The services this node serves now (after any change of its table). Forgets probe verdicts
    /// about endpoints no longer served. Returns whether the published set changed.
    @discardableResult
    public mutating func setServed(_ services: [ServiceKey: [EndpointRef]], nowMicros: UInt64) -> Bool {
        guard services != served else { return false }
        served = services
        for (key, down) in probeDown {
            let eps = Set(services[key] ?? [])
            let kept = down.filter { eps.contains($0.key) }
            probeDown[key] = kept.isEmpty ? nil : kept
        }
        bump(nowMicros)
        return true
    }

    /// A probe verdict of this node: `down` marks the endpoint out of rotation since `atMicros`.
    /// Returns whether the published set changed.
    @discardableResult
    public mutating func setProbe(_ key: ServiceKey, _ ep: EndpointRef, down: Bool, atMicros: UInt64, nowMicros: UInt64) -> Bool {
        var set = probeDown[key] ?? [:]
        if down {
            guard set[ep] == nil else { return false }
            set[ep] = max(atMicros, 1)
        } else {
            guard set.removeValue(forKey: ep) != nil else { return false }
        }
        probeDown[key] = set.isEmpty ? nil : set
        bump(nowMicros)
        return true
    }

    /// A host state posted to this node's API: a new write that outranks every one seen.
    @discardableResult
    public mutating func setHostLocal(_ host: IPv4Address, _ state: HostVerdictState, nowMicros: UInt64) -> HostVerdict {
        clock = max(nowMicros, clock &+ 1)
        let v = HostVerdict(host: host, state: state, version: clock, origin: selfID)
        hosts[host] = v
        bump(nowMicros)
        return v
    }

    /// Host states from the state file, without a new version.
    public mutating func seedHosts(_ list: [HostVerdict]) {
        for h in list where hosts[h.host].map({ h.supersedes($0) }) ?? true {
            hosts[h.host] = h
            clock = max(clock, h.version)
        }
    }

    /// Merges host states a peer knows; returns the hosts whose state changed here.
    public mutating func mergeHosts(_ list: [HostVerdict], nowMicros: UInt64) -> [IPv4Address] {
        var changed: [IPv4Address] = []
        for h in list {
            clock = max(clock, h.version)
            if let mine = hosts[h.host] {
                guard h.supersedes(mine) else { continue }
            } else if hosts.count >= maxHosts {
                counters.hostStatesOverCap &+= 1
                continue
            }
            let before = hosts[h.host]?.state
            hosts[h.host] = h
            counters.hostStatesMerged &+= 1
            if before != h.state { changed.append(h.host) }
        }
        if !changed.isEmpty { bump(nowMicros) }
        return changed
    }

    public enum Received: Hashable, Sendable {
        /// Taken; the hosts whose state changed here through it.
        case accepted(hostsChanged: [IPv4Address])
        /// Not newer than the set held from that peer; only its receipt time was refreshed when equal.
        case outdated
    }

    /// A peer's whole set, from a sender booted at `epoch`.
    public mutating func receive(_ set: VerdictSet, from peer: UInt32, epoch: UInt64, nowNanos: UInt64,
                                 nowMicros: UInt64) -> Received {
        if let held = peers[peer] {
            if (epoch, set.generation) == (held.epoch, held.generation) {
                peers[peer]?.receivedAtNanos = nowNanos
                counters.outdated &+= 1
                return .outdated
            }
            if (epoch, set.generation) < (held.epoch, held.generation) {
                counters.outdated &+= 1
                return .outdated
            }
        }
        var services: [ServiceKey: [EndpointRef: DownEndpoint]] = [:]
        for s in set.services {
            services[s.key] = Dictionary(s.down.map { (EndpointRef($0.address, $0.port), $0) }, uniquingKeysWith: { a, _ in a })
        }
        peers[peer] = Peer(epoch: epoch, generation: set.generation, receivedAtNanos: nowNanos, services: services)
        counters.received &+= 1
        return .accepted(hostsChanged: mergeHosts(set.hosts, nowMicros: nowMicros))
    }

    /// This node's own down set for a service with these endpoints: probe verdicts and red hosts.
    public func ownDown(_ key: ServiceKey, endpoints: [EndpointRef]) -> [EndpointRef: DownEndpoint] {
        var out: [EndpointRef: DownEndpoint] = [:]
        let probes = probeDown[key] ?? [:]
        for ep in endpoints {
            var reasons: VerdictReasons = []
            var since: UInt64 = .max
            if let at = probes[ep] {
                reasons.insert(.probe)
                since = min(since, at)
            }
            if let h = hosts[ep.address], h.state == .red {
                reasons.insert(.hostState)
                since = min(since, h.version)
            }
            if !reasons.isEmpty {
                out[ep] = DownEndpoint(address: ep.address, port: ep.port, reasons: reasons, sinceMicros: since)
            }
        }
        return out
    }

    /// Whether the set held from `peer` may be used now.
    public func isFresh(_ peer: UInt32, nowNanos: UInt64) -> Bool {
        guard let p = peers[peer] else { return false }
        return nowNanos &- p.receivedAtNanos <= staleAfterNanos || p.receivedAtNanos > nowNanos
    }

    /// The down set in force for a service with these endpoints, given the MASTER of its VIP
    /// (nil: none known). Endpoints the MASTER lists that this node's service lacks are ignored.
    public func effective(_ key: ServiceKey, endpoints: [EndpointRef], master: UInt32?, nowNanos: UInt64) -> EffectiveVerdict {
        if let m = master, m != selfID, isFresh(m, nowNanos: nowNanos), let theirs = peers[m]?.services[key] {
            let mine = Set(endpoints)
            return EffectiveVerdict(down: theirs.filter { mine.contains($0.key) }, source: .peer(m))
        }
        return EffectiveVerdict(down: ownDown(key, endpoints: endpoints), source: .own)
    }

    /// What this node publishes: every service it serves with its own down set, and every host
    /// state it knows.
    public func published() -> VerdictSet {
        let services = served.keys.sorted().map { key in
            ServiceVerdict(key: key, down: ownDown(key, endpoints: served[key] ?? []).values.sorted {
                ($0.address, $0.port) < ($1.address, $1.port)
            })
        }
        return VerdictSet(generation: max(generation, 1), services: services,
                          hosts: hosts.values.sorted { $0.host < $1.host })
    }
}
