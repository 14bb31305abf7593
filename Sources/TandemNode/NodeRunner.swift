import Foundation
import Logging
import NIOPosix
import ServiceLifecycle
import TandemAPI
import TandemAPIModels
import TandemCore
import TandemBGP
import TandemCloud
import TandemDatapath
import TandemHA
import TandemHealth
import TandemKernelSync
import TandemMetrics
import TandemReplication
import TandemServiceSync
import TandemSync
import TandemSealing
import Synchronization

/// What `tandem node run` was asked to do, after merging flags and the config file.
public struct NodeOptions: Sendable {
    public var interfaces: [String]
    public var objectPath: String
    public var config: NodeConfig
    public var apiAddress: String
    public var apiPort: Int
    public var reapInterval: Duration
    /// The state file; nil keeps API changes in memory only.
    public var statePath: String?
    /// Start from the config file alone (a damaged state file is left as it is until the first
    /// API change replaces it).
    public var ignoreState: Bool
    /// TLS certificate/key and token files for the API.
    public var tokenFile: String?
    public var tls: APITLSFiles?
    /// SIGTERM leaves the datapath pinned and running (graceful restart); see NodeConfig.persistDatapath.
    public var persistDatapath: Bool
    /// The config file as read at start; SIGHUP re-reads it (ConfigReload.swift).
    public var configFile: ConfigFileSource?

    public init(interfaces: [String], objectPath: String, config: NodeConfig, apiAddress: String, apiPort: Int,
                reapInterval: Duration = .seconds(2), statePath: String? = StateStore.defaultPath, ignoreState: Bool = false,
                tokenFile: String? = nil, tls: APITLSFiles? = nil, persistDatapath: Bool = false,
                configFile: ConfigFileSource? = nil) {
        self.persistDatapath = persistDatapath
        self.configFile = configFile
        self.statePath = statePath
        self.ignoreState = ignoreState
        self.tokenFile = tokenFile
        self.tls = tls
        self.interfaces = interfaces
        self.objectPath = objectPath
        self.config = config
        self.apiAddress = apiAddress
        self.apiPort = apiPort
        self.reapInterval = reapInterval
    }
}

public enum NodeRunner {
    /// Checks everything that can be checked before touching the kernel; throws a clear message.
    /// The state file's contents (nil: none yet, or ignored) and the API's protection, checked
    /// before the kernel is touched: a damaged state file or a missing key stops the node here.
    public static func preflightControlPlane(_ o: NodeOptions, logger: Logger) throws(ConfigError) -> (NodeState?, APISecurity) {
        var state: NodeState?
        if let p = o.statePath, !o.ignoreState {
            do { state = try StateStore(path: p).load() } catch {
                throw ConfigError("\(error.message); fix or move it, or start with --ignore-state to serve the config file's services (the next API change then replaces the file)")
            }
        }
        var security = APISecurity(tls: o.tls)
        if let t = o.tokenFile {
            do { security.token = try APIToken.load(path: t) } catch { throw ConfigError("api: \(error.message)") }
        }
        if let tls = o.tls {
            do { _ = try tls.serverConfiguration() } catch { throw ConfigError("api: \(error.message)") }
        }
        if security.token == nil, !["127.0.0.1", "localhost", "::1"].contains(o.apiAddress) {
            logger.warning("the API listens on a non-loopback address without a token: anyone who reaches \(o.apiAddress):\(o.apiPort) can change or delete every service; set api.tokenFile (or --api-token-file)")
        }
        return (state, security)
    }

    public static func preflight(_ o: NodeOptions) throws(ConfigError)
        -> (DatapathSettings, [TandemCore.Service], NodeConfig.ReplicationSettings?, ClusterKey?, NodeConfig.HASettings?) {
        guard SystemChecks.isRoot else {
            throw ConfigError("tandem node must run as root (it loads BPF programs and attaches them to interfaces)")
        }
        guard !o.interfaces.isEmpty else { throw ConfigError("no interface given: use --interface or 'interfaces:' in the config") }
        for i in o.interfaces where !SystemChecks.interfaceExists(i) {
            throw ConfigError("interface \(i) does not exist")
        }
        guard FileManager.default.isReadableFile(atPath: o.objectPath) else {
            throw ConfigError("BPF object \(o.objectPath) is missing; build it with `make bpf` or pass --bpf-object")
        }
        let nodeIP: IPv4Address
        if let t = o.config.nodeIP {
            guard let a = IPv4Address(t) else { throw ConfigError("nodeIP '\(t)' is not an IPv4 address") }
            nodeIP = a
        } else if let a = SystemChecks.ipv4Address(of: o.interfaces[0]) {
            nodeIP = a
        } else {
            throw ConfigError("interface \(o.interfaces[0]) has no IPv4 address; set nodeIP in the config")
        }
        if o.config.xdp == true {
            for i in o.interfaces where SystemChecks.forwardsIPv4(i) != true {
                throw ConfigError("xdp: interface \(i) does not forward IPv4, and the kernel refuses FIB lookups from XDP on such an interface; enable it (sysctl -w net.ipv4.conf.\(i).forwarding=1) or run without xdp")
            }
        }
        _ = try o.config.validatedEventRingBytes()
        let ha = try o.config.ha(interfaces: o.interfaces)
        if let l2 = ha?.l2Interface, ha?.cloud == "l2", !SystemChecks.interfaceExists(l2) {
            throw ConfigError("cluster: l2Interface \(l2) does not exist")
        }
        // In a cluster the datapath answers only for the VIPs this node is MASTER of.
        let settings = DatapathSettings(nodeIP: nodeIP, hashSeed: o.config.cluster?.seed ?? 0x7461_6e64,
                                        portSlice: try o.config.portSlice(), timeouts: o.config.resolvedTimeouts(),
                                        answerICMP: o.config.answerICMP ?? true, gateVIPs: ha != nil,
                                        skipFIB: !o.interfaces.allSatisfy { SystemChecks.forwardsIPv4($0) == true })
        let services = try o.config.validatedServices()
        for s in services {
            for ep in s.endpoints {
                if let why = SystemChecks.routeProblem(ep.ip) {
                    throw ConfigError("service \(s.key): endpoint \(ep.identity) is unreachable from this node: \(why)")
                }
            }
        }
        let replication = try o.config.replication(nodeIP: nodeIP)
        var key: ClusterKey?
        if let r = replication {
            do { key = try ClusterKey.load(path: r.keyFile) } catch { throw ConfigError("cluster: \(error)") }
        }
        return (settings, services, replication, key, ha)
    }

    /// The pin directory of this node instance: one per (first interface, node IP), so two
    /// daemons on one machine never adopt each other's maps. bpffs refuses names with a dot, so
    /// the address is written with underscores (eth0-10_0_10_141).
    public static func pinDirectory(base: String?, interface: String, nodeIP: IPv4Address) -> String {
        let name = "\(interface)-\(nodeIP)".map { $0.isLetter || $0.isNumber || $0 == "-" ? $0 : "_" }
        return (base ?? "/sys/fs/bpf/tandem") + "/" + String(name)
    }

    /// Runs the node until SIGTERM or SIGINT (or `tandem node stop`). SIGINT, and SIGTERM without
    /// persistDatapath, detach everything it attached; SIGTERM with persistDatapath is a graceful
    /// restart: the datapath stays pinned and forwarding, peers are told to hold their fire.
    public static func run(_ o: NodeOptions, logger: Logger) async throws {
        if o.config.datapath == false {
            if o.config.bgp != nil {
                throw ConfigError("bgp: a conntrack-only node (datapath: false) does not speak BGP yet; use cloud l2 or oci")
            }
            return try await ConntrackNodeRunner.run(o, logger: logger)
        }
        let hup = ConfigReloader.Trap(logger: logger)  // SIGHUP would end the process until then
        let (preflightSettings, services, replicationSettings, clusterKey, haSettings) = try preflight(o)
        var settings = preflightSettings
        // Checked here, before the datapath loads: a probe that does not parse stops the node.
        let serviceOptions = try o.config.validatedServiceOptions()
        let (state, security) = try preflightControlPlane(o, logger: logger)
        let conntrackSettings = try o.config.conntrackSettings()
        try NodeConfig.checkConntrackMode(conntrackSettings, ha: haSettings)
        // swift-metrics onto the Prometheus registry that GET /netlox/v1/metrics renders (once per process).
        TandemMetrics.bootstrap()
        // Built before the datapath loads, so a broken provider setup (a missing OCI key, say)
        // stops the node before it touches the kernel.
        let bgpConfig = try o.config.bgpSettings(nodeIP: settings.nodeIP)
        settings.defaultSNAT = bgpConfig?.settings.snatAddress
        // Connection events feed replication and a BGP node's count of new connections; a node
        // with neither only counted them, and each cost the datapath a ring-buffer record and,
        // while the reader slept, a wakeup from inside the program.
        settings.emitEvents = replicationSettings != nil || bgpConfig != nil
        let announcer = bgpConfig.map { b in
            BGPAnnouncer(speaker: BIRDSpeaker(settings: b.settings, directory: b.runDirectory, birdPath: b.speaker, logger: logger),
                         logger: logger)
        }
        var provider: (any CloudProvider)?
        if let h = haSettings { provider = try await HAWiring.makeProvider(h, config: o.config, bgp: announcer, logger: logger) }
        let pinDirectory = o.persistDatapath
            ? pinDirectory(base: o.config.pinDirectory, interface: o.interfaces[0], nodeIP: settings.nodeIP) : nil
        let datapath: Datapath
        do {
            datapath = try Datapath(objectPath: o.objectPath,
                                    connectionTableSize: o.config.connectionTableSize ?? 262_144,
                                    eventRingBytes: try o.config.validatedEventRingBytes(), pinDirectory: pinDirectory,
                                    logger: logger)
        } catch let e as DatapathError where e.message.hasPrefix("pin directory") {
            throw ConfigError(e.message)
        }
        // A graceful exit's record, while peers still hold this node as restarting.
        var resume: GracefulExitRecord?
        if let r = datapath.resumeRecord {
            let hold = haSettings?.restartHoldNanos ?? 10_000_000_000
            if r.isFresh(nowMicros: wallClockMicros(), holdMicros: hold / 1000) {
                resume = r
            } else {
                logger.notice("the previous run's graceful exit is older than the restart hold: starting as a returning node")
            }
            await datapath.clearResumeRecord()
        }
        let adoptedSlots = datapath.adoption == .adopted ? datapath.installedServiceSlots() : [:]
        let heldDown = datapath.adoption == .adopted ? datapath.heldDownEndpoints() : [:]
        let directory = ServiceDirectory()
        // Replication consumes every event, a poll's worth at a time; without it they are only
        // counted on the reader thread. The shell is created first and started later: events
        // before its start queue on its loop.
        let shell: FlowReplicationShell? = replicationSettings.flatMap { r in
            clusterKey.map { key in
                FlowReplicationShell(
                    config: ReplicationShellConfig(
                        selfID: r.selfAddress.value, bindAddress: r.selfAddress, port: r.port,
                        peers: r.peers.map { ReplicationPeer(id: $0.value, address: $0, port: r.port) }, key: key),
                    datapath: DatapathReplicationTarget(datapath: datapath, directory: directory,
                                                       timeouts: settings.timeouts, logger: logger),
                    logger: logger)
            }
        }
        let baseTimeouts = settings.timeouts
        let reader = RingBufferReader(eventsMap: datapath.maps.events, controlMap: datapath.maps.eventControl,
                                      onBatch: shell.map { s in
                                          { @Sendable events in
                                              let now = monotonicNanoseconds()
                                              // Per batch: services' own idle timeouts change with the API.
                                              let timeouts = datapath.effectiveTimeouts(baseTimeouts)
                                              s.submit(changes: events.map {
                                                  (FlowRecord(event: $0, timeouts: timeouts, nowNanoseconds: now),
                                                   $0.kind == .deleted || $0.kind == .expired)
                                              })
                                          }
                                      })
        let controller = NodeController(datapath: datapath, settings: settings, logger: logger, directory: directory,
                                        store: o.statePath.map(StateStore.init(path:)),
                                        ringEventCounts: { reader.counts }, authCounters: security.counters)
        // Endpoint probes: one event loop thread runs every probe (NIO channels, no thread per
        // endpoint); verdicts reach the controller in order through one consumer.
        let healthGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let health = HealthMonitor(group: healthGroup, logger: logger)
        await controller.attach(health: health)
        let verdicts = Task {
            for await t in health.transitions { await controller.healthChanged(t) }
        }
        defer {
            verdicts.cancel()
            health.shutdown()
            healthGroup.shutdownGracefully { _ in }
        }
        let sharingPort = try o.config.serviceSharingPort()
        var sharing: ServiceSyncShell?
        if let port = sharingPort, let r = replicationSettings, let key = clusterKey {
            await controller.enableSharing(selfID: r.selfAddress.value)
            sharing = ServiceSyncShell(
                config: ServiceSyncShellConfig(selfID: r.selfAddress.value, bindAddress: r.selfAddress, port: port,
                                               peers: r.peers.map { ServiceSyncPeer(id: $0.value, address: $0) }, key: key),
                target: controller, logger: logger)
        }
        do {
            try await datapath.apply(settings: settings)
            try await controller.restore(config: services, options: serviceOptions, state: state, adopted: adoptedSlots,
                                         heldDown: heldDown)
            for i in o.interfaces {
                try await datapath.attach(interface: i, xdp: o.config.xdp ?? false)
                if o.config.xdp == true && SystemChecks.isVirtual(i) {
                    logger.warning("XDP fast path on a virtual interface: packets sent by local stacks with checksum offload (veth) carry partial checksums XDP cannot see and would leave corrupted; use it only where senders compute full checksums, and give the peer device an XDP program so XDP_TX frames are delivered", metadata: ["interface": "\(i)"])
                }
            }
            await datapath.detachLeftovers()
        } catch {
            await datapath.close()
            throw error
        }
        if let s = shell, let r = replicationSettings {
            do { try await s.start() } catch {
                await datapath.close()
                throw ConfigError("cluster: cannot listen on \(r.selfAddress):\(r.port): \(error)")
            }
            await controller.attach(replication: s)
        }
        if let sharing, let port = sharingPort, let r = replicationSettings {
            do { try await sharing.start() } catch {
                await shell?.stop()
                await datapath.close()
                throw ConfigError("cluster: cannot listen on \(r.selfAddress):\(port) for service sharing: \(error)")
            }
            await controller.attach(sharing: sharing)
        }
        var kernelSync: KernelTableSync?
        if let ct = conntrackSettings, let r = replicationSettings, let key = clusterKey {
            let options = KernelTableSync.Options(selfAddress: r.selfAddress, peers: r.peers, port: ct.port, key: key,
                                                  mode: ct.mode, reconcileSeconds: ct.reconcileSeconds, reconcileMaxSeconds: ct.reconcileMaxSeconds, filter: ct.filter,
                                                  netlinkBufferBytes: ct.netlinkBufferBytes,
                                                  netlinkBufferMaxBytes: ct.netlinkBufferMaxBytes)
            do { kernelSync = try await KernelTableSync.start(options, logger: logger) } catch {
                await sharing?.stop()
                await shell?.stop()
                await datapath.close()
                throw ConfigError("conntrack: \(error.message)")
            }
            if let kernelSync { await controller.attach(kernelSync: kernelSync) }
        }
        // The speaker starts before the election, so a takeover can announce at once; it announces
        // nothing until the node's view says what it can serve.
        var bgpTask: Task<Void, Never>?
        if let announcer {
            await announcer.attach(view: { [shell] in
                BGPNodeView(serving: await controller.servingVIPs(), inSync: shell?.inSync ?? true)
            })
            do { try await announcer.speaker.start() } catch {
                await kernelSync?.stop()
                await sharing?.stop()
                await shell?.stop()
                await datapath.close()
                throw ConfigError(error.message)
            }
            await controller.attach(bgp: announcer)
            bgpTask = Task { await announcer.run() }
        }
        var ha: HAShell?
        if let h = haSettings, let r = replicationSettings, let key = clusterKey, let provider {
            let haShell = HAWiring.makeShell(h, replication: r, key: key, provider: provider, datapath: datapath,
                                             directory: directory, replicationShell: shell, kernelSync: kernelSync,
                                             resume: resume, logger: logger)
            do { try await haShell.start() } catch {
                await kernelSync?.stop()
                await sharing?.stop()
                await shell?.stop()
                await datapath.close()
                throw ConfigError("cluster: cannot listen on \(r.selfAddress):\(h.gossipPort) for gossip: \(error)")
            }
            await controller.attach(ha: haShell)
            ha = haShell
        }
        try reader.start()
        let dpService = DatapathService(datapath: datapath, controller: controller, reader: reader,
                                        reapInterval: o.reapInterval, replication: shell, ha: ha, sharing: sharing,
                                        timeouts: settings.timeouts, logger: logger)
        let api: any ServiceLifecycle.Service
        do {
            api = try APIServer.makeApplication(controller: controller, host: o.apiAddress, port: o.apiPort,
                                                security: security, logger: logger)
        } catch {
            await sharing?.stop()
            await kernelSync?.stop()
            await dpServiceStopEarly(datapath: datapath, reader: reader, shell: shell, ha: ha)
            throw ConfigError("api: \(error)")
        }
        hup.attach(ConfigReloader(source: o.configFile, controller: controller, interfaces: o.interfaces,
                                  nodeIP: settings.nodeIP, logger: logger))
        let serviceCount = await controller.serviceCount
        logger.info("tandem node running", metadata: [
            "interfaces": "\(o.interfaces.joined(separator: ","))", "nodeIP": "\(settings.nodeIP)",
            "api": "\(o.tls == nil ? "http" : "https")://\(o.apiAddress):\(o.apiPort)", "services": "\(serviceCount)",
            "token": "\(security.token != nil)",
            "ports": "\(settings.portSlice.low)-\(settings.portSlice.high)",
        ])
        // Services stop in reverse order: the API first, then the datapath detaches (or stays).
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: dpService), .init(service: api)], logger: logger))
        let exit = ExitRequest(persist: o.persistDatapath && datapath.isPinned)
        let signals = exit.installSignalHandlers { Task { await group.triggerGracefulShutdown() } }
        await controller.onStopRequest { release in
            exit.request(release: release)
            Task { await group.triggerGracefulShutdown() }
        }
        defer { signals.forEach { $0.cancel() } }
        do {
            try await group.run()
        } catch {
            bgpTask?.cancel()
            await announcer?.speaker.stop()
            await kernelSync?.stop()
            await dpService.shutdown(release: true)
            throw error
        }
        // Routes go first: routers move the traffic away before the datapath stops serving.
        bgpTask?.cancel()
        await announcer?.speaker.stop()
        await hup.stop()
        await kernelSync?.stop()
        let release = exit.release
        await dpService.shutdown(release: release)
        logger.info(release ? "tandem node stopped; datapath detached"
                            : "tandem node stopped for a restart; datapath pinned and forwarding")
    }
}

/// How the daemon was asked to exit: SIGINT, `tandem node stop --release`, or SIGTERM without
/// persistence release the datapath; SIGTERM (and `tandem node stop`) with persistence keep it.
/// A release, once asked for, stands: systemd follows an ExecStop that sent SIGINT (a system
/// shutdown) with its own SIGTERM.
final class ExitRequest: Sendable {
    private let releaseRequested: Mutex<Bool>
    let persist: Bool

    init(persist: Bool) {
        self.persist = persist
        releaseRequested = Mutex(!persist)
    }

    func request(release: Bool) {
        releaseRequested.withLock { [persist] in $0 = $0 || release || !persist }
    }

    var release: Bool { releaseRequested.withLock { $0 } }

    /// SIGTERM and SIGINT through dispatch sources (the signals themselves are ignored), each
    /// recording its meaning before `shutdown` runs.
    func installSignalHandlers(_ shutdown: @escaping @Sendable () -> Void) -> [DispatchSourceSignal] {
        var sources: [DispatchSourceSignal] = []
        for (sig, release) in [(SIGTERM, false), (SIGINT, true)] {
            signal(sig, SIG_IGN)
            let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            src.setEventHandler { [self] in
                request(release: release)
                shutdown()
            }
            src.resume()
            sources.append(src)
        }
        return sources
    }
}

/// Undoes a start that failed after the datapath was attached.
private func dpServiceStopEarly(datapath: Datapath, reader: RingBufferReader, shell: FlowReplicationShell?, ha: HAShell?) async {
    await ha?.stop()
    await shell?.stop()
    reader.stop()
    await datapath.close()
}

/// Runs the periodic scan until shutdown, then stops the event reader and detaches.
final class DatapathService: ServiceLifecycle.Service, @unchecked Sendable {
    // Immutable after init; the mutable parts are actors.
    let datapath: Datapath
    let controller: NodeController
    let reader: RingBufferReader
    let reapInterval: Duration
    let replication: FlowReplicationShell?
    let ha: HAShell?
    let sharing: ServiceSyncShell?
    let timeouts: Timeouts
    let logger: Logger

    init(datapath: Datapath, controller: NodeController, reader: RingBufferReader, reapInterval: Duration,
         replication: FlowReplicationShell?, ha: HAShell?, sharing: ServiceSyncShell?, timeouts: Timeouts, logger: Logger) {
        self.ha = ha
        self.sharing = sharing
        self.datapath = datapath
        self.controller = controller
        self.reader = reader
        self.reapInterval = reapInterval
        self.replication = replication
        self.timeouts = timeouts
        self.logger = logger
    }

    func run() async throws {
        // The periodic scan catches idle expiry and LRU eviction, on its own thread.
        let scanner = TableScanner(controller: controller, replication: replication, interval: reapInterval,
                                   logger: logger)
        scanner.start()
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled { try? await Task.sleep(for: .seconds(3600)) }
        }
        scanner.stop()
    }

    /// `release` false: a graceful restart. Peers are told this node is restarting (they hold
    /// their fire), the VIP gate and floating IPs stay, and the pinned datapath keeps forwarding
    /// with what the next start resumes recorded in it.
    func shutdown(release: Bool = true) async {
        guard release else {
            let resume = await ha?.stop(restarting: true)
            await sharing?.stop()
            reader.stop()
            await replication?.stop()
            // Without HA there is no role to resume, only the datapath.
            await datapath.close(release: false, resume: resume ?? GracefulExitRecord(
                exitedAtMicros: wallClockMicros(), incarnation: 0, instances: []))
            return
        }
        // Leave the cluster first: peers elect at once, and this node stops answering for the
        // VIPs before anything else is torn down.
        await controller.stopVerdictLoop()
        await ha?.stop()
        await sharing?.stop()
        reader.stop()
        await replication?.stop()
        await datapath.close()
    }
}

/// Runs the table scan on a dedicated thread under SCHED_IDLE (nice 19 where that is refused):
/// the scan reads the whole connection table, and on two cores it must yield to the threads that
/// forward events and replicate. A long pass also stretches the pause after it, so the scan stays
/// within ScanSchedule.cpuBudget (2% of a core).
final class TableScanner: @unchecked Sendable {
    private let controller: NodeController
    private let replication: FlowReplicationShell?
    private let interval: Duration
    private let logger: Logger
    private let latch = WorkerLatch()

    init(controller: NodeController, replication: FlowReplicationShell?, interval: Duration, logger: Logger) {
        self.controller = controller
        self.replication = replication
        self.interval = interval
        self.logger = logger
    }

    /// SCHED_IDLE: any ordinary thread that wakes up preempts the scan at once. A nice value is
    /// not enough: it orders threads within one scheduling group only, and every daemon started
    /// in its own session is its own group (autogroup), so two nodes' scans on one machine held
    /// both cores for hundreds of milliseconds against the other node's replication loop
    /// (measured: a 63 ms run-queue wait, lag spikes of 80 ms at 10k flows/s). Falls back to
    /// nice 19 where SCHED_IDLE is refused. Linux applies both per thread; 0 names this one.
    static func lowerOwnPriority() {
        var param = sched_param(sched_priority: 0)
        if sched_setscheduler(0, schedIdlePolicy, &param) != 0 {
            _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, 19)
        }
    }

    /// CPU time this thread has used, in seconds.
    static func threadCPUSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// SCHED_IDLE from <sched.h> (behind _GNU_SOURCE, so not imported).
    static let schedIdlePolicy: Int32 = 5

    func start() {
        latch.begin()
        let t = Thread { [self] in
            TableScanner.lowerOwnPriority()
            let configured = Double(interval.components.seconds) + Double(interval.components.attoseconds) / 1e18
            let schedule = controller.scanSchedule(minimumInterval: configured)
            logger.debug("table scan schedule", metadata: ["pass_s": "\(schedule.passInterval)"])
            let clock = { Double(monotonicNanoseconds()) / 1e9 }
            var planner = ScanPlanner(schedule: schedule, now: clock(), eventsLost: controller.eventsLost)
            var pause = schedule.passInterval
            while latch.waitOrStop(seconds: pause) {
                let started = clock()
                let cpuBefore = TableScanner.threadCPUSeconds()
                let pass = planner.nextPass(now: started, eventsLost: controller.eventsLost)
                let expired = controller.scan(replicateTo: pass.replicate ? replication : nil, checkOrphans: pass.checkOrphans)
                if !expired.isEmpty {
                    let c = controller
                    Task { await c.record(expired: expired) }
                    logger.debug("expired connections", metadata: ["count": "\(expired.count)"])
                }
                // CPU time, not wall time: the budget is a share of a CPU, and a pass that other
                // threads kept waiting (it runs SCHED_IDLE) has not cost more.
                let took = TableScanner.threadCPUSeconds() - cpuBefore
                pause = planner.pause(after: pass, took: took)
                logger.debug("table scan pass", metadata: [
                    "replicate": "\(pass.replicate)", "orphans": "\(pass.checkOrphans)",
                    "cpu_ms": "\(Int(took * 1000))", "next_in_s": "\(pause)"])
            }
            latch.finish()
        }
        t.name = "tandem-scan"
        t.start()
    }

    /// Stops and waits for a pass in progress to finish (so the maps outlive it).
    func stop() {
        latch.stopAndWait()
    }
}

/// A worker thread's start/stop handshake: every flag is read and written under one lock, so
/// `stopAndWait` (any thread) returns only after the worker has left its loop.
final class WorkerLatch: @unchecked Sendable {
    private let condition = NSCondition()
    private var stopping = false
    private var running = false

    /// Before the worker thread starts.
    func begin() {
        condition.lock()
        running = true
        condition.unlock()
    }

    /// The worker sleeps up to `seconds`; false once stopping.
    func waitOrStop(seconds: Double) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        let deadline = Date().addingTimeInterval(seconds)
        while !stopping && Date() < deadline { _ = condition.wait(until: deadline) }
        return !stopping
    }

    /// The worker left its loop.
    func finish() {
        condition.lock()
        running = false
        condition.broadcast()
        condition.unlock()
    }

    func stopAndWait() {
        condition.lock()
        stopping = true
        condition.broadcast()
        while running { _ = condition.wait(until: Date().addingTimeInterval(1)) }
        condition.unlock()
    }
}
