import Foundation
import Logging
import ServiceLifecycle
import TandemAPI
import TandemAPIModels
import TandemCloud
import TandemCore
import TandemHA
import TandemKernelSync
import TandemMetrics
import TandemReplication
import TandemSealing
import TandemStatus
import TandemSync
import Synchronization

/// A node with no load-balancing datapath (`datapath: false`): it replicates the kernel's
/// conntrack table and holds the floating IPs, for NAT gateways and stateful firewalls that
/// keepalived + conntrackd keep highly available today. No BPF program is loaded and no
/// interface is touched beyond what the cloud provider does with the floating IPs.
public enum ConntrackNodeRunner {
    /// What a conntrack-only node runs on, validated before anything is opened.
    public struct Plan: Sendable, Equatable {
        public var nodeIP: IPv4Address
        public var replication: NodeConfig.ReplicationSettings
        public var conntrack: NodeConfig.ConntrackSettings
        public var ha: NodeConfig.HASettings?
    }

    /// Checks the config of a conntrack-only node; throws a clear message naming what is wrong.
    /// Pure: interface checks are injected so it is testable without root.
    public static func plan(_ config: NodeConfig, interfaces: [String],
                            interfaceAddress: (String) -> IPv4Address? = SystemChecks.ipv4Address(of:),
                            interfaceExists: (String) -> Bool = SystemChecks.interfaceExists) throws(ConfigError) -> Plan {
        let why = "datapath: false (a conntrack-only node)"
        if let s = config.services, !s.isEmpty {
            throw ConfigError("\(why) serves no load-balancer services; remove the services: section or set datapath: true")
        }
        if config.xdp == true { throw ConfigError("\(why) loads no BPF program; remove xdp: true") }
        if config.persistDatapath == true {
            throw ConfigError("\(why) has no datapath to keep running; remove persistDatapath")
        }
        for i in interfaces where !interfaceExists(i) { throw ConfigError("interface \(i) does not exist") }
        let nodeIP: IPv4Address
        if let t = config.nodeIP {
            guard let a = IPv4Address(t) else { throw ConfigError("nodeIP '\(t)' is not an IPv4 address") }
            nodeIP = a
        } else if let first = interfaces.first {
            guard let a = interfaceAddress(first) else {
                throw ConfigError("interface \(first) has no IPv4 address; set nodeIP in the config")
            }
            nodeIP = a
        } else {
            throw ConfigError("\(why) needs nodeIP, or an interface to take it from (interfaces: or --interface)")
        }
        guard let conntrack = try config.conntrackSettings() else {
            throw ConfigError("\(why) only replicates the kernel conntrack table: add a conntrack: section (and do not disable it)")
        }
        guard let replication = try config.replication(nodeIP: nodeIP) else {
            throw ConfigError("\(why) needs cluster.peers and cluster.keyFile")
        }
        let ha = try config.ha(interfaces: interfaces)
        if let h = ha {
            // Without services, an instance's floating IPs cannot be derived from them.
            if let i = h.instances.first(where: { ($0.vips ?? []).isEmpty }) {
                throw ConfigError("cluster.instances: instance '\(i.name)' lists no vips; \(why) has no services to take them from, so every instance must list its floating IPs")
            }
            if let l2 = h.l2Interface, h.cloud == "l2", !interfaceExists(l2) {
                throw ConfigError("cluster: l2Interface \(l2) does not exist")
            }
        }
        try NodeConfig.checkConntrackMode(conntrack, ha: ha)
        return Plan(nodeIP: nodeIP, replication: replication, conntrack: conntrack, ha: ha)
    }

    /// Runs until SIGTERM or SIGINT (or `tandem node stop`). Every exit leaves the cluster, so
    /// the peers elect at once: the kernel's NAT state is already theirs.
    public static func run(_ o: NodeOptions, logger: Logger) async throws {
        guard SystemChecks.isRoot else {
            throw ConfigError("tandem node must run as root (it reads and writes the kernel's conntrack table)")
        }
        let hup = ConfigReloader.Trap(logger: logger)  // SIGHUP would end the process until then
        let plan = try plan(o.config, interfaces: o.interfaces)
        if o.persistDatapath {
            throw ConfigError("datapath: false (a conntrack-only node) has no datapath to keep running; drop --persist-datapath")
        }
        let key: ClusterKey
        do { key = try ClusterKey.load(path: plan.replication.keyFile) } catch { throw ConfigError("cluster: \(error)") }
        let (_, security) = try NodeRunner.preflightControlPlane(withoutState(o), logger: logger)
        TandemMetrics.bootstrap()
        var provider: (any CloudProvider)?
        if let h = plan.ha { provider = try await HAWiring.makeProvider(h, config: o.config, logger: logger) }
        let r = plan.replication
        let kernelSync: KernelTableSync
        do {
            kernelSync = try await KernelTableSync.start(
                .init(selfAddress: r.selfAddress, peers: r.peers, port: plan.conntrack.port, key: key,
                      mode: plan.conntrack.mode, reconcileSeconds: plan.conntrack.reconcileSeconds, reconcileMaxSeconds: plan.conntrack.reconcileMaxSeconds,
                      filter: plan.conntrack.filter, netlinkBufferBytes: plan.conntrack.netlinkBufferBytes,
                      netlinkBufferMaxBytes: plan.conntrack.netlinkBufferMaxBytes),
                logger: logger)
        } catch {
            throw ConfigError("conntrack: \(error.message)")
        }
        var ha: HAShell?
        if let h = plan.ha, let provider {
            let shell = HAWiring.makeShell(h, replication: r, key: key, provider: provider, kernelSync: kernelSync,
                                           logger: logger)
            do { try await shell.start() } catch {
                await kernelSync.stop()
                throw ConfigError("cluster: cannot listen on \(r.selfAddress):\(h.gossipPort) for gossip: \(error)")
            }
            ha = shell
        }
        let controller = ConntrackNodeController(kernelSync: kernelSync, ha: ha, authCounters: security.counters,
                                                 logger: logger)
        let api: any ServiceLifecycle.Service
        do {
            api = try APIServer.makeApplication(controller: controller, host: o.apiAddress, port: o.apiPort,
                                                security: security, logger: logger)
        } catch {
            await ha?.stop()
            await kernelSync.stop()
            throw ConfigError("api: \(error)")
        }
        logger.info("tandem node running (conntrack only)", metadata: [
            "nodeIP": "\(plan.nodeIP)", "api": "\(o.tls == nil ? "http" : "https")://\(o.apiAddress):\(o.apiPort)",
            "conntrackPort": "\(plan.conntrack.port)", "mode": "\(plan.conntrack.mode.rawValue)",
            "cloud": "\(plan.ha?.cloud ?? "none (no election)")",
        ])
        let group = ServiceGroup(configuration: .init(services: [.init(service: api)], logger: logger))
        let signals = ExitRequest(persist: false).installSignalHandlers { Task { await group.triggerGracefulShutdown() } }
        await controller.onStopRequest { _ in Task { await group.triggerGracefulShutdown() } }
        defer { signals.forEach { $0.cancel() } }
        do { try await group.run() } catch {
            await ha?.stop()
            await kernelSync.stop()
            throw error
        }
        await hup.stop()
        // Leave the cluster first: the peer elects at once and takes the floating IPs.
        await ha?.stop()
        await kernelSync.stop()
        logger.info("tandem node stopped (conntrack only)")
    }

    /// A conntrack-only node keeps no services, so it has no state file to read.
    private static func withoutState(_ o: NodeOptions) -> NodeOptions {
        var copy = o
        copy.statePath = nil
        return copy
    }
}

/// The API of a conntrack-only node: status, cluster, the kernel table's replication, cistate
/// and stop. Load-balancer changes are refused with the reason, changing nothing.
actor ConntrackNodeController: LoadBalancerController {
    private let kernelTable: KernelTableSync
    private let ha: HAShell?
    private let authCounters: APIAuthCounters
    private let logger: Logger
    private var stopHandler: (@Sendable (Bool) -> Void)?

    static let noDatapath = "this node runs with datapath: false: it replicates the kernel conntrack table and serves no load-balancer rules"

    init(kernelSync: KernelTableSync, ha: HAShell?, authCounters: APIAuthCounters, logger: Logger) {
        kernelTable = kernelSync
        self.ha = ha
        self.authCounters = authCounters
        self.logger = logger
    }

    func onStopRequest(_ handler: @escaping @Sendable (Bool) -> Void) { stopHandler = handler }

    func apply(_ request: LoadBalancerRequest) async throws { throw APIError(.conflict, Self.noDatapath) }
    func delete(_ key: ServiceKey) async throws { throw APIError(.notFound, "no-rule error: \(Self.noDatapath)") }
    func loadBalancers() async -> [LoadBalancerEntry] { [] }
    /// The load-balancer connection table; this node has none (its kernel table is
    /// `conntrack -L`, and its replication is GET /netlox/v1/sync/conntrack).
    func conntrack() async -> [ConntrackEntry] { [] }
    func status() async -> [String: UInt64] {
        var out = kernelTable.counters()
        out["api_auth_refused"] = authCounters.refusedRequests
        return out
    }
    func kernelSync() async -> ReplicationStatus? { await kernelTable.shell.status() }
    func cluster() async -> HAStatus? { await ha?.status() }
    func ciStates() async -> [CIStateEntry]? {
        guard let s = await ha?.status() else { return nil }
        return s.instances.map { CIStateEntry(instance: $0.name, state: $0.role, vip: $0.vips.first ?? "0.0.0.0") }
    }
    func setCIState(_ entry: CIStateEntry) async throws {
        guard let ha else { throw APIError.notFound("this node runs no election (cluster.election is false)") }
        do { try await ha.setExternal(instance: entry.instance, state: entry.state) } catch {
            throw APIError.badRequest(error.description)
        }
    }
    func stopNode(release: Bool) async throws {
        guard let stopHandler else { throw APIError.notFound("the node is not running") }
        logger.notice("stop requested through the API")
        stopHandler(true)
    }
}
