import Foundation
import Logging
import ServiceLifecycle
import TandemAPI
import TandemCore
import TandemDatapath

/// What `tandem node run` was asked to do, after merging flags and the config file.
public struct NodeOptions: Sendable {
    public var interfaces: [String]
    public var objectPath: String
    public var config: NodeConfig
    public var apiAddress: String
    public var apiPort: Int
    public var reapInterval: Duration

    public init(interfaces: [String], objectPath: String, config: NodeConfig, apiAddress: String, apiPort: Int,
                reapInterval: Duration = .seconds(2)) {
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
    public static func preflight(_ o: NodeOptions) throws(ConfigError) -> (DatapathSettings, [TandemCore.Service]) {
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
        let settings = DatapathSettings(nodeIP: nodeIP, hashSeed: o.config.cluster?.seed ?? 0x7461_6e64,
                                        portSlice: try o.config.portSlice(), timeouts: o.config.resolvedTimeouts(),
                                        answerICMP: o.config.answerICMP ?? true)
        let services = try o.config.validatedServices()
        for s in services {
            for ep in s.endpoints {
                if let why = SystemChecks.routeProblem(ep.ip) {
                    throw ConfigError("service \(s.key): endpoint \(ep.identity) is unreachable from this node: \(why)")
                }
            }
        }
        return (settings, services)
    }

    /// Runs the node until SIGTERM or SIGINT, then detaches everything it attached.
    public static func run(_ o: NodeOptions, logger: Logger) async throws {
        let (settings, services) = try preflight(o)
        let datapath = try Datapath(objectPath: o.objectPath,
                                    connectionTableSize: o.config.connectionTableSize ?? 262_144, logger: logger)
        // Nothing consumes individual events yet (replication will): count them on the reader thread.
        let reader = RingBufferReader(eventsMap: datapath.maps.events, deliver: false)
        let controller = NodeController(datapath: datapath, settings: settings, logger: logger,
                                        ringEventCounts: { reader.counts })
        do {
            try await datapath.apply(settings: settings)
            for s in services { try await controller.create(s) }
            for i in o.interfaces { try await datapath.attach(interface: i) }
        } catch {
            await datapath.close()
            throw error
        }
        try reader.start()
        let dpService = DatapathService(datapath: datapath, controller: controller, reader: reader,
                                        reapInterval: o.reapInterval, logger: logger)
        let api = APIServer.makeApplication(controller: controller, host: o.apiAddress, port: o.apiPort, logger: logger)
        logger.info("tandem node running", metadata: [
            "interfaces": "\(o.interfaces.joined(separator: ","))", "nodeIP": "\(settings.nodeIP)",
            "api": "\(o.apiAddress):\(o.apiPort)", "services": "\(services.count)",
            "ports": "\(settings.portSlice.low)-\(settings.portSlice.high)",
        ])
        // Services stop in reverse order: the API first, then the datapath detaches.
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: dpService), .init(service: api)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        do {
            try await group.run()
        } catch {
            await dpService.shutdown()
            throw error
        }
        await dpService.shutdown()
        logger.info("tandem node stopped; datapath detached")
    }
}

/// Runs the periodic scan until shutdown, then stops the event reader and detaches.
final class DatapathService: ServiceLifecycle.Service, @unchecked Sendable {
    // Immutable after init; the mutable parts are actors.
    let datapath: Datapath
    let controller: NodeController
    let reader: RingBufferReader
    let reapInterval: Duration
    let logger: Logger

    init(datapath: Datapath, controller: NodeController, reader: RingBufferReader, reapInterval: Duration, logger: Logger) {
        self.datapath = datapath
        self.controller = controller
        self.reader = reader
        self.reapInterval = reapInterval
        self.logger = logger
    }

    func run() async throws {
        let controller = controller
        let interval = reapInterval
        let logger = logger
        // The reader thread only counts events until replication consumes them; this loop runs
        // the periodic scan that catches idle expiry and LRU eviction.
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                if Task.isCancelled { break }
                let expired = await controller.reap()
                if !expired.isEmpty { logger.debug("expired connections", metadata: ["count": "\(expired.count)"]) }
            }
        }
        await shutdown()
    }

    func shutdown() async {
        reader.stop()
        await datapath.close()
    }
}
