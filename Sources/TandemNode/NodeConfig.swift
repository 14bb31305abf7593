import Foundation
import TandemBGP
import TandemConntrack
import TandemCore
import TandemElection
import TandemHA
import TandemHealth
import Yams

/// The node's YAML configuration file. Every field is optional except the interfaces, which may
/// also come from the command line.
public struct NodeConfig: Decodable, Sendable, Equatable {
    public struct API: Decodable, Sendable, Equatable {
        public var address: String?
        public var port: Int?
        /// Bearer token file (mode 0600): every route but the liveness GET then requires it.
        public var tokenFile: String?
        /// Serve HTTPS with this PEM certificate chain and key.
        public var tlsCertificate: String?
        public var tlsKey: String?
    }

    public struct Cluster: Decodable, Sendable, Equatable {
        /// Seed shared by every node, so Maglev tables and flow hashes agree.
        public var seed: UInt32?
        /// This node's index and the number of nodes, which cut the SNAT port space into slices.
        public var nodeIndex: Int?
        public var nodeCount: Int?
        /// The other nodes' sync addresses (IPv4). A node's id is its sync address, so every node
        /// agrees on ids without configuring them. Empty: no replication.
        public var peers: [String]?
        /// Address this node replicates from (default: nodeIP), and the UDP/TCP port every node uses.
        public var syncAddress: String?
        public var syncPort: Int?
        /// Pre-shared cluster key: 64 hex characters (or 32 raw bytes), mode 0600.
        public var keyFile: String?
        /// UDP port of membership gossip, the same on every node (default 11113).
        public var gossipPort: Int?
        /// How the floating IP moves: l2, oci or none (default none).
        public var cloud: String?
        /// Interface for the l2 provider (default: the first datapath interface).
        public var l2Interface: String?
        /// Election priority of this node for instances that do not set their own (default 100).
        public var priority: Int?
        /// HA instances (groups of floating IPs). Default: one, "llb-inst0", holding every service VIP.
        public var instances: [Instance]?
        /// `self: N` as in LoxiLB's --self: this node's index (an alias of nodeIndex).
        public var selfIndex: Int?
        /// false: no membership or election; every node answers for every VIP and something
        /// upstream (ECMP, BGP) spreads traffic over them (active-active). Replication still runs.
        public var election: Bool?
        /// false: each node keeps its own services (configure every node on its own). Default
        /// true: a service created, changed or deleted on any node reaches every node.
        public var shareServices: Bool?
        /// TCP port of service sharing, the same on every node (default 11114).
        public var configSyncPort: Int?
        /// How long peers hold a node whose daemon announced a graceful restart before they
        /// declare it dead and elect without it, seconds (default 10; 1-300). Set it alike on
        /// every node: the peers' value applies.
        public var restartHoldSeconds: Double?

        public init() {}

        enum CodingKeys: String, CodingKey {
            case seed, nodeIndex, nodeCount, peers, syncAddress, syncPort, keyFile, gossipPort, cloud, l2Interface
            case priority, instances, election, shareServices, configSyncPort, restartHoldSeconds
            case selfIndex = "self"
        }
    }

    public struct Instance: Decodable, Sendable, Equatable {
        public var name: String
        public var priority: Int?
        public var vips: [String]?
    }

    /// OCI provider settings (the seed's ~/.oci/config mounted into the node works as is).
    public struct OCI: Decodable, Sendable, Equatable {
        public var config: String?
        public var profile: String?
        public var apiEndpoint: String?
        public var imdsEndpoint: String?
        public var vnicId: String?
        public init() {}
    }

    /// HA settings, validated.
    public struct HASettings: Sendable, Equatable {
        public var gossipPort: UInt16
        public var cloud: String
        public var l2Interface: String?
        public var instances: [HAInstanceConfig]
        /// cluster.restartHoldSeconds, in nanoseconds.
        public var restartHoldNanos: UInt64 = 10_000_000_000
    }

    /// BGP through the node's own BIRD 2 (docs/bgp.md): the node announces its service VIPs as
    /// /32 routes to its routers, all nodes alike (active-active, ECMP) or the MASTER preferred
    /// (master-backup, `cluster.cloud: bgp`).
    public struct BGP: Decodable, Sendable, Equatable {
        public struct Neighbor: Decodable, Sendable, Equatable {
            public var address: String
            public var asn: UInt32
            public var port: Int?
            public var password: String?
            public var multihop: Int?
        }
        public struct Attributes: Decodable, Sendable, Equatable {
            public var localPref: UInt32?
            public var med: UInt32?
            public var prepend: Int?
        }
        public var asn: UInt32?
        public var routerId: String?
        /// The address the sessions come from (default: nodeIP).
        public var sourceAddress: String?
        public var mode: String?
        public var neighbors: [Neighbor]?
        public var holdSeconds: Int?
        public var bfd: Bool?
        public var bfdIntervalMillis: Int?
        public var bfdMultiplier: Int?
        public var communities: [String]?
        /// Attributes of the MASTER's (and every active-active node's) announcements.
        public var primary: Attributes?
        /// Attributes of the BACKUPs' announcements (master-backup).
        public var backup: Attributes?
        /// BIRD's binary (default /usr/sbin/bird) and the directory of its config, socket and log
        /// (default /run/tandem/bgp-<nodeIP>).
        public var speaker: String?
        public var runDirectory: String?
        /// active-active: one fullnat source address per node, in nodeIndex order, the same list
        /// on every node. Each node sources its fullnat flows from its own and announces it; the
        /// others announce it as backup (docs/bgp.md).
        public var snatAddresses: [String]?
        public init() {}
    }

    /// BGP settings, validated.
    public struct BGPConfigSettings: Sendable, Equatable {
        public var settings: BGPSettings
        public var speaker: String
        public var runDirectory: String
    }

    /// Kernel conntrack sync: the node also replicates the kernel's connection tracking table
    /// (NAT gateways, stateful firewalls), over its own sync channels, to the same peers.
    public struct Conntrack: Decodable, Sendable, Equatable {
        /// Default true once the section is there.
        public var enabled: Bool?
        /// inject (default): learned entries are written to the kernel table as they arrive.
        /// hold: kept in memory and written when this node takes over, before its floating IP
        /// moves (docs/conntrack.md has the measurements behind the default).
        public var mode: String?
        /// UDP and TCP port of the kernel table's replication, the same on every node (default 11115).
        public var syncPort: Int?
        /// The shortest time between dumps that reconcile the table with what events reported
        /// and read timeouts (default 30 s), and the longest (default 3600 s). In between, a dump
        /// comes when a replicated entry's copies are half through their lifetime and need a
        /// refresh; a quiet table of long-lived connections is read once per reconcileMaxSeconds.
        public var reconcileSeconds: Double?
        public var reconcileMaxSeconds: Double?
        /// Which entries are replicated (protocols, address ranges, zones, marks, NAT kind).
        public var filter: ConntrackFilter.Config?
        /// The kernel event socket's receive buffer at start, bytes (default 4 MiB), and the cap
        /// it doubles to on each overrun (default 64 MiB): conntrackd's NetlinkBufferSize and
        /// NetlinkBufferSizeMaxGrowth. An overrun is followed by a resync from a dump either way.
        public var netlinkBufferBytes: Int?
        public var netlinkBufferMaxBytes: Int?
        public init() {}
    }

    /// Kernel conntrack sync settings, validated.
    public struct ConntrackSettings: Sendable, Equatable {
        public var port: UInt16
        public var mode: ConntrackSinkCore.Mode
        public var reconcileSeconds: Double
        public var reconcileMaxSeconds: Double = 3600
        public var filter: ConntrackFilter
        public var netlinkBufferBytes: Int = 4 << 20
        public var netlinkBufferMaxBytes: Int = 64 << 20
    }

    /// Replication settings, validated.
    public struct ReplicationSettings: Sendable, Equatable {
        public var selfAddress: IPv4Address
        public var port: UInt16
        public var peers: [IPv4Address]
        public var keyFile: String
    }

    public struct TimeoutSeconds: Decodable, Sendable, Equatable {
        public var tcpSyn: UInt32?
        public var tcpEstablished: UInt32?
        public var tcpFin: UInt32?
        public var tcpClosed: UInt32?
        public var udp: UInt32?
        public var udpNew: UInt32?
        public var icmp: UInt32?
    }

    public struct EndpointConfig: Decodable, Sendable, Equatable {
        public var ip: String
        public var port: Int
        public var weight: Int?
    }

    public struct ServiceConfig: Decodable, Sendable, Equatable {
        public var externalIP: String
        public var port: Int
        public var `protocol`: String?
        public var mode: String?
        public var sel: String?
        public var name: String?
        public var snatIP: String?
        public var persistTimeout: Int?
        /// Idle timeout of this service's connections, seconds (LoxiLB's inactiveTimeOut).
        public var inactiveTimeOut: Int?
        /// Source prefixes allowed to connect (a.b.c.d/n); empty or absent: any source.
        public var allowedSources: [String]?
        /// Reset a down endpoint's established TCP connections (default: they run to their timeout).
        public var resetOnEndpointDown: Bool?
        /// Probe the endpoints (LoxiLB's Monitor); implied by `probe`.
        public var monitor: Bool?
        /// The probe in Tandem's syntax (`http:/healthz:200`, docs/health.md); default: a tcp
        /// connect for tcp services, udp for udp.
        public var probe: String?
        public var endpoints: [EndpointConfig]
    }

    public var interfaces: [String]?
    public var nodeIP: String?
    public var api: API?
    public var cluster: Cluster?
    public var timeouts: TimeoutSeconds?
    public var connectionTableSize: UInt32?
    /// Size of the datapath's event ring buffer in bytes (power of two; default 4 MiB, about 50k
    /// events): what queues while the event reader is busy or descheduled.
    public var eventRingBytes: UInt32?
    public var answerICMP: Bool?
    /// Attach the XDP fast path in front of the TC program (native XDP; default off).
    public var xdp: Bool?
    public var services: [ServiceConfig]?
    public var oci: OCI?
    public var conntrack: Conntrack?
    public var bgp: BGP?
    /// false: a conntrack-only node (NAT gateways, stateful firewalls): no BPF datapath and no
    /// services; it replicates the kernel conntrack table (`conntrack:`) and holds the floating
    /// IPs its HA instances list. Default true.
    public var datapath: Bool?
    /// Where API changes are kept across restarts (default /var/lib/tandem/state.jsonl).
    public var stateFile: String?
    /// Keep the datapath pinned and running when the daemon exits on SIGTERM (a graceful
    /// restart: peers hold their fire, the next start adopts maps and programs). Default false:
    /// every exit detaches everything. Also `--persist-datapath`.
    public var persistDatapath: Bool?
    /// A directory on a BPF filesystem for the pins (default /sys/fs/bpf/tandem); each node
    /// instance gets its own subdirectory, named after its first interface and node IP.
    public var pinDirectory: String?

    public init() {}

    public static func parse(yaml text: String) throws(ConfigError) -> NodeConfig {
        do {
            let config = try YAMLDecoder().decode(NodeConfig.self, from: text)
            // A misspelt key would be ignored and its default used without a word.
            let unknown = ConfigKeyCheck.unknownKeys(NodeConfig.self, yaml: text)
            if !unknown.isEmpty {
                throw ConfigError("config: unknown key\(unknown.count == 1 ? "" : "s") \(unknown.map { "'\($0)'" }.joined(separator: ", ")) (misspelt? docs/cli.md lists the keys)")
            }
            return config
        } catch let e as ConfigError {
            throw e
        } catch let e as DecodingError {
            throw ConfigError("config: \(describe(e))")
        } catch {
            throw ConfigError("config is not valid YAML: \(error)")
        }
    }

    public static func load(path: String) throws(ConfigError) -> NodeConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError("cannot read config file \(path)")
        }
        return try parse(yaml: String(decoding: data, as: UTF8.self))
    }

    /// `eventRingBytes`, validated: the kernel wants a power of two and a whole number of pages.
    public func validatedEventRingBytes() throws(ConfigError) -> UInt32 {
        guard let n = eventRingBytes else { return 1 << 22 }
        guard n >= 1 << 16, n <= 1 << 30, n & (n - 1) == 0 else {
            throw ConfigError("eventRingBytes must be a power of two from 65536 to 1073741824, got \(n)")
        }
        return n
    }

    /// The services, validated; the first bad one stops everything with a clear message.
    public func validatedServices() throws(ConfigError) -> [Service] {
        var table = ServiceTable()
        var out: [Service] = []
        for (i, s) in (services ?? []).enumerated() {
            let where_ = "services[\(i)] (\(s.externalIP):\(s.port))"
            guard let vip = IPv4Address(s.externalIP) else {
                throw ConfigError("\(where_): externalIP '\(s.externalIP)' is not an IPv4 address")
            }
            guard (1...65535).contains(s.port) else { throw ConfigError("\(where_): port must be 1-65535, got \(s.port)") }
            guard let proto = L4Protocol(name: s.protocol ?? "tcp") else {
                throw ConfigError("\(where_): protocol '\(s.protocol ?? "")' is not supported; use tcp or udp")
            }
            guard let mode = NATMode(name: s.mode ?? "default") else {
                throw ConfigError("\(where_): mode '\(s.mode ?? "")' is unknown; use default, onearm or fullnat")
            }
            guard let sel = Selection(name: s.sel ?? "rr") else {
                throw ConfigError("\(where_): sel '\(s.sel ?? "")' is unknown; use rr, priority, persist, hash or lc")
            }
            var snat: IPv4Address?
            if let t = s.snatIP {
                guard let a = IPv4Address(t) else { throw ConfigError("\(where_): snatIP '\(t)' is not an IPv4 address") }
                snat = a
            }
            var eps: [Endpoint] = []
            for e in s.endpoints {
                guard let ip = IPv4Address(e.ip) else { throw ConfigError("\(where_): endpoint '\(e.ip)' is not an IPv4 address") }
                guard (1...65535).contains(e.port) else {
                    throw ConfigError("\(where_): endpoint \(e.ip) port must be 1-65535, got \(e.port)")
                }
                let w = e.weight ?? 1
                guard (1...255).contains(w) else { throw ConfigError("\(where_): endpoint \(e.ip) weight must be 1-255") }
                eps.append(Endpoint(ip: ip, port: UInt16(e.port), weight: UInt8(w)))
            }
            let persist = s.persistTimeout ?? 10_800
            guard persist > 0, persist <= Int(UInt32.max) else { throw ConfigError("\(where_): persistTimeout must be positive") }
            var idle: UInt32?
            if let t = s.inactiveTimeOut, t != 0 {
                guard t > 0, t <= Int(DatapathLimits.maxIdleTimeout) else {
                    throw ConfigError("\(where_): inactiveTimeOut must be 1-\(DatapathLimits.maxIdleTimeout) seconds, got \(t)")
                }
                idle = UInt32(t)
            }
            var sources: [IPv4Prefix] = []
            for (j, t) in (s.allowedSources ?? []).enumerated() {
                guard let p = IPv4Prefix(t) else {
                    throw ConfigError("\(where_): allowedSources[\(j)] '\(t)' is not an IPv4 prefix (a.b.c.d/n)")
                }
                sources.append(p)
            }
            let svc = Service(key: ServiceKey(vip: vip, port: UInt16(s.port), proto: proto), name: s.name ?? "",
                              mode: mode, selection: sel, endpoints: eps, snatIP: snat, persistTimeout: UInt32(persist),
                              allowedSources: sources, idleTimeout: idle,
                              resetOnEndpointDown: s.resetOnEndpointDown ?? false)
            do { try table.add(svc) } catch { throw ConfigError("\(where_): \(error.message)") }
            out.append(svc)
        }
        return out
    }

    /// What the config file's services carry beside their datapath definition (monitoring), by
    /// key; a probe that does not parse is an error naming the service.
    public func validatedServiceOptions() throws(ConfigError) -> [ServiceKey: ServiceOptions] {
        var out: [ServiceKey: ServiceOptions] = [:]
        for (i, s) in (services ?? []).enumerated() where s.monitor == true || s.probe != nil {
            let where_ = "services[\(i)] (\(s.externalIP):\(s.port))"
            guard let vip = IPv4Address(s.externalIP), let port = UInt16(exactly: s.port),
                  let proto = L4Protocol(name: s.protocol ?? "tcp") else { continue }  // validatedServices says why
            if let text = s.probe {
                do { _ = try ProbeSpec.parse(text) } catch {
                    throw ConfigError("\(where_): probe '\(text)': \(error.description)")
                }
            }
            out[ServiceKey(vip: vip, port: port, proto: proto)] =
                ServiceOptions(monitor: true, probe: HealthProbe(spec: s.probe))
        }
        return out
    }

    public func resolvedTimeouts() -> Timeouts {
        var t = Timeouts()
        guard let c = timeouts else { return t }
        if let v = c.tcpSyn { t.synSent = v; t.synReceived = v }
        if let v = c.tcpEstablished { t.established = v }
        if let v = c.tcpFin { t.finWait = v; t.timeWait = min(t.timeWait, v) }
        if let v = c.tcpClosed { t.closed = v; t.timeWait = v }
        if let v = c.udp { t.udpEstablished = v }
        if let v = c.udpNew { t.udpNew = v }
        if let v = c.icmp { t.icmp = v }
        return t
    }

    public func portSlice() throws(ConfigError) -> PortSlice {
        let index = cluster?.nodeIndex ?? cluster?.selfIndex ?? 0
        // In a cluster every node gets its own slice unless told otherwise.
        let count = cluster?.nodeCount ?? ((cluster?.peers?.count).map { $0 + 1 } ?? 1)
        guard let s = PortSlice(nodeIndex: index, nodeCount: count) else {
            throw ConfigError("cluster: nodeIndex \(index) must be in 0..<nodeCount (\(count))")
        }
        return s
    }

    /// The replication settings, or nil when no peers are configured.
    public func replication(nodeIP: IPv4Address) throws(ConfigError) -> ReplicationSettings? {
        guard let c = cluster, let peers = c.peers, !peers.isEmpty else { return nil }
        var self_ = nodeIP
        if let t = c.syncAddress {
            guard let a = IPv4Address(t) else { throw ConfigError("cluster: syncAddress '\(t)' is not an IPv4 address") }
            self_ = a
        }
        var addresses: [IPv4Address] = []
        for t in peers {
            guard let a = IPv4Address(t) else { throw ConfigError("cluster: peer '\(t)' is not an IPv4 address") }
            guard a != self_ else { throw ConfigError("cluster: peer \(t) is this node's own sync address") }
            guard !addresses.contains(a) else { throw ConfigError("cluster: peer \(t) is listed twice") }
            addresses.append(a)
        }
        let port = c.syncPort ?? 11112
        guard (1...65535).contains(port) else { throw ConfigError("cluster: syncPort must be 1-65535, got \(port)") }
        guard let key = c.keyFile, !key.isEmpty else {
            throw ConfigError("cluster: peers are set but keyFile is not; create one with `tandem cluster keygen > FILE`")
        }
        return ReplicationSettings(selfAddress: self_, port: UInt16(port), peers: addresses, keyFile: key)
    }

    /// Kernel conntrack sync; nil when the section is absent or disabled. It replicates to the
    /// cluster's peers, so it needs them (and the key).
    public func conntrackSettings() throws(ConfigError) -> ConntrackSettings? {
        guard let ct = conntrack, ct.enabled ?? true else { return nil }
        guard let c = cluster, let peers = c.peers, !peers.isEmpty else {
            throw ConfigError("conntrack: kernel conntrack sync replicates to the cluster's peers; set cluster.peers and cluster.keyFile")
        }
        let port = ct.syncPort ?? 11115
        guard (1...65535).contains(port) else { throw ConfigError("conntrack: syncPort must be 1-65535, got \(port)") }
        let taken: [(String, Int)] = [("cluster.syncPort", c.syncPort ?? 11112), ("cluster.gossipPort", c.gossipPort ?? 11113),
                                      ("cluster.configSyncPort", c.configSyncPort ?? 11114)]
        for (name, p) in taken where p == port {
            throw ConfigError("conntrack: syncPort and \(name) must differ (both \(port))")
        }
        let modeText = ct.mode ?? ConntrackSinkCore.Mode.inject.rawValue
        guard let mode = ConntrackSinkCore.Mode(rawValue: modeText) else {
            throw ConfigError("conntrack: mode must be \(ConntrackSinkCore.Mode.allCases.map(\.rawValue).joined(separator: " or ")), got '\(modeText)'")
        }
        let reconcile = ct.reconcileSeconds ?? 30
        guard reconcile >= 1, reconcile <= 3600 else {
            throw ConfigError("conntrack: reconcileSeconds must be 1-3600, got \(reconcile)")
        }
        let reconcileMax = ct.reconcileMaxSeconds ?? max(reconcile, 3600)
        guard reconcileMax >= reconcile, reconcileMax <= 86400 else {
            throw ConfigError("conntrack: reconcileMaxSeconds must be at least reconcileSeconds (\(reconcile)) and at most 86400, got \(reconcileMax)")
        }
        let filter: ConntrackFilter
        do { filter = try ct.filter.map(ConntrackFilter.init(config:)) ?? .all } catch {
            throw ConfigError("conntrack: filter: \(error)")
        }
        let buffer = ct.netlinkBufferBytes ?? 4 << 20
        guard buffer >= 4096, buffer <= 1 << 30 else {
            throw ConfigError("conntrack: netlinkBufferBytes must be 4096-1073741824, got \(buffer)")
        }
        let bufferMax = ct.netlinkBufferMaxBytes ?? max(buffer, 64 << 20)
        guard bufferMax >= buffer, bufferMax <= 1 << 30 else {
            throw ConfigError("conntrack: netlinkBufferMaxBytes must be at least netlinkBufferBytes (\(buffer)) and at most 1073741824, got \(bufferMax)")
        }
        return ConntrackSettings(port: UInt16(port), mode: mode, reconcileSeconds: reconcile, reconcileMaxSeconds: reconcileMax,
                                 filter: filter, netlinkBufferBytes: buffer, netlinkBufferMaxBytes: bufferMax)
    }

    /// Hold mode writes its entries into the kernel at a takeover; without an election there is
    /// never one, and every learned entry would stay in memory for good.
    public static func checkConntrackMode(_ ct: ConntrackSettings?, ha: HASettings?) throws(ConfigError) {
        guard let ct, ct.mode == .hold, ha == nil else { return }
        throw ConfigError("conntrack: mode hold commits the learned entries when this node takes over, and with no election (cluster.election: false) it never does; use mode: inject")
    }

    /// The port services are shared on; nil when they are not (no peers, or shareServices false).
    public func serviceSharingPort() throws(ConfigError) -> UInt16? {
        guard let c = cluster, let peers = c.peers, !peers.isEmpty, c.shareServices ?? true else { return nil }
        let port = c.configSyncPort ?? 11114
        guard (1...65535).contains(port) else { throw ConfigError("cluster: configSyncPort must be 1-65535, got \(port)") }
        guard port != (c.syncPort ?? 11112) else { throw ConfigError("cluster: configSyncPort and syncPort must differ (both \(port))") }
        guard port != (c.gossipPort ?? 11113) else { throw ConfigError("cluster: configSyncPort and gossipPort must differ (both \(port))") }
        return UInt16(port)
    }

    /// Membership, election and provider settings; nil when not clustered.
    public func ha(interfaces: [String]) throws(ConfigError) -> HASettings? {
        guard let c = cluster, let peers = c.peers, !peers.isEmpty, c.election ?? true else { return nil }
        let port = c.gossipPort ?? 11113
        guard (1...65535).contains(port) else { throw ConfigError("cluster: gossipPort must be 1-65535, got \(port)") }
        guard port != (c.syncPort ?? 11112) else { throw ConfigError("cluster: gossipPort and syncPort must differ (both \(port))") }
        let cloud = (c.cloud ?? "none").lowercased()
        guard ["l2", "oci", "none", "bgp"].contains(cloud) else {
            throw ConfigError("cluster: cloud '\(c.cloud ?? "")' is unknown; use l2, oci, bgp or none")
        }
        if cloud == "bgp", bgp == nil {
            throw ConfigError("cluster: cloud bgp needs a bgp section (asn, neighbors; docs/bgp.md)")
        }
        let l2 = c.l2Interface ?? interfaces.first
        if cloud == "l2", l2 == nil { throw ConfigError("cluster: cloud l2 needs an interface (l2Interface or --interface)") }
        let defaultPriority = c.priority ?? 100
        guard (1...255).contains(defaultPriority) else { throw ConfigError("cluster: priority must be 1-255, got \(defaultPriority)") }
        var instances: [HAInstanceConfig] = []
        for (i, inst) in (c.instances ?? [Instance(name: HAInstanceConfig.defaultName, priority: nil, vips: nil)]).enumerated() {
            let at = "cluster.instances[\(i)]"
            guard !inst.name.isEmpty, inst.name.utf8.count <= 64 else { throw ConfigError("\(at): name must be 1-64 bytes") }
            guard !instances.contains(where: { $0.name == inst.name }) else { throw ConfigError("\(at): instance '\(inst.name)' is listed twice") }
            // Adverts carry a 32-bit hash of the name; two names with one hash would be one instance.
            if let clash = instances.first(where: { HAInstance.instanceID($0.name) == HAInstance.instanceID(inst.name) }) {
                throw ConfigError("\(at): instance names '\(clash.name)' and '\(inst.name)' hash alike; rename one")
            }
            let p = inst.priority ?? defaultPriority
            guard (1...255).contains(p) else { throw ConfigError("\(at): priority must be 1-255, got \(p)") }
            var vips: [IPv4Address]?
            if let list = inst.vips {
                vips = []
                for t in list {
                    guard let a = IPv4Address(t) else { throw ConfigError("\(at): vip '\(t)' is not an IPv4 address") }
                    vips?.append(a)
                }
            }
            instances.append(HAInstanceConfig(name: inst.name, priority: UInt8(p), vips: vips))
        }
        guard instances.count <= 16 else { throw ConfigError("cluster: at most 16 instances") }
        guard instances.filter({ $0.vips == nil }).count <= 1 else {
            throw ConfigError("cluster: only one instance may leave out 'vips' (it takes every other service VIP)")
        }
        var hold: UInt64 = 10_000_000_000
        if let h = c.restartHoldSeconds {
            guard h >= 1, h <= 300 else { throw ConfigError("cluster: restartHoldSeconds must be 1-300, got \(h)") }
            hold = UInt64(h * 1e9)
        }
        return HASettings(gossipPort: UInt16(port), cloud: cloud, l2Interface: l2, instances: instances,
                          restartHoldNanos: hold)
    }

    /// The BGP settings; nil without a bgp section. The mode must agree with the cluster: cloud bgp
    /// is master-backup, no election (or no cluster) is active-active.
    public func bgpSettings(nodeIP: IPv4Address) throws(ConfigError) -> BGPConfigSettings? {
        guard let b = bgp else { return nil }
        let electing = (cluster?.peers?.isEmpty == false) && (cluster?.election ?? true)
        let cloud = (cluster?.cloud ?? "none").lowercased()
        guard let asn = b.asn, asn != 0 else { throw ConfigError("bgp: asn is required (1-4294967295)") }
        var routerID = nodeIP
        if let t = b.routerId {
            guard let a = IPv4Address(t) else { throw ConfigError("bgp: routerId '\(t)' is not an IPv4 address") }
            routerID = a
        }
        var source = nodeIP
        if let t = b.sourceAddress {
            guard let a = IPv4Address(t) else { throw ConfigError("bgp: sourceAddress '\(t)' is not an IPv4 address") }
            source = a
        }
        let defaultMode: BGPMode = electing ? .masterBackup : .activeActive
        let modeText = b.mode ?? defaultMode.rawValue
        guard let mode = BGPMode(rawValue: modeText) else {
            throw ConfigError("bgp: mode must be \(BGPMode.allCases.map(\.rawValue).joined(separator: " or ")), got '\(modeText)'")
        }
        switch mode {
        case .masterBackup where cloud != "bgp" || !electing:
            throw ConfigError("bgp: mode master-backup follows the election: set cluster.cloud: bgp with cluster.peers (and election on)")
        case .activeActive where electing:
            throw ConfigError("bgp: mode active-active has every node serve every VIP; set cluster.election: false (or use mode master-backup with cluster.cloud: bgp)")
        default: break
        }
        guard let list = b.neighbors, !list.isEmpty else { throw ConfigError("bgp: neighbors is empty; list the routers to peer with") }
        var neighbors: [BGPNeighbor] = []
        for (i, n) in list.enumerated() {
            let at = "bgp.neighbors[\(i)]"
            guard let a = IPv4Address(n.address) else { throw ConfigError("\(at): address '\(n.address)' is not an IPv4 address") }
            guard !neighbors.contains(where: { $0.address == a }) else { throw ConfigError("\(at): \(a) is listed twice") }
            guard n.asn != 0 else { throw ConfigError("\(at): asn must be 1-4294967295") }
            let port = n.port ?? 179
            guard (1...65535).contains(port) else { throw ConfigError("\(at): port must be 1-65535, got \(port)") }
            if let p = n.password, !BGPSettings.isValidPassword(p) {
                throw ConfigError("\(at): password must be 1-80 printable ASCII characters without quotes or backslashes")
            }
            if let h = n.multihop, !(1...255).contains(h) { throw ConfigError("\(at): multihop must be 1-255, got \(h)") }
            neighbors.append(BGPNeighbor(address: a, asn: n.asn, port: UInt16(port), password: n.password, multihop: n.multihop))
        }
        let hold = b.holdSeconds ?? 9
        guard (3...65535).contains(hold) else { throw ConfigError("bgp: holdSeconds must be 3-65535, got \(hold)") }
        let interval = b.bfdIntervalMillis ?? 100
        guard (10...10000).contains(interval) else { throw ConfigError("bgp: bfdIntervalMillis must be 10-10000, got \(interval)") }
        let multiplier = b.bfdMultiplier ?? 3
        guard (1...255).contains(multiplier) else { throw ConfigError("bgp: bfdMultiplier must be 1-255, got \(multiplier)") }
        var communities: [BGPCommunity] = []
        for t in b.communities ?? [] {
            guard let c = BGPCommunity(t) else {
                throw ConfigError("bgp: community '\(t)' is neither a:b (16-bit numbers) nor a:b:c (32-bit numbers)")
            }
            communities.append(c)
        }
        func attributes(_ a: BGP.Attributes?, _ d: BGPAttributes, _ name: String) throws(ConfigError) -> BGPAttributes {
            let prepend = a?.prepend ?? d.prepend
            guard (0...16).contains(prepend) else { throw ConfigError("bgp: \(name).prepend must be 0-16, got \(prepend)") }
            return BGPAttributes(localPref: a?.localPref ?? d.localPref, med: a?.med ?? d.med, prepend: prepend)
        }
        let primary = try attributes(b.primary, .primary, "primary")
        let backup = try attributes(b.backup, .backup, "backup")
        if mode == .masterBackup, primary == backup {
            throw ConfigError("bgp: primary and backup attributes are equal, so routers could not tell the MASTER")
        }
        let speaker = b.speaker ?? "/usr/sbin/bird"
        let dir = b.runDirectory ?? "/run/tandem/bgp-\(nodeIP)"
        guard dir.hasPrefix("/"), dir.utf8.count <= 90 else {
            throw ConfigError("bgp: runDirectory must be an absolute path of at most 90 bytes (it holds BIRD's control socket)")
        }
        var s = BGPSettings(asn: asn, routerID: routerID, sourceAddress: source, mode: mode, neighbors: neighbors,
                            holdSeconds: hold, bfd: b.bfd ?? false, bfdIntervalMillis: interval, bfdMultiplier: multiplier,
                            communities: communities, primary: primary, backup: backup)
        if let list = b.snatAddresses {
            guard mode == .activeActive else {
                throw ConfigError("bgp: snatAddresses are for mode active-active (in master-backup replies follow the VIP to the MASTER)")
            }
            _ = try portSlice()  // nodeIndex within the node count
            let count = cluster?.nodeCount ?? ((cluster?.peers?.count).map { $0 + 1 } ?? 1)
            guard list.count == count else {
                throw ConfigError("bgp: snatAddresses needs one address per node (\(count), in nodeIndex order), got \(list.count)")
            }
            var addresses: [IPv4Address] = []
            let vips = Set((services ?? []).compactMap { IPv4Address($0.externalIP) })
            for t in list {
                guard let a = IPv4Address(t), !a.isUnspecified, !a.isMulticastOrBroadcast, !a.isLoopback else {
                    throw ConfigError("bgp: snatAddresses: '\(t)' is not a unicast IPv4 address")
                }
                guard !addresses.contains(a) else { throw ConfigError("bgp: snatAddresses: \(a) is listed twice") }
                guard !vips.contains(a) else { throw ConfigError("bgp: snatAddresses: \(a) is a service VIP") }
                addresses.append(a)
            }
            let index = cluster?.nodeIndex ?? cluster?.selfIndex ?? 0
            s.snatAddress = addresses[index]
            s.peerSNATAddresses = addresses.enumerated().filter { $0.offset != index }.map(\.element)
        }
        return BGPConfigSettings(settings: s, speaker: speaker, runDirectory: dir)
    }

    static func describe(_ e: DecodingError) -> String {
        func path(_ c: [any CodingKey]) -> String {
            c.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined().trimmingCharacters(in: ["."])
        }
        switch e {
        case .keyNotFound(let k, let c): return "missing '\(k.stringValue)' at '\(path(c.codingPath))'"
        case .typeMismatch(let t, let c): return "'\(path(c.codingPath))' should be \(t)"
        case .valueNotFound(let t, let c): return "'\(path(c.codingPath))' is empty, expected \(t)"
        case .dataCorrupted(let c): return "bad value at '\(path(c.codingPath))': \(c.debugDescription)"
        @unknown default: return "\(e)"
        }
    }
}

public struct ConfigError: Error, Equatable, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
