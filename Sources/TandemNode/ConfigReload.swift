import Dispatch
import Foundation
import Logging
import TandemAPI
import TandemAPIModels
import TandemCore
import Synchronization

/// The config file a node was started from: what SIGHUP (`systemctl reload`) re-reads.
public struct ConfigFileSource: Sendable {
    public var path: String
    /// The file as read at start, before command-line flags overrode parts of it: a reload
    /// compares file with file, so a flag is never reported as a change of the file.
    public var loaded: NodeConfig

    public init(path: String, loaded: NodeConfig) {
        self.path = path
        self.loaded = loaded
    }
}

/// What a reload does: the pure diff of the config file the node runs and the file as it is now.
public struct ConfigReloadPlan: Equatable, Sendable {
    public enum Action: Equatable, Sendable {
        case remove(ServiceKey)
        case update(Service, ServiceOptions)
        case add(Service, ServiceOptions)

        public var key: ServiceKey {
            switch self {
            case .remove(let k): k
            case .update(let s, _), .add(let s, _): s.key
            }
        }

        /// The service an update or addition installs.
        public var service: Service? {
            switch self {
            case .remove: nil
            case .update(let s, _), .add(let s, _): s
            }
        }
    }

    /// Removals first (they free VIP:port keys and slots), then changes, then additions; each
    /// group in key order.
    public var actions: [Action]
    /// Settings that changed but apply only at a restart (their running values stay).
    public var needsRestart: [String]
    /// The new file's service keys.
    public var keys: Set<ServiceKey>
}

public enum ConfigReload {
    /// Settings other than the services, each with how to compare it: what a reload cannot apply
    /// to a running node (interfaces and sizes are fixed when the datapath loads; cluster, API and
    /// provider settings when their listeners and shells start).
    static let restartSettings: [(String, @Sendable (NodeConfig, NodeConfig) -> Bool)] = [
        ("interfaces", { $0.interfaces == $1.interfaces }), ("nodeIP", { $0.nodeIP == $1.nodeIP }),
        ("api", { $0.api == $1.api }), ("cluster", { $0.cluster == $1.cluster }),
        ("timeouts", { $0.timeouts == $1.timeouts }),
        ("connectionTableSize", { $0.connectionTableSize == $1.connectionTableSize }),
        ("eventRingBytes", { $0.eventRingBytes == $1.eventRingBytes }),
        ("answerICMP", { $0.answerICMP == $1.answerICMP }), ("xdp", { $0.xdp == $1.xdp }),
        ("oci", { $0.oci == $1.oci }), ("stateFile", { $0.stateFile == $1.stateFile }),
    ]

    /// Validates `next` as a start would (everything that needs no system access), then diffs
    /// its services against `running`'s. Throws the first problem; a plan is all or nothing.
    /// `interfaces` and `nodeIP` are the running node's (flags may have set them).
    public static func plan(running: NodeConfig, next: NodeConfig, interfaces: [String],
                            nodeIP: IPv4Address) throws(ConfigError) -> ConfigReloadPlan {
        let nextServices = try next.validatedServices()
        let nextOptions = try next.validatedServiceOptions()
        _ = try next.validatedEventRingBytes()
        _ = try next.portSlice()
        _ = try next.ha(interfaces: next.interfaces ?? interfaces)
        _ = try next.replication(nodeIP: next.nodeIP.flatMap(IPv4Address.init) ?? nodeIP)
        _ = try next.serviceSharingPort()
        if let t = next.nodeIP, IPv4Address(t) == nil { throw ConfigError("nodeIP '\(t)' is not an IPv4 address") }
        if (next.api?.tlsCertificate == nil) != (next.api?.tlsKey == nil) {
            throw ConfigError("api: a TLS certificate needs its key and a key its certificate")
        }
        // The running file was validated at start (or by the last reload).
        let old = try running.validatedServices()
        let oldOptions = try running.validatedServiceOptions()
        let before = Dictionary(old.map { ($0.key, $0) }, uniquingKeysWith: { a, _ in a })
        let after = Dictionary(nextServices.map { ($0.key, $0) }, uniquingKeysWith: { a, _ in a })
        var removes: [ConfigReloadPlan.Action] = [], updates: [ConfigReloadPlan.Action] = [], adds: [ConfigReloadPlan.Action] = []
        for key in before.keys.sorted() where after[key] == nil { removes.append(.remove(key)) }
        for key in after.keys.sorted() {
            guard let s = after[key] else { continue }
            let o = nextOptions[key] ?? ServiceOptions()
            if let was = before[key] {
                if was != s || (oldOptions[key] ?? ServiceOptions()) != o { updates.append(.update(s, o)) }
            } else {
                adds.append(.add(s, o))
            }
        }
        var restart: [String] = []
        for (name, same) in restartSettings where !same(running, next) { restart.append(name) }
        var a = running, b = next
        a.services = nil
        b.services = nil
        if restart.isEmpty && a != b { restart.append("other settings") }
        return ConfigReloadPlan(actions: removes + updates + adds, needsRestart: restart, keys: Set(after.keys))
    }

    /// The file as the node now runs it once the plan was carried out except `failed` keys: the
    /// new file's services, but the old entry for each failed key (so a later reload tries it
    /// again), and the old settings where the new ones need a restart.
    public static func applied(running: NodeConfig, next: NodeConfig, failed: Set<ServiceKey>) -> NodeConfig {
        func key(_ s: NodeConfig.ServiceConfig) -> ServiceKey? {
            guard let vip = IPv4Address(s.externalIP), let port = UInt16(exactly: s.port),
                  let proto = L4Protocol(name: s.protocol ?? "tcp") else { return nil }
            return ServiceKey(vip: vip, port: port, proto: proto)
        }
        let old = running.services ?? []
        var services: [NodeConfig.ServiceConfig] = []
        for s in next.services ?? [] {
            if let k = key(s), failed.contains(k) {
                if let o = old.first(where: { key($0) == k }) { services.append(o) }  // a failed add has no old entry
            } else {
                services.append(s)
            }
        }
        // A failed removal keeps the service.
        for s in old {
            if let k = key(s), failed.contains(k), !services.contains(where: { key($0) == k }) { services.append(s) }
        }
        var out = running
        out.services = services.isEmpty && running.services == nil ? nil : services
        return out
    }
}

/// Re-reads the config file on SIGHUP and applies what can be applied to a running node: its
/// services, through the controller as API writes are (persisted, shared with the cluster when
/// services are shared). Reloads run one at a time.
public actor ConfigReloader {
    private let source: ConfigFileSource?
    private var running: NodeConfig
    private let controller: NodeController
    private let interfaces: [String]
    private let nodeIP: IPv4Address
    private let reachability: @Sendable (IPv4Address) -> String?
    private let logger: Logger

    init(source: ConfigFileSource?, controller: NodeController, interfaces: [String], nodeIP: IPv4Address,
         reachability: @escaping @Sendable (IPv4Address) -> String? = SystemChecks.routeProblem, logger: Logger) {
        self.source = source
        self.running = source?.loaded ?? NodeConfig()
        self.controller = controller
        self.interfaces = interfaces
        self.nodeIP = nodeIP
        self.reachability = reachability
        self.logger = logger
    }

    /// One reload; returns the plan carried out (nil: refused, nothing changed).
    @discardableResult
    public func reload() async -> ConfigReloadPlan? {
        guard let source else {
            logger.warning("SIGHUP: started without --config, no config file to re-read")
            return nil
        }
        let next: NodeConfig
        let plan: ConfigReloadPlan
        do throws(ConfigError) {
            next = try NodeConfig.load(path: source.path)
            plan = try ConfigReload.plan(running: running, next: next, interfaces: interfaces, nodeIP: nodeIP)
            // As at start: an endpoint this node cannot route to refuses the whole file.
            for s in plan.actions.compactMap(\.service) {
                for ep in s.endpoints {
                    if let why = reachability(ep.ip) {
                        throw ConfigError("service \(s.key): endpoint \(ep.identity) is unreachable from this node: \(why)")
                    }
                }
            }
        } catch {
            logger.error("config reload refused, nothing changed", metadata: ["file": "\(source.path)", "error": "\(error.message)"])
            return nil
        }
        var failed = Set<ServiceKey>()
        var dropped: [ServiceKey] = []
        for action in plan.actions {
            do {
                switch action {
                case .remove(let key):
                    do { try await controller.delete(key) } catch let e as APIError where e.status.code == 404 {
                        // Deleted through the API already: nothing to do.
                    }
                    dropped.append(key)
                case .update(let s, let o), .add(let s, let o):
                    try await controller.apply(try LoadBalancerEntry(service: s, options: o).toRequest())
                }
            } catch {
                failed.insert(action.key)
                logger.error("config reload: service not changed", metadata: ["service": "\(action.key)", "error": "\(error)"])
            }
        }
        running = ConfigReload.applied(running: running, next: next, failed: failed)
        let keys = Set(((try? running.validatedServices()) ?? []).map(\.key))
        do { try await controller.configReloaded(keys: keys, dropped: dropped) } catch {
            logger.error("config reload: state file not updated", metadata: ["error": "\(error)"])
        }
        if !plan.needsRestart.isEmpty {
            logger.warning("config reload: changed settings take effect only after a restart; the running values stay",
                           metadata: ["settings": "\(plan.needsRestart.joined(separator: ","))"])
        }
        func count(_ match: (ConfigReloadPlan.Action) -> Bool) -> Int {
            plan.actions.filter { match($0) && !failed.contains($0.key) }.count
        }
        logger.info("config reloaded", metadata: [
            "file": "\(source.path)",
            "added": "\(count { if case .add = $0 { true } else { false } })",
            "updated": "\(count { if case .update = $0 { true } else { false } })",
            "removed": "\(count { if case .remove = $0 { true } else { false } })",
            "failed": "\(failed.count)",
        ])
        return plan
    }

    /// SIGHUP handling for the life of the process. Called first thing at start: SIGHUP's
    /// default action would end the daemon, so it is ignored until `attach` (a reload before the
    /// services are installed is logged and dropped).
    public final class Trap: @unchecked Sendable { // the dispatch source is not Sendable; set once, then only cancelled
        private struct State {
            var reloader: ConfigReloader?
            var pending: Task<Void, Never>?
        }
        private let source: any DispatchSourceSignal
        private let state = Mutex(State())

        public init(logger: Logger) {
            signal(SIGHUP, SIG_IGN)
            source = DispatchSource.makeSignalSource(signal: SIGHUP, queue: DispatchQueue(label: "tandem.sighup"))
            source.setEventHandler { [self] in
                guard let r = state.withLock({ $0.reloader }) else {
                    logger.warning("SIGHUP before the node finished starting: ignored")
                    return
                }
                // Reloads queue on the actor, one at a time, in arrival order.
                state.withLock { s in
                    let previous = s.pending
                    s.pending = Task { await previous?.value; await r.reload() }
                }
            }
            source.resume()
        }

        public func attach(_ reloader: ConfigReloader) { state.withLock { $0.reloader = reloader } }

        /// Stops handling (SIGHUP stays ignored) and waits for a reload in progress.
        public func stop() async {
            source.cancel()
            let last = state.withLock { s -> Task<Void, Never>? in
                s.reloader = nil
                return s.pending
            }
            await last?.value
        }
    }
}
