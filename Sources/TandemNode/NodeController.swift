import Foundation
import Logging
import TandemAPI
import TandemAPIModels
import TandemBGP
import TandemCore
import TandemDatapath
import TandemHA
import TandemHealth
import TandemKernelSync
import TandemReplication
import TandemServiceSync
import TandemSync
import TandemSyncWire
import TandemStatus

/// Keeps the service table and the datapath's maps in step, and answers the API.
public actor NodeController: LoadBalancerController {
    private var table = ServiceTable()
    private let datapath: Datapath
    private let settings: DatapathSettings
    private let logger: Logger
    /// Checks that an endpoint can be routed to; returns a reason when it cannot.
    private let reachability: @Sendable (IPv4Address) -> String?
    public private(set) var eventCounts: [String: UInt64] = [:]
    /// Ring-buffer event counts, kept by the reader thread.
    private let ringEventCounts: @Sendable () -> [String: UInt64]
    /// Slots by service key for replication's event loop.
    nonisolated let directory: ServiceDirectory
    private var replication: FlowReplicationShell?
    private var kernelTable: KernelTableSync?
    private var ha: HAShell?
    /// What the control plane keeps beside each service (monitor, probe, managed).
    private var options: [ServiceKey: ServiceOptions] = [:]
    /// Where API changes are written before they are answered; nil keeps them in memory only.
    private let store: StateStore?
    /// Services the config file defines: deleting one through the API is remembered.
    private var configKeys: Set<ServiceKey> = []
    /// Deleted through the API, oldest first (see NodeState.deleted).
    private var deleted: [ServiceKey] = []
    /// State-file services this node could not install at start (an endpoint unreachable, say):
    /// kept in the file until the API creates or deletes that key, so a transient problem at
    /// boot does not erase them.
    private var unrestored: [ServiceKey: LoadBalancerEntry] = [:]
    /// During a restore onto an adopted datapath: the slot each service had (see `restore`).
    private var adoptedSlots: [ServiceKey: UInt32] = [:]
    /// During a restore onto an adopted datapath: the endpoints (ip:port) each service held down,
    /// which start their probes from down (see `restore`).
    private var heldDown: [ServiceKey: Set<String>] = [:]
    /// Probes to start from down (`holdDownAdopted`), taken by `syncProbes` as it adds them.
    private var startingDown: Set<EndpointID> = []
    static let maxRememberedDeletes = 1024
    private let authCounters: APIAuthCounters
    /// The cluster-shared service table (versions, tombstones); nil when services are not shared.
    private var sharing: ServiceSyncCore?
    private var sharingShell: ServiceSyncShell?
    /// Records from peers whose spec did not validate as an API request.
    private var sharingRefused: UInt64 = 0
    /// Probes of monitored services' endpoints; nil: nothing is probed (tests without it).
    private var health: HealthMonitor?
    /// What is registered with the monitor, by service.
    private var probed: [ServiceKey: Set<EndpointID>] = [:]
    /// Endpoint verdicts: this node's probe verdicts, the cluster's host states (endpointhoststate)
    /// and the sets peers published (proto/SPEC.md §14.5). The node id is set by `enableSharing`.
    var verdicts = ClusterVerdicts(selfID: 1)
    /// The down set each service's datapath holds, where it came from and when it was written.
    private var applied: [ServiceKey: AppliedVerdict] = [:]
    /// The MASTER of each service VIP, as the election last said (empty: not clustered).
    private var masters: [IPv4Address: UInt32] = [:]
    /// Times a peer's verdict changed this node's datapath.
    private var verdictsApplied: UInt64 = 0
    private var verdictLoop: Task<Void, Never>?
    /// A refresh is writing to the datapath; another was asked for meanwhile (see refreshVerdicts).
    private var refreshing = false
    private var refreshAgain = false
    /// LoxiLB endpoint objects by key (`POST config/endpoint`).
    private var endpointObjects: [String: EndpointObject] = [:]
    var serviceCount: Int { table.services.count }
    /// Events the datapath could not queue (ring buffer full), so far.
    nonisolated var eventsLost: UInt64 { datapath.stats().eventsLost }

    nonisolated func scanSchedule(minimumInterval: Double) -> ScanSchedule {
        ScanSchedule(tableSize: datapath.connectionTableSize, timeouts: datapath.effectiveTimeouts(settings.timeouts),
                     minimumInterval: minimumInterval)
    }

    public init(datapath: Datapath, settings: DatapathSettings, logger: Logger, directory: ServiceDirectory = ServiceDirectory(),
                store: StateStore? = nil,
                ringEventCounts: @escaping @Sendable () -> [String: UInt64] = { [:] },
                authCounters: APIAuthCounters = APIAuthCounters(),
                reachability: @escaping @Sendable (IPv4Address) -> String? = SystemChecks.routeProblem) {
        self.store = store
        self.authCounters = authCounters
        self.ringEventCounts = ringEventCounts
        self.directory = directory
        self.datapath = datapath
        self.settings = settings
        self.logger = logger
        self.reachability = reachability
    }

    /// Creates a service (the config file's, at start). Refuses one that exists.
    public func create(_ service: Service, options opts: ServiceOptions = ServiceOptions()) async throws {
        guard table.services[service.key] == nil else {
            throw APIError.conflict("lbrule-exists error: service \(service.key) already exists")
        }
        try await install(service, options: opts)
    }

    public func apply(_ request: LoadBalancerRequest) async throws {
        let key = request.service.key
        let existing = table.services[key]
        switch request.operation {
        case .add:
            guard let old = existing else { return try await createPersisted(request.service, request.options) }
            if old.mark != request.service.mark {
                throw APIError.conflict("lbrule-exists error: service \(key) exists with block \(old.mark); a rule of block \(request.service.mark) would need its own VIP:port")
            }
            // The same rule again is what kube-loxilb sends for every cached rule when a node
            // comes back: a success that changes nothing.
            if old == request.service && options[key] == request.options { return }
            // "Replace if existing" (LoxiLB's LBOPAdd): kube-loxilb re-posts a rule whose
            // endpoints changed and takes any error containing "exist" as success, so an error
            // here would silently lose the change.
            try await replacePersisted(request.service, request.options)
        case .attach:
            guard var next = existing else { return try await createPersisted(request.service, request.options) }
            for ep in request.service.endpoints {
                if let i = next.endpoints.firstIndex(where: { $0.identity == ep.identity }) {
                    next.endpoints[i].weight = ep.weight
                } else {
                    next.endpoints.append(ep)
                }
            }
            if next == existing { return }
            try await replacePersisted(next, options[key] ?? ServiceOptions())
        case .detach:
            guard var next = existing else {
                if deleted.contains(key) { return }
                throw APIError.notFound("lbrule not-exists error: service \(key) does not exist")
            }
            let gone = Set(request.service.endpoints.map(\.identity))
            next.endpoints.removeAll { gone.contains($0.identity) }
            if next.endpoints.count == existing?.endpoints.count { return }
            if next.endpoints.isEmpty { return try await delete(key) }
            try await replacePersisted(next, options[key] ?? ServiceOptions())
        }
    }

    private func createPersisted(_ service: Service, _ opts: ServiceOptions) async throws {
        try await install(service, options: opts)
        let before = deleted
        let sharedBefore = sharing
        deleted.removeAll { $0 == service.key }
        sharing?.recordLocal(service.key, spec: Self.spec(service, opts), nowMicros: wallClockMicros())
        do { try persist() } catch {
            await rollBackCreate(service.key)
            deleted = before
            sharing = sharedBefore
            throw error
        }
        sharingShell?.changed()
    }

    private func replacePersisted(_ service: Service, _ opts: ServiceOptions) async throws {
        guard let old = table.services[service.key] else { return }
        let oldOptions = options[service.key] ?? ServiceOptions()
        try await replace(service, options: opts)
        let sharedBefore = sharing
        sharing?.recordLocal(service.key, spec: Self.spec(service, opts), nowMicros: wallClockMicros())
        do { try persist() } catch {
            try? await replace(old, options: oldOptions)
            sharing = sharedBefore
            throw error
        }
        sharingShell?.changed()
    }

    /// A service's configuration as the cluster shares it: the API's entry, sorted-key JSON, so
    /// nodes given the same rule hold the same bytes (proto/SPEC.md §14.2).
    static func spec(_ service: Service, _ opts: ServiceOptions) -> [UInt8] {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Encoding plain value types cannot fail; an empty spec would be refused by peers.
        return (try? Array(enc.encode(LoadBalancerEntry(service: service, options: opts)))) ?? []
    }

    private func checkReachable(_ service: Service) throws {
        for ep in service.endpoints {
            if let why = reachability(ep.ip) {
                throw APIError.badRequest("endpoint \(ep.identity) is unreachable from this node: \(why)")
            }
        }
    }

    /// The table, options and directory after a service went into `slot`.
    private func adopt(_ next: ServiceTable, _ service: Service, options opts: ServiceOptions, slot: UInt32, verb: String) {
        table = next
        options[service.key] = opts
        directory.set(service.key, slot: slot, endpoints: service.endpoints)
        syncProbes(service.key)
        applied[service.key] = nil
        ha?.servicesChanged()
        logger.info("service \(verb)", metadata: ["service": "\(service.key)", "mode": "\(service.mode)",
                                                  "sel": "\(service.selection)", "endpoints": "\(service.endpoints.count)"])
    }

    /// Puts a new service into the table and the datapath.
    private func install(_ service: Service, options opts: ServiceOptions) async throws {
        try checkReachable(service)
        try checkProbe(service, opts)
        var next = table
        let slot: UInt32
        let adoptedSlot = adoptedSlots.removeValue(forKey: service.key)
        if adoptedSlot != nil { holdDownAdopted(service, options: opts) }
        do { slot = try next.add(service, preferredSlot: adoptedSlot) } catch {
            throw error.message.contains("already exists") ? APIError.conflict("lbrule-exists error: \(error.message)")
                : error.message.contains("table is full") ? APIError(.forbidden, "rule-hwm error: \(error.message)")
                : APIError.badRequest(error.message)
        }
        do {
            // An adopted service keeps its counters, like its connections.
            if adoptedSlot != slot { try await datapath.resetCounters(slot: slot) }
            try await datapath.install(service, slot: slot, hashSeed: settings.hashSeed, downEndpoints: downIndices(service))
        } catch {
            // Leave nothing half-installed behind.
            await datapath.uninstall(service.key, slot: slot)
            forgetHeldDown(service)
            throw APIError.internalError("datapath refused the service: \(error)")
        }
        unrestored[service.key] = nil
        adopt(next, service, options: opts, slot: slot, verb: "created")
        await refreshVerdicts([service.key])
    }

    /// Rewrites an existing service in its slot: its connections keep flowing.
    private func replace(_ service: Service, options opts: ServiceOptions) async throws {
        try checkReachable(service)
        try checkProbe(service, opts)
        var next = table
        let slot: UInt32
        do { slot = try next.replace(service) } catch { throw APIError.badRequest(error.message) }
        do {
            try await datapath.install(service, slot: slot, hashSeed: settings.hashSeed, downEndpoints: downIndices(service))
        } catch {
            if let old = table.services[service.key] {
                try? await datapath.install(old, slot: slot, hashSeed: settings.hashSeed, downEndpoints: downIndices(old))
            }
            throw APIError.internalError("datapath refused the service: \(error)")
        }
        adopt(next, service, options: opts, slot: slot, verb: "updated")
        await refreshVerdicts([service.key])
    }

    private func rollBackCreate(_ key: ServiceKey) async {
        var next = table
        guard let slot = try? next.remove(key) else { return }
        await datapath.uninstall(key, slot: slot)
        table = next
        options[key] = nil
        directory.remove(key)
        syncProbes(key)
        ha?.servicesChanged()
    }

    /// Loads what a restart must bring back: services from the state file (they win over the
    /// config file's), then the config file's services the state neither holds nor deleted.
    /// Services the state holds that this node cannot install now (an endpoint unreachable) are
    /// logged and skipped, and kept in the file (`unrestored`).
    ///
    /// `adopted` (an adopted pinned datapath's services and slots) puts each service back in its
    /// slot; adopted services that are not restored are removed from the maps. `heldDown` (what
    /// the adopted maps held down) keeps those endpoints of a monitored service down until their
    /// probes pass: a restart does not put an endpoint known dead back into rotation.
    func restore(config: [Service], options configOptions: [ServiceKey: ServiceOptions] = [:], state: NodeState?,
                 adopted: [ServiceKey: UInt32] = [:], heldDown: [ServiceKey: Set<String>] = [:]) async throws {
        adoptedSlots = adopted
        self.heldDown = heldDown
        defer { self.heldDown = [:]; startingDown = [] }
        do { try await restoreServices(config: config, options: configOptions, state: state) } catch {
            adoptedSlots = [:]
            throw error
        }
        // What the previous run served and this one does not: out of the maps.
        for (key, slot) in adoptedSlots where table.services[key] == nil {
            await datapath.uninstall(key, slot: slot)
            logger.info("adopted service not restored: removed", metadata: ["service": "\(key)"])
        }
        adoptedSlots = [:]
    }

    private func restoreServices(config: [Service], options configOptions: [ServiceKey: ServiceOptions], state: NodeState?) async throws {
        configKeys = Set(config.map(\.key))
        defer { seedSharing(state) }
        guard let state else {
            for s in config { try await create(s, options: configOptions[s.key] ?? ServiceOptions()) }
            return
        }
        deleted = state.deleted.compactMap(ServiceKey.init(text:))
        // Before the services: a rule endpoint an object governs is probed with its settings at once.
        for e in state.endpoints {
            do throws(ServiceError) {
                let o = try e.validated()
                endpointObjects[o.key] = o
                syncObjectProbe(o.key)
            } catch {
                logger.error("state file: endpoint object refused", metadata: ["error": "\(error.message)"])
            }
        }
        verdicts.seedHosts(state.hostStates.compactMap { h, st in
            guard let ip = IPv4Address(h), let s = HostVerdictState(name: st) else { return nil }
            // A file from before host states were versioned: version 1, so any newer write wins.
            let stamp = state.hostStamps[h]
            return HostVerdict(host: ip, state: s, version: stamp?.version ?? 1, origin: stamp?.origin ?? verdicts.selfID)
        })
        var held = Set<ServiceKey>()
        for e in state.services {
            let r: LoadBalancerRequest
            do { r = try e.toRequest() } catch {
                logger.error("state file: service refused", metadata: ["error": "\(error.message)"])
                continue
            }
            held.insert(r.service.key)
            do { try await install(r.service, options: r.options) } catch {
                unrestored[r.service.key] = e
                logger.error("state file: service not restored (kept in the file)", metadata: ["service": "\(r.service.key)", "error": "\(error)"])
            }
        }
        for s in config where !held.contains(s.key) && !deleted.contains(s.key) {
            try await create(s, options: configOptions[s.key] ?? ServiceOptions())
        }
        logger.info("state restored", metadata: ["services": "\(table.services.count)", "fromState": "\(state.services.count)",
                                                 "deleted": "\(deleted.count)"])
    }

    /// Gives the shared table what this node serves after a restore: the state file's versions,
    /// version 1 for services no write has versioned (the config file's), tombstones.
    private func seedSharing(_ state: NodeState?) {
        guard var core = sharing else { return }
        var seeds: [(record: ServiceRecord, applied: Bool, tombstonedAt: UInt64)] = []
        let stamps = state?.stamps ?? [:]
        for (key, stamp) in stamps {
            guard let k = ServiceKey(text: key), stamp.version > 0, stamp.origin != 0 else { continue }
            if let at = stamp.tombstonedAt {
                guard table.services[k] == nil else { continue }
                seeds.append((ServiceRecord(key: k, version: stamp.version, origin: stamp.origin, spec: nil), true, at))
            } else if let svc = table.services[k] {
                let spec = Self.spec(svc, options[k] ?? ServiceOptions())
                seeds.append((ServiceRecord(key: k, version: stamp.version, origin: stamp.origin, spec: spec), true, 0))
            } else if let e = unrestored[k], let r = try? e.toRequest() {
                let spec = Self.spec(r.service, r.options)
                seeds.append((ServiceRecord(key: k, version: stamp.version, origin: stamp.origin, spec: spec), false, 0))
            }
        }
        core.seed(seeds)
        for (k, svc) in table.services { core.recordBaseline(k, spec: Self.spec(svc, options[k] ?? ServiceOptions())) }
        sharing = core
    }

    /// The state as it is now, written before the change is answered.
    private func persist() throws {
        guard let store else { return }
        let live = table.sorted.map { LoadBalancerEntry(service: $0.service, options: options[$0.service.key] ?? ServiceOptions()) }
        let kept = unrestored.sorted { $0.key < $1.key }.map(\.value)
        var state = NodeState(services: live + kept, deleted: deleted.map(\.description))
        state.endpoints = endpointObjects.keys.sorted().compactMap { endpointObjects[$0]?.entry }
        for (ip, h) in verdicts.hosts {
            state.hostStates[ip.description] = h.state.name
            state.hostStamps[ip.description] = ServiceStamp(version: h.version, origin: h.origin)
        }
        if let sharing {
            for (key, h) in sharing.held {
                let stamp = ServiceStamp(version: h.record.version, origin: h.record.origin,
                                         tombstonedAt: h.record.spec == nil ? h.tombstonedAt : nil)
                state.stamps[key.description] = stamp
            }
        }
        do { try store.save(state) } catch {
            logger.error("state file not written", metadata: ["error": "\(error.message)"])
            throw APIError.internalError("the change was not made: \(error.message)")
        }
    }

    public func delete(_ key: ServiceKey) async throws {
        var next = table
        let slot: UInt32
        if unrestored.removeValue(forKey: key) != nil {
            try persist()
            return
        }
        do { slot = try next.remove(key) } catch {
            // A replayed delete (kube-loxilb retries, peers forward) is done already.
            if deleted.contains(key) { return }
            throw APIError.notFound("no-rule error: \(error.message)")
        }
        let old = table.services[key]
        let oldOptions = options[key]
        await datapath.uninstall(key, slot: slot)
        table = next
        options[key] = nil
        directory.remove(key)
        syncProbes(key)
        let before = deleted
        let sharedBefore = sharing
        remember(deleted: key)
        sharing?.recordLocal(key, spec: nil, nowMicros: wallClockMicros())
        do { try persist() } catch {
            deleted = before
            sharing = sharedBefore
            if let old { try? await install(old, options: oldOptions ?? ServiceOptions()) }
            throw error
        }
        ha?.servicesChanged()
        sharingShell?.changed()
        logger.info("service deleted", metadata: ["service": "\(key)"])
    }

    private func remember(deleted key: ServiceKey) {
        deleted.removeAll { $0 == key }
        deleted.append(key)
        // Forget the oldest deletes, but never a config-file service's (it would come back).
        while deleted.count > Self.maxRememberedDeletes, let i = deleted.firstIndex(where: { !configKeys.contains($0) }) {
            deleted.remove(at: i)
        }
    }

    /// A config reload (ConfigReload.swift): `keys` are the file's services now. A service the
    /// file dropped was removed by the file, not through the API, so it is not remembered as
    /// deleted: the file may list it again before the next restart, which must then create it.
    func configReloaded(keys: Set<ServiceKey>, dropped: [ServiceKey]) throws {
        configKeys = keys
        let before = deleted
        deleted.removeAll { dropped.contains($0) }
        if deleted != before { try persist() }
    }

    public func loadBalancers() async -> [LoadBalancerEntry] {
        let conns = Connection.join(datapath.connectionEntries())
        let timeouts = datapath.effectiveTimeouts(settings.timeouts)
        var active: [UInt32: Int] = [:]
        var activePerEndpoint: [UInt32: [UInt8: Int]] = [:]
        for c in conns where !c.isExpired(timeouts: timeouts)
            && c.original.state != .closed && c.original.state != .timeWait {
            active[c.original.serviceSlot, default: 0] += 1
            activePerEndpoint[c.original.serviceSlot, default: [:]][c.original.endpointIndex, default: 0] += 1
        }
        return table.sorted.map { slot, svc in
            let opts = options[svc.key] ?? ServiceOptions()
            var e = LoadBalancerEntry(service: svc, options: opts)
            let c = datapath.serviceCounters(slot: slot)
            e.counters = ServiceCountersBody(packets: c.packets, bytes: c.bytes, newConnections: c.newFlows,
                                             activeConnections: active[slot] ?? 0, deniedSources: c.denied)
            e.counters?.noEndpoint = c.noEndpoint
            let down = downIndices(svc)
            for i in e.endpoints.indices {
                let ec = datapath.endpointCounters(slot: slot, index: i)
                e.endpoints[i].state = down.contains(i) ? "inactive" : "active"
                e.endpoints[i].healthTransitions = probeSnapshot(svc.key, svc.endpoints[i]).map { UInt64($0.transitions) }
                e.endpoints[i].counter = "\(ec.packets):\(ec.bytes):\(activePerEndpoint[slot]?[UInt8(i)] ?? 0)"
            }
            return e
        }
    }

    public func conntrack() async -> [ConntrackEntry] {
        Connection.join(datapath.connectionEntries()).map { c in
            let o = c.original
            let svc = table.service(inSlot: o.serviceSlot)
            let name = svc.map { $0.name.isEmpty ? $0.key.description : $0.name } ?? "-"
            let act: String
            switch o.natMode {
            case .default: act = "dnat-\(o.translated.destination):\(o.translated.destinationPort)"
            case .onearm, .fullnat:
                act = "fsnat-\(o.translated.source),\(o.translated.sourcePort):\(o.translated.destination),\(o.translated.destinationPort)"
            }
            return ConntrackEntry(serviceName: name, destinationIP: o.key.destination.description,
                                  sourceIP: o.key.source.description, destinationPort: Int(o.key.destinationPort),
                                  sourcePort: Int(o.key.sourcePort),
                                  protocol_: o.key.proto == 6 ? "tcp" : o.key.proto == 17 ? "udp" : "\(o.key.proto)",
                                  conntrackState: o.state.description, conntrackAct: act, packets: c.packets,
                                  bytes: c.bytes, learnedFromPeer: o.flags.contains(.fromPeer))
        }
    }

    public func status() async -> [String: UInt64] {
        let s = datapath.stats()
        var out: [String: UInt64] = [
            "drop_no_endpoint": s.noEndpoint, "drop_no_port": s.noPort, "drop_table_full": s.tableFull,
            "events_lost": s.eventsLost, "icmp_replied": s.icmpReplied, "redirect_failed": s.redirectFailed,
            "expired_reused": s.expiredReused, "picked_up": s.pickedUp, "standby_passed": s.standbyPassed,
            "xdp_forwarded": s.xdpForwarded, "reaped": s.reaped, "reaped_halves": s.reapedHalves,
            "drop_source_denied": s.sourceDenied,
        ]
        let v = verdicts.counters
        out["verdicts_received"] = v.received
        out["verdicts_outdated"] = v.outdated
        out["verdicts_applied"] = verdictsApplied
        out["verdicts_host_states_merged"] = v.hostStatesMerged
        out["api_auth_refused"] = authCounters.refusedRequests
        for (k, v) in eventCounts { out["events_\(k)"] = v }
        for (k, v) in ringEventCounts() { out["events_\(k)", default: 0] += v }
        if let k = kernelTable { out.merge(k.counters()) { a, _ in a } }
        return out
    }

    func attach(ha shell: HAShell) {
        ha = shell
        // Who is MASTER decides whose verdicts the datapath follows; only peers' sets make it matter.
        if sharingShell != nil { startVerdictLoop() }
    }

    public func cluster() async -> HAStatus? {
        await ha?.status()
    }

    public func ciStates() async -> [CIStateEntry]? {
        guard let s = await ha?.status() else { return nil }
        return s.instances.map { CIStateEntry(instance: $0.name, state: $0.role, vip: $0.vips.first ?? "0.0.0.0") }
    }

    private var bgpAnnouncer: BGPAnnouncer?

    func attach(bgp announcer: BGPAnnouncer) {
        bgpAnnouncer = announcer
    }

    /// Per service VIP: whether a service on it has an endpoint in rotation (what BGP may announce).
    func servingVIPs() -> [IPv4Address: Bool] {
        var out: [IPv4Address: Bool] = [:]
        for svc in table.services.values {
            let up = downIndices(svc).count < svc.endpoints.count
            out[svc.key.vip] = (out[svc.key.vip] ?? false) || up
        }
        return out
    }

    public func bgp() async -> BGPStatus? {
        guard let a = bgpAnnouncer else { return nil }
        return await bgpStatus(a)
    }

    private func bgpStatus(_ a: BGPAnnouncer) async -> BGPStatus {
        var s = await a.speaker.status()
        s.draining = await a.isDraining
        s.newConnections = (ringEventCounts()["new"] ?? 0) + (eventCounts["new"] ?? 0)
        return s
    }

    public func drain(_ on: Bool) async throws -> BGPStatus {
        guard let a = bgpAnnouncer else {
            throw APIError.notFound("this node does not speak BGP (no bgp section in its config)")
        }
        logger.notice(on ? "drain: withdrawing every BGP announcement" : "drain ended: announcing again")
        await a.setDraining(on)
        return await bgpStatus(a)
    }

    /// Set by NodeRunner: asks the running node to exit (release or graceful restart).
    private var stopHandler: (@Sendable (Bool) -> Void)?

    func onStopRequest(_ handler: @escaping @Sendable (Bool) -> Void) {
        stopHandler = handler
    }

    public func stopNode(release: Bool) async throws {
        guard let stopHandler else { throw APIError.notFound("the node is not running") }
        logger.notice("stop requested through the API", metadata: ["release": "\(release)"])
        stopHandler(release)
    }

    public func setCIState(_ entry: CIStateEntry) async throws {
        guard let ha else { throw APIError.notFound("this node runs no election (no cluster peers, or cluster.election: false); replication is shown by tandem get sync") }
        do { try await ha.setExternal(instance: entry.instance, state: entry.state) } catch {
            throw APIError.badRequest(error.description)
        }
    }

    func attach(replication shell: FlowReplicationShell) {
        replication = shell
    }

    public func sync() async -> ReplicationStatus? {
        await replication?.status()
    }

    func attach(kernelSync: KernelTableSync) {
        kernelTable = kernelSync
    }

    public func kernelSync() async -> ReplicationStatus? {
        await kernelTable?.shell.status()
    }

    func record(_ event: ConnectionEvent) {
        eventCounts["\(event.kind)", default: 0] += 1
    }

    /// One pass of the periodic scan: deletes expired connections and reports them, and (when
    /// asked) hands the live ones to replication, which refreshes them on peers and notices
    /// silent deletes. Synchronous and nonisolated: it runs on the scanner's own low-priority
    /// thread, so a long pass over a big table never delays the datapath's event handling.
    /// The reap runs in the kernel where it can (its expiries arrive as ring-buffer events, like
    /// every other change); only a replication pass copies the table out.
    nonisolated func scan(replicateTo replication: FlowReplicationShell?, checkOrphans: Bool = true) -> [ConnectionEvent] {
        // Before any copy of the table: flows whose events the replication loop takes only
        // later are missing from the copy and must not be judged deleted.
        let readAt = FlowReplicationShell.clockMillis()
        // The node's timeouts with each service's own (inactiveTimeOut), as the datapath has them.
        let timeouts = datapath.effectiveTimeouts(settings.timeouts)
        var events: [ConnectionEvent] = []
        var entries: [ConnectionEntry]?
        var gone = Set<FlowTuple>()
        var reaped = false
        if replication != nil {
            // One walk for both. The entries were read before the kernel reaped: the expired
            // connections among them are dropped below by the same rule.
            if let pass = datapath.reapInKernelCollecting(checkOrphans: checkOrphans) {
                entries = pass.entries
                reaped = true
            }
        } else {
            reaped = datapath.reapInKernel(checkOrphans: checkOrphans) != nil
        }
        if !reaped {
            let all = datapath.connectionEntries()
            let (delete, expired) = ConnectionReaper(timeouts: timeouts).expired(in: all)
            for k in delete { datapath.deleteEntry(k) }
            events = expired
            gone = Set(delete)
            entries = all
        }
        if let replication {
            let live = Connection.join(entries ?? datapath.connectionEntries(), sorted: false)
                .filter { !gone.contains($0.original.key) && !$0.isExpired(timeouts: timeouts) }
                .map { (record: FlowRecord(connection: $0, timeouts: timeouts), fromPeer: $0.original.flags.contains(.fromPeer)) }
            replication.submit(scan: live, readAtMillis: readAt)
        }
        return events
    }

    func record(expired events: [ConnectionEvent]) {
        for e in events { record(e) }
    }
}

// MARK: - Endpoint health verdicts

/// What one service's datapath holds: the down set written, where it came from, and when.
struct AppliedVerdict: Sendable, Equatable {
    var verdict: EffectiveVerdict
    /// Wall clock µs of the last write that changed the down set.
    var atMicros: UInt64
}

extension NodeController {
    /// Indices of the service's endpoints out of rotation: the verdict in force (the MASTER's
    /// published set, or this node's own probes and red hosts). Unknown (not probed yet) counts
    /// as up, so a restart is not an outage.
    func downIndices(_ service: Service) -> Set<Int> {
        let down = effectiveVerdict(service).downSet
        return Set(service.endpoints.indices.filter { down.contains(EndpointRef(service.endpoints[$0])) })
    }

    func effectiveVerdict(_ service: Service) -> EffectiveVerdict {
        verdicts.effective(service.key, endpoints: service.endpoints.map(EndpointRef.init),
                           master: masters[service.key.vip], nowNanos: monotonicNanoseconds())
    }

    func attach(health monitor: HealthMonitor) {
        health = monitor
    }

    /// The probe a monitored service's endpoints get (nil: not monitored). LoxiLB's fields, with
    /// Tandem's measured timing where they leave it open (docs/health.md).
    static func probeSpec(_ service: Service, _ opts: ServiceOptions) throws(ProbeSpecError) -> ProbeSpec? {
        guard opts.monitor else { return nil }
        let p = opts.probe
        if let text = p.spec, !text.isEmpty {
            // Tandem's syntax says what to probe; LoxiLB's period and retries, when set, the timing.
            let timing = try ProbeSpec.fromLoxiLB(probetype: "none", probeport: 0, probereq: "", proberesp: "",
                                                  probeTimeout: Int(p.timeoutSeconds), probeRetries: Int(p.retries),
                                                  serviceProtocol: service.key.proto.description).timing
            var spec = try ProbeSpec.parse(text)
            if p.timeoutSeconds != 0 { spec.timing.interval = timing.interval; spec.timing.timeout = min(spec.timing.timeout, timing.interval) }
            if p.retries != 0 { spec.timing.failuresToDown = timing.failuresToDown }
            return spec
        }
        return try ProbeSpec.fromLoxiLB(probetype: p.kind?.rawValue, probeport: Int(p.port), probereq: p.request,
                                        proberesp: p.response, probeTimeout: Int(p.timeoutSeconds),
                                        probeRetries: Int(p.retries), serviceProtocol: service.key.proto.description)
    }

    fileprivate func checkProbe(_ service: Service, _ opts: ServiceOptions) throws {
        do { _ = try Self.probeSpec(service, opts) } catch {
            throw APIError.badRequest("probe: \(error.description)")
        }
    }

    /// Registers with the monitor exactly the endpoints of `key` that must be probed now, and
    /// tells the verdict table what the node serves.
    fileprivate func syncProbes(_ key: ServiceKey) {
        if table.services[key] == nil { applied[key] = nil }
        defer { servedChanged() }
        guard let health else { return }
        let want = table.services[key].map { probeTargets($0, options: options[key] ?? ServiceOptions()) } ?? [:]
        let have = probed[key] ?? []
        for id in have where want[id] == nil { health.remove(id) }
        for (id, target) in want {
            // Unchanged targets keep their state; add() replaces a changed one and restarts it.
            if have.contains(id), health.snapshot(of: id)?.target == target { continue }
            do { try health.add(target, startingDown: startingDown.remove(id) != nil) } catch {
                logger.error("endpoint not probed", metadata: ["endpoint": "\(id)", "error": "\(error)"])
            }
        }
        probed[key] = want.isEmpty ? nil : Set(want.keys)
        // Verdicts about endpoints no longer probed are forgotten.
        let now = wallClockMicros()
        for ep in verdicts.probeDown[key]?.keys.map({ $0 }) ?? [] where want[Self.probeID(key, ep.description)] == nil {
            verdicts.setProbe(key, ep, down: false, atMicros: now, nowMicros: now)
        }
    }

    /// The monitor's id of one endpoint of one service ("key|ip:port"; `healthChanged` splits it).
    static func probeID(_ key: ServiceKey, _ identity: String) -> EndpointID { EndpointID("\(key)|\(identity)") }

    /// The probes a service's endpoints get (none if it is not monitored).
    private func probeTargets(_ svc: Service, options opts: ServiceOptions) -> [EndpointID: ProbeTarget] {
        guard let spec = try? Self.probeSpec(svc, opts) else { return [:] }
        var want: [EndpointID: ProbeTarget] = [:]
        for ep in svc.endpoints {
            let id = Self.probeID(svc.key, ep.identity)
            // LoxiLB: an endpoint object under the endpoint's key supplies its probe.
            let governed = endpointObjects[EndpointObject.ruleKey(ep, proto: svc.key.proto)].flatMap { try? Self.probeSpec($0) }
            want[id] = ProbeTarget(id: id, address: ep.ip.description, port: ep.port, spec: governed ?? spec)
        }
        return want
    }

    /// On a restore onto an adopted datapath: records as probe-down the probed endpoints of
    /// `service` that the previous run held down, before the install computes its down set, and
    /// marks their probes to start from down. So no new connection reaches them in the gap.
    fileprivate func holdDownAdopted(_ service: Service, options opts: ServiceOptions) {
        guard health != nil, let held = heldDown[service.key] else { return }
        let targets = probeTargets(service, options: opts)
        let now = wallClockMicros()
        var kept: [String] = []
        for ep in service.endpoints where held.contains(ep.identity) {
            let id = Self.probeID(service.key, ep.identity)
            // Kind none has no probe that could bring it back: it follows its verdicts alone.
            guard let t = targets[id], t.spec.kind != .none else { continue }
            _ = verdicts.setProbe(service.key, EndpointRef(ep), down: true, atMicros: now, nowMicros: now)
            startingDown.insert(id)
            kept.append(ep.identity)
        }
        if !kept.isEmpty {
            logger.notice("endpoints the previous run held down stay down until their probes pass",
                          metadata: ["service": "\(service.key)", "endpoints": "\(kept.sorted().joined(separator: ","))"])
        }
    }

    /// Undoes `holdDownAdopted` for a service whose install failed.
    fileprivate func forgetHeldDown(_ service: Service) {
        let now = wallClockMicros()
        for ep in service.endpoints {
            let id = Self.probeID(service.key, ep.identity)
            guard startingDown.remove(id) != nil else { continue }
            _ = verdicts.setProbe(service.key, EndpointRef(ep), down: false, atMicros: now, nowMicros: now)
        }
    }

    /// The services and endpoints the node serves, for the set it publishes.
    private func servedChanged() {
        let served = table.services.mapValues { $0.endpoints.map(EndpointRef.init) }
        verdicts.setServed(served, nowMicros: wallClockMicros())
    }

    /// A probe verdict changed: published to peers at once, and the datapath follows the verdict
    /// in force.
    func healthChanged(_ t: HealthTransition) async {
        let parts = t.endpoint.rawValue.split(separator: "|", maxSplits: 1).map(String.init)
        guard parts.count == 2, let key = ServiceKey(text: parts[0]), let svc = table.services[key],
              probed[key]?.contains(t.endpoint) == true,
              let ep = svc.endpoints.first(where: { $0.identity == parts[1] }) else { return }
        let now = wallClockMicros()
        // The transition's own time, in the wall clock peers compare.
        let ago = ContinuousClock.now - t.at
        let agoMicros = UInt64(max(0, ago.components.seconds)) * 1_000_000 + UInt64(max(0, ago.components.attoseconds)) / 1_000_000_000_000
        if verdicts.setProbe(key, EndpointRef(ep), down: t.to == .down, atMicros: now &- min(agoMicros, now), nowMicros: now) {
            sharingShell?.changed()
        }
        await refreshVerdicts([key])
        let inForce = applied[key].map { Self.describe($0.verdict.source) } ?? "own"
        logger.notice("endpoint probe verdict", metadata: ["service": "\(key)", "endpoint": "\(parts[1])", "from": "\(t.from)",
                                                           "to": "\(t.to)", "reason": "\(t.reason)", "inForce": "\(inForce)"])
    }

    static func describe(_ source: VerdictSource) -> String {
        switch source {
        case .own: "own"
        case .peer(let id): "\(IPv4Address(id))"
        }
    }

    /// Writes the verdict in force of these services (all when nil) to the datapath where it
    /// differs from what the datapath holds. Logs every change, naming the peer whose verdict it was.
    ///
    /// One refresh runs at a time: the datapath writes suspend the actor, and two interleaved
    /// refreshes could leave an older down set in the map than the one recorded. A refresh asked
    /// for while one runs makes the running one go over every service again when it is done.
    func refreshVerdicts(_ keys: [ServiceKey]? = nil) async {
        guard !refreshing else {
            refreshAgain = true
            return
        }
        refreshing = true
        defer { refreshing = false }
        var scope = keys
        repeat {
            refreshAgain = false
            await refreshOnce(scope)
            scope = nil
        } while refreshAgain
    }

    private func refreshOnce(_ keys: [ServiceKey]?) async {
        let nowMicros = wallClockMicros()
        for key in keys ?? table.services.keys.sorted() {
            guard let svc = table.services[key] else {
                applied[key] = nil
                continue
            }
            let eff = effectiveVerdict(svc)
            let before = applied[key]
            if let before, before.verdict == eff { continue }
            let changed = before?.verdict.downSet != eff.downSet
            if changed {
                let down = svc.endpoints.filter { eff.down[EndpointRef($0)] != nil }
                do { try await datapath.setDownEndpoints(key, down) } catch {
                    logger.error("endpoint states not written to the datapath", metadata: ["service": "\(key)", "error": "\(error)"])
                    continue
                }
            }
            applied[key] = AppliedVerdict(verdict: eff, atMicros: changed ? nowMicros : before?.atMicros ?? nowMicros)
            guard let before else { continue }
            let downText = eff.downSet.sorted().map(\.description).joined(separator: ",")
            if changed {
                var meta: Logger.Metadata = ["service": "\(key)", "down": "\(downText.isEmpty ? "none" : downText)",
                                             "from": "\(Self.describe(eff.source))"]
                if case .peer = eff.source {
                    verdictsApplied &+= 1
                    let own = verdicts.ownDown(key, endpoints: svc.endpoints.map(EndpointRef.init)).keys.sorted()
                    meta["own"] = "\(own.isEmpty ? "none" : own.map(\.description).joined(separator: ","))"
                    logger.notice("a peer's endpoint verdict changed this node's datapath", metadata: meta)
                } else {
                    logger.notice("endpoints in rotation changed", metadata: meta)
                }
            } else if before.verdict.source != eff.source {
                logger.info("endpoint verdicts now follow \(Self.describe(eff.source))",
                            metadata: ["service": "\(key)", "down": "\(downText.isEmpty ? "none" : downText)"])
            }
        }
    }

    /// Follows the election every 250 ms: a new MASTER (or this node taking over) switches whose
    /// verdicts the datapath uses, and a MASTER's set that stops arriving goes stale.
    func startVerdictLoop() {
        guard verdictLoop == nil else { return }
        verdictLoop = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(250))
                guard let self, !Task.isCancelled else { return }
                await self.verdictTick()
            }
        }
    }

    /// Stops following the election (before the HA shell stops).
    public func stopVerdictLoop() {
        verdictLoop?.cancel()
        verdictLoop = nil
    }

    func verdictTick() async {
        let now = await ha?.mastersByVIP() ?? [:]
        if now != masters {
            let text = Set(now.values).sorted().map { "\(IPv4Address($0))" }.joined(separator: ",")
            logger.info("verdicts: MASTER changed", metadata: ["masters": "\(text.isEmpty ? "none" : text)"])
            masters = now
        }
        await refreshVerdicts()
    }

    /// `get ep`: every endpoint of every rule with its probe and, when probed, its state, last
    /// probe result and times, beside the verdict in force in the datapath and its source.
    public func endpointHosts() async -> [EndpointHostEntry] {
        var out: [EndpointHostEntry] = []
        let wallNow = wallClockMicros()
        for (_, svc) in table.sorted {
            let listed = EndpointHostEntry.from([LoadBalancerEntry(service: svc, options: options[svc.key] ?? ServiceOptions())])
            let inForce = applied[svc.key] ?? AppliedVerdict(verdict: effectiveVerdict(svc), atMicros: 0)
            for (i, var e) in listed.enumerated() where i < svc.endpoints.count {
                let ep = svc.endpoints[i]
                let snap = probeSnapshot(svc.key, ep)
                let red = verdicts.hosts[ep.ip]?.state == .red
                e.currState = red ? "inactive (host red)" : snap.map { $0.state.rawValue } ?? "active"
                if let snap {
                    e.lastProbe = snap.lastResult.map { ($0.success ? "ok" : "failed") + ": " + $0.detail }
                    e.lastProbeSecondsAgo = snap.sinceLastProbe.map { Double($0.components.seconds) + Double($0.components.attoseconds) / 1e18 }
                    e.stateSeconds = snap.sinceChange.map { Double($0.components.seconds) + Double($0.components.attoseconds) / 1e18 }
                    if let since = snap.sinceChange {
                        let micros = UInt64(max(0, since.components.seconds)) * 1_000_000
                            + UInt64(max(0, since.components.attoseconds)) / 1_000_000_000_000
                        e.stateChangedAtUnixMicros = wallNow &- min(micros, wallNow)
                    }
                    if let l = snap.lastResult?.latency {
                        e.avgDelay = String(format: "%.1fms", Double(l.components.attoseconds) / 1e15 + Double(l.components.seconds) * 1000)
                    }
                }
                if options[svc.key]?.monitor == true, let o = endpointObjects[EndpointObject.ruleKey(ep, proto: svc.key.proto)] {
                    e.probeObject = o.key
                    e.probeType = o.probeType
                    e.probeReq = o.probeReq
                    e.probeResp = o.probeResp
                    e.probeDuration = Int(o.probeDuration)
                    e.inactiveReTries = Int(o.inactiveReTries)
                    if o.probePort != 0 { e.probePort = Int(o.probePort) }
                }
                let down = inForce.verdict.down[EndpointRef(ep)]
                e.verdict = down == nil ? "up" : "down"
                e.verdictFrom = Self.describe(inForce.verdict.source)
                e.verdictSinceUnixMicros = down?.sinceMicros
                e.verdictAppliedUnixMicros = inForce.atMicros == 0 ? nil : inForce.atMicros
                out.append(e)
            }
        }
        // LoxiLB lists its endpoint objects beside the hosts its rules made; so does Tandem.
        for key in endpointObjects.keys.sorted() {
            guard let o = endpointObjects[key] else { continue }
            let snap = health?.snapshot(of: Self.objectProbeID(key))
            var e = EndpointHostEntry(hostName: o.host.description, name: o.key, inactiveReTries: Int(o.inactiveReTries),
                                      probeType: o.probeType, probeReq: o.probeReq, probeResp: o.probeResp,
                                      probeDuration: Int(o.probeDuration), probePort: Int(o.probePort),
                                      currState: snap.map { $0.state.rawValue } ?? "unknown")
            e.probeObject = o.key
            e.lastProbe = snap?.lastResult.map { ($0.success ? "ok" : "failed") + ": " + $0.detail }
            e.lastProbeSecondsAgo = snap?.sinceLastProbe.map { Double($0.components.seconds) + Double($0.components.attoseconds) / 1e18 }
            e.stateSeconds = snap?.sinceChange.map { Double($0.components.seconds) + Double($0.components.attoseconds) / 1e18 }
            out.append(e)
        }
        return out
    }

    // MARK: Endpoint objects (LoxiLB's POST config/endpoint)

    /// The probe an object asks for, with LoxiLB's field meanings (docs/api.md).
    static func probeSpec(_ o: EndpointObject) throws(ProbeSpecError) -> ProbeSpec {
        try ProbeSpec.fromLoxiLB(probetype: o.probeType, probeport: Int(o.probePort), probereq: o.probeReq,
                                 proberesp: o.probeResp, probeTimeout: Int(o.probeDuration),
                                 probeRetries: Int(o.inactiveReTries), serviceProtocol: o.probeType == "udp" ? "udp" : "tcp")
    }

    static func objectProbeID(_ key: String) -> EndpointID { EndpointID("object|\(key)") }

    /// An object is probed on its own too, as LoxiLB does, so its state is listed.
    private func syncObjectProbe(_ key: String) {
        guard let health else { return }
        let id = Self.objectProbeID(key)
        guard let o = endpointObjects[key], let spec = try? Self.probeSpec(o) else {
            health.remove(id)
            return
        }
        let target = ProbeTarget(id: id, address: o.host.description, port: o.probePort, spec: spec)
        if health.snapshot(of: id)?.target == target { return }
        do { try health.add(target) } catch {
            logger.error("endpoint object not probed", metadata: ["object": "\(key)", "error": "\(error)"])
        }
    }

    /// Re-registers the probes of every service with an endpoint at these hosts.
    private func resyncProbes(hosts: Set<IPv4Address>) {
        for (key, svc) in table.services where svc.endpoints.contains(where: { hosts.contains($0.ip) }) { syncProbes(key) }
    }

    public func setEndpointObject(_ o: EndpointObject) async throws {
        do { _ = try Self.probeSpec(o) } catch { throw APIError.badRequest("host-args error: \(error.description)") }
        let before = endpointObjects[o.key]
        // The same object again (LoxiLB clients re-post): a success that changes nothing.
        if before == o { return }
        guard before != nil || endpointObjects.count < EndpointObject.limit else {
            throw APIError(.forbidden, "capacity: this node keeps at most \(EndpointObject.limit) endpoint objects")
        }
        endpointObjects[o.key] = o
        do { try persist() } catch {
            endpointObjects[o.key] = before
            throw error
        }
        syncObjectProbe(o.key)
        resyncProbes(hosts: Set([o.host] + (before.map { [$0.host] } ?? [])))
        logger.info("endpoint object \(before == nil ? "created" : "replaced")",
                    metadata: ["object": "\(o.key)", "host": "\(o.host)", "probe": "\(o.probeType)", "port": "\(o.probePort)"])
    }

    public func deleteEndpointObject(key: String) async throws {
        guard let o = endpointObjects.removeValue(forKey: key) else {
            throw APIError.notFound("host-notfound error: no endpoint object '\(key)'")
        }
        do { try persist() } catch {
            endpointObjects[key] = o
            throw error
        }
        syncObjectProbe(key)
        resyncProbes(hosts: [o.host])
        logger.info("endpoint object deleted", metadata: ["object": "\(key)"])
    }

    /// Probe state of one endpoint, for the API's listings.
    func probeSnapshot(_ key: ServiceKey, _ ep: Endpoint) -> EndpointSnapshot? {
        health?.snapshot(of: Self.probeID(key, ep.identity))
    }

    public func setEndpointHostState(_ entry: EndpointHostStateEntry) async throws {
        guard let ip = IPv4Address(entry.hostName) else {
            throw APIError.badRequest("hostName '\(entry.hostName)' is not an IPv4 address")
        }
        guard let state = HostVerdictState(name: entry.state) else {
            throw APIError.badRequest("state '\(entry.state)' is not green, yellow or red")
        }
        guard table.services.values.contains(where: { $0.endpoints.contains { $0.ip == ip } }) else {
            throw APIError.notFound("no rule has an endpoint at \(ip)")
        }
        let before = verdicts.hosts[ip]
        // The same state again is not a new write: nodes posted the same verdict agree.
        if before?.state == state { return }
        let saved = verdicts
        verdicts.setHostLocal(ip, state, nowMicros: wallClockMicros())
        do { try persist() } catch {
            verdicts = saved
            throw error
        }
        sharingShell?.changed()
        await refreshVerdicts()
        logger.notice("endpoint host state set from outside", metadata: ["host": "\(ip)", "from": "\(before?.state.name ?? "none")",
                                                                      "to": "\(state.name)"])
    }
}

// MARK: - Service sharing (proto/SPEC.md §14)

extension NodeController: ServiceSyncTarget {
    /// Turns sharing on; call before `restore`, which seeds the shared table.
    func enableSharing(selfID: UInt32) {
        sharing = ServiceSyncCore(selfID: selfID)
        verdicts = ClusterVerdicts(selfID: selfID)
    }

    public func serviceSyncVerdicts() async -> VerdictSet {
        verdicts.published()
    }

    /// A peer's verdict set: host states it knows are merged (and kept), and every service's
    /// datapath follows the verdict in force.
    public func serviceSyncReceive(_ set: VerdictSet, from peer: UInt32, epoch: UInt64) async {
        let outcome = verdicts.receive(set, from: peer, epoch: epoch, nowNanos: monotonicNanoseconds(),
                                       nowMicros: wallClockMicros())
        guard case .accepted(let hostsChanged) = outcome else { return }
        if !hostsChanged.isEmpty {
            try? persist()
            for h in hostsChanged {
                logger.notice("endpoint host state learned from peer",
                              metadata: ["host": "\(h)", "to": "\(verdicts.hosts[h]?.state.name ?? "-")", "peer": "\(IPv4Address(peer))"])
            }
            // This node's own set changed with them: peers that hear from it first learn it sooner.
            sharingShell?.changed()
        }
        await refreshVerdicts()
    }

    func attach(sharing shell: ServiceSyncShell) {
        sharingShell = shell
    }

    public func serviceSyncDigest() async -> ServiceDigest {
        sharing?.digest() ?? ServiceDigest(count: 0, digest: 0, maxVersion: 0)
    }

    public func serviceSyncRecords() async -> [ServiceRecord] {
        sharing?.records() ?? []
    }

    public func serviceSyncMerge(_ records: [ServiceRecord], peerMaxVersion: UInt64, from peer: UInt32) async {
        guard sharing != nil else { return }
        let now = wallClockMicros()
        sharing?.observe(maxVersion: peerMaxVersion)
        sharing?.expireTombstones(nowMicros: now)
        let actions = sharing?.merge(records, nowMicros: now) ?? []
        var changed = false
        for action in actions {
            switch action {
            case .apply(let record):
                // A local write may have superseded it while an earlier action awaited.
                guard sharing?.held[record.key]?.record == record else { continue }
                let ok = await applyShared(record, from: peer)
                sharing?.applied(record, ok: ok)
                changed = true
            case .remove(let key):
                await removeShared(key, from: peer)
                changed = true
            }
        }
        if changed || !records.isEmpty {
            // What was merged must survive a restart; a failed write is retried with the next merge.
            try? persist()
        }
    }

    /// Installs or replaces a peer's service as it is, without a new version.
    private func applyShared(_ record: ServiceRecord, from peer: UInt32) async -> Bool {
        guard let spec = record.spec else { return false }
        let request: LoadBalancerRequest
        do {
            let entry = try JSONDecoder().decode(LoadBalancerEntry.self, from: Data(spec))
            request = try entry.toRequest()
        } catch {
            sharingRefused &+= 1
            logger.warning("shared service refused: its spec does not validate",
                           metadata: ["service": "\(record.key)", "peer": "\(IPv4Address(peer))", "error": "\(error)"])
            return false
        }
        guard request.service.key == record.key else {
            sharingRefused &+= 1
            logger.warning("shared service refused: its spec names another key",
                           metadata: ["service": "\(record.key)", "spec": "\(request.service.key)"])
            return false
        }
        let key = record.key
        do {
            if let old = table.services[key] {
                if old == request.service && options[key] == request.options { return true }
                try await replace(request.service, options: request.options)
            } else {
                try await install(request.service, options: request.options)
            }
        } catch {
            logger.warning("shared service not applied on this node",
                           metadata: ["service": "\(key)", "peer": "\(IPv4Address(peer))", "error": "\(error)"])
            return false
        }
        deleted.removeAll { $0 == key }
        unrestored[key] = nil
        logger.info("service shared from peer", metadata: ["service": "\(key)", "peer": "\(IPv4Address(peer))",
                                                           "version": "\(record.version)"])
        return true
    }

    /// Removes a service a peer deleted.
    private func removeShared(_ key: ServiceKey, from peer: UInt32) async {
        unrestored[key] = nil
        var next = table
        guard let slot = try? next.remove(key) else {
            remember(deleted: key)
            return
        }
        await datapath.uninstall(key, slot: slot)
        table = next
        options[key] = nil
        directory.remove(key)
        syncProbes(key)
        remember(deleted: key)
        ha?.servicesChanged()
        logger.info("service deleted by peer", metadata: ["service": "\(key)", "peer": "\(IPv4Address(peer))"])
    }

    public func serviceSync() async -> ServiceSyncStatus? {
        guard let sharing, let shell = sharingShell else { return nil }
        let stones = sharing.held.values.filter { $0.record.spec == nil }.count
        var status = shell.status(selfDigest: sharing.digest(), tombstones: stones, counters: sharing.counters,
                                  refused: sharingRefused)
        let now = monotonicNanoseconds()
        status.verdicts = VerdictStatus(
            generation: verdicts.generation, counters: verdicts.counters, applied: verdictsApplied,
            peers: verdicts.peers.sorted { $0.key < $1.key }.map { id, p in
                VerdictStatus.Peer(node: id, address: "\(IPv4Address(id))", generation: p.generation,
                                   receivedSecondsAgo: Double(now &- min(p.receivedAtNanos, now)) / 1e9,
                                   down: p.services.values.reduce(0) { $0 + $1.count }, fresh: verdicts.isFresh(id, nowNanos: now))
            })
        return status
    }
}
