import Foundation
import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import TandemCloud
import TandemCore
import TandemElection
import TandemMembership
import TandemSyncWire

#if canImport(Glibc)
import Glibc
import TandemSealing
import TandemShellSupport
import TandemStatus
#endif

/// The HA shell: one SwiftNIO event loop carries SWIM probes and election adverts over UDP
/// (sealed with the cluster key on the gossip channel), runs the pure cores on a 10 ms tick, and
/// carries out their decisions: the datapath's VIP gate at once, the cloud provider's moves on a
/// serial queue off the loop (an API call must never delay a probe).
public final class HAShell: @unchecked Sendable {
    // Everything below `loop` is touched only on `loop` (one thread); the entry points assert it
    // (`assertInEventLoop`, checked in debug builds, so the tests catch a stray caller).
    public let config: HAShellConfig
    private let group: MultiThreadedEventLoopGroup
    private let loop: EventLoop
    private let hooks: HAHooks
    private let provider: any CloudProvider
    private let logger: Logger
    private var swim: SWIM
    private var elections: [Election]
    private var sealer: SyncSealer
    private var opener: SyncOpener
    /// Lazy only because its bind closure needs `self`; first touched by `start`, before the loop
    /// runs anything of this shell.
    private lazy var udp = RebindingDatagramSocket(name: "gossip", loop: loop, logger: logger) { [weak self, group, config] in
        DatagramBootstrap(group: group)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(GossipHandler(shell: self))
                }
            }
            .bind(host: "\(config.bindAddress)", port: Int(config.port))
    }
    private var timer: RepeatedTask?
    private var peerAddresses: [UInt32: SocketAddress] = [:]
    private var records: [InstanceRecord]
    private var lastInSync: Bool?
    private var activeVIPs: Set<IPv4Address> = []
    private var counters: [String: UInt64] = [:]
    private var authWarnings = WarningLimiter()
    private var peerAdverts: [UInt32: [UInt32: InstanceAdvert]] = [:]
    /// When each member's status last changed (wall clock ms), for the status and the failover test.
    private var memberChangedAt: [UInt32: UInt64] = [:]
    private let jobs: AsyncStream<Job>.Continuation
    private let jobStream: AsyncStream<Job>
    private var runner: Task<Void, Never>?
    /// The provider call of a takeover in progress, by instance, so a node that loses the term
    /// while it runs can cancel it: left to finish, it would pull the floating IP away from the
    /// node that won (seen: both nodes MASTER at start, the loser's OCI move landing last).
    private let takeoversInFlight = NIOLockedValueBox([Int: (term: UInt64, task: Task<CloudTakeoverResult, Error>)]())
    private let stoppedBox = NIOLockedValueBox(false)
    private let started = ContinuousClock.now

    private enum Job: Sendable {
        case takeover(instance: Int, vips: [IPv4Address], term: UInt64)
        case release(vips: [IPv4Address])
    }

    /// What the status shows per instance beyond the election's own state.
    private struct InstanceRecord {
        var transitions: [HAStatus.Transition] = []
        var takeovers: UInt64 = 0
        var takeoverFailures: UInt64 = 0
        var lastTakeoverAt: UInt64?
        var lastTakeoverMs: Double?
        var lastPrepareMs: Double?
        var lastTakeoverDetail: String?
        var lastError: String?
    }

    /// `resume`: what the previous life of this daemon left at a graceful restart; its MASTER
    /// instances resume without an election or a takeover, and the incarnation goes above it.
    public init(config: HAShellConfig, hooks: HAHooks, provider: any CloudProvider, logger: Logger,
                resume: GracefulExitRecord? = nil) {
        self.config = config
        self.hooks = hooks
        self.provider = provider
        self.logger = logger
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        loop = group.next()
        let now = monotonicNanoseconds()
        let epoch = wallClockMicros()
        // A restarted node must out-rank what the cluster remembers of its previous life, so its
        // first incarnation is the boot time in seconds.
        var incarnation = UInt32(truncatingIfNeeded: epoch / 1_000_000)
        if let r = resume, r.incarnation >= incarnation, r.incarnation < .max { incarnation = r.incarnation + 1 }
        let peerIDs = config.peers.map(\.id)
        swim = SWIM(selfID: config.selfID, peers: peerIDs, incarnation: incarnation, settings: config.swim,
                    seed: epoch ^ UInt64(config.selfID), nowNanos: now)
        elections = config.instances.map { instance in
            var settings = config.election
            settings.instanceName = instance.name
            settings.priority = instance.priority
            return Election(selfID: config.selfID, peers: peerIDs, settings: settings, nowNanos: now)
        }
        if let r = resume {
            var resumed = elections
            for i in resumed.indices {
                let id = resumed[i].instance
                guard let x = r.instances.first(where: { $0.id == id }) else { continue }
                resumed[i].resume(term: x.term, asMaster: x.master, nowNanos: now)
            }
            elections = resumed
        }
        records = config.instances.map { _ in InstanceRecord() }
        sealer = SyncSealer(key: config.key, sender: config.selfID, epoch: epoch)
        opener = SyncOpener(key: config.key, selfID: config.selfID, members: Set(peerIDs))
        (jobStream, jobs) = AsyncStream.makeStream(of: Job.self)
    }

    // MARK: Lifecycle

    public func start() async throws {
        try await udp.start()
        let realtime = config.realtime
        let priorityNote: String = try await loop.submit { [self] in
            let note = realtime ? Self.raiseThreadPriority() : "normal"
            for p in config.peers {
                peerAddresses[p.id] = try SocketAddress(ipAddress: "\(p.address)", port: Int(config.port))
            }
            // Until elected, this node answers for nothing, and whatever a crashed earlier run left
            // configured (an l2 address) is released; a MASTER resumed after a graceful restart
            // keeps answering for its VIPs, which never moved.
            applyGate()
            for (i, e) in elections.enumerated() where e.role == .master {
                self.note(i, to: "MASTER", term: e.term, reason: "resumed after a graceful restart")
                logger.notice("resumed MASTER after a graceful restart", metadata: [
                    "instance": "\(config.instances[i].name)", "term": "\(e.term)",
                    "vips": "\(sortedVIPs(of: i).map(\.description).joined(separator: ","))"])
            }
            let stale = config.instances.indices.flatMap { sortedVIPs(of: $0) }.filter { !activeVIPs.contains($0) }
            if !stale.isEmpty { jobs.yield(.release(vips: stale)) }
            swim.localAdverts = elections.map(\.advert)
            timer = loop.scheduleRepeatedTask(initialDelay: .milliseconds(10), delay: .nanoseconds(Int64(config.swim.tickNanos))) {
                [weak self] _ in self?.tick()
            }
            return note
        }.get()
        let provider = self.provider
        let stream = jobStream
        runner = Task { [weak self] in
            for await job in stream {
                await Self.run(job, provider: provider, shell: self)
            }
        }
        logger.info("cluster membership started", metadata: [
            "node": "\(config.selfID)", "gossip": "\(config.bindAddress):\(config.port)",
            "peers": "\(config.peers.map { "\($0.id)@\($0.address)" }.joined(separator: ","))",
            "instances": "\(config.instances.map(\.name).joined(separator: ","))", "provider": "\(provider.name)",
            "scheduling": "\(priorityNote)",
        ])
    }

    /// Leaves the cluster (peers elect at once instead of waiting for detection), stops answering
    /// for every VIP and releases them. Idempotent.
    ///
    /// With `restarting` (a graceful restart of a daemon whose datapath stays pinned and running):
    /// announces `restarting` instead, so peers hold their fire for their restart hold, and keeps
    /// the VIP gate and the floating IPs as they are. Returns what the next life resumes.
    @discardableResult
    public func stop(restarting: Bool = false) async -> GracefulExitRecord? {
        let first = stoppedBox.withLockedValue { stopped -> Bool in
            defer { stopped = true }
            return !stopped
        }
        guard first else { return nil }
        // A leaving node's move still in flight would land after a peer has taken over.
        if !restarting { takeoversInFlight.withLockedValue { for (_, t) in $0 { t.task.cancel() } } }
        let (released, resume): ([IPv4Address], GracefulExitRecord?) = (try? await loop.submit { [self] () -> ([IPv4Address], GracefulExitRecord?) in
            timer?.cancel()
            timer = nil
            if restarting {
                // Three copies each: the process is gone before a lost one could be noticed.
                perform(swim.leave(restarting: true, copies: 3))
                let r = GracefulExitRecord(exitedAtMicros: wallClockMicros(), incarnation: swim.incarnation, instances: elections.map {
                    GracefulExitRecord.Instance(id: $0.instance, master: $0.role == .master, term: $0.term)
                })
                return ([], r)
            }
            perform(swim.leave())
            let owned = Array(activeVIPs)
            activeVIPs = []
            try? hooks.setActiveVIPs([])
            return (owned, nil)
        }.get()) ?? ([], nil)
        jobs.finish()
        await runner?.value
        if !released.isEmpty { await provider.release(vips: released) }
        let channel = try? await loop.submit { [self] in udp.stop() }.get()
        try? await channel?.close()
        try? await group.shutdownGracefully()
        logger.info("cluster membership stopped", metadata: ["released": "\(released.map(\.description).joined(separator: ","))",
                                                             "restarting": "\(restarting)"])
        return resume
    }

    // MARK: Queries and control (any thread)

    public func status() async -> HAStatus? {
        try? await loop.submit { [self] in makeStatus() }.get()
    }

    /// The MASTER of each VIP as this node's elections see it (VIPs without one are absent). What
    /// the verdict loop polls: much less than `status()` for the loop that runs the gossip.
    public func mastersByVIP() async -> [IPv4Address: UInt32] {
        (try? await loop.submit { [self] () -> [IPv4Address: UInt32] in
            var out: [IPv4Address: UInt32] = [:]
            for (i, e) in elections.enumerated() {
                guard let m = e.masterID else { continue }
                for v in vips(of: i) { out[v] = m }
            }
            return out
        }.get()) ?? [:]
    }

    /// cistate: sets an instance's role from outside (kube-loxilb). MASTER claims a new term at
    /// once; BACKUP steps down and stays out of the election until a later MASTER.
    public func setExternal(instance name: String, state: String) async throws(HAControlError) {
        let role: HARole
        switch state.uppercased() {
        case "MASTER": role = .master
        case "BACKUP": role = .backup
        default: throw HAControlError("state '\(state)' is not MASTER or BACKUP")
        }
        let result: Result<Void, HAControlError> = (try? await loop.submit { [self] () -> Result<Void, HAControlError> in
            guard let i = config.instances.firstIndex(where: { $0.name == name }) else {
                let known = config.instances.map(\.name).joined(separator: ", ")
                return .failure(HAControlError("no HA instance '\(name)' (this node has: \(known))"))
            }
            let now = monotonicNanoseconds()
            handle(elections[i].onExternal(role, nowNanos: now), instance: i)
            swim.localAdverts = elections.map(\.advert)
            logger.notice("role set from outside (cistate)", metadata: ["instance": "\(name)", "state": "\(state)"])
            return .success(())
        }.get()) ?? .failure(HAControlError("cluster membership is not running"))
        try result.get()
    }

    /// The service table changed: a MASTER's new VIPs start answering and are moved to it.
    public func servicesChanged() {
        loop.execute { [self] in
            guard timer != nil else { return }
            applyGate()
            for (i, e) in elections.enumerated() where e.role == .master {
                jobs.yield(.takeover(instance: i, vips: vips(of: i).sorted { $0.value < $1.value }, term: e.term))
            }
        }
    }

    // MARK: The loop

    private func tick() {
        loop.assertInEventLoop()
        let now = monotonicNanoseconds()
        perform(swim.onTick(nowNanos: now))
        let inSync = hooks.replicationInSync()
        for i in elections.indices {
            if inSync != lastInSync { handle(elections[i].onLocalSync(inSync, nowNanos: now), instance: i) }
            handle(elections[i].onTick(nowNanos: now), instance: i)
        }
        lastInSync = inSync
        swim.localAdverts = elections.map(\.advert)
    }

    fileprivate func received(_ bytes: [UInt8]) {
        loop.assertInEventLoop()
        counters["datagramsReceived", default: 0] += 1
        switch opener.open(bytes, channel: .gossip) {
        case .success(let (header, message)):
            let now = monotonicNanoseconds()
            let adverts: [InstanceAdvert]
            switch message {
            case .probe(let p): adverts = p.gossip.adverts
            case .probeRequest(let p): adverts = p.gossip.adverts
            case .probeAck(let a): adverts = a.gossip.adverts
            default: adverts = []
            }
            // Membership first, so an advert from a node we had as dead follows its return.
            perform(swim.onMessage(message, from: header.sender, nowNanos: now))
            for a in adverts {
                peerAdverts[header.sender, default: [:]][a.instance] = a
                for i in elections.indices where elections[i].advert.instance == a.instance {
                    handle(elections[i].onAdvert(a, from: header.sender, nowNanos: now), instance: i)
                }
            }
            swim.localAdverts = elections.map(\.advert)
        case .failure(let error):
            if error.reason == .authFailed, let held = authWarnings.admit(nowMillis: monotonicNanoseconds() / 1_000_000) {
                logger.warning("gossip messages fail authentication: is the cluster key the same on every node?",
                               metadata: ["detail": "\(error.detail)", "heldBack": "\(held)"])
            }
        }
    }

    private func perform(_ actions: [SWIMAction]) {
        loop.assertInEventLoop()
        for action in actions {
            switch action {
            case .send(let message, let to):
                send(message, to: to)
            case .memberChanged(let node, let status, let incarnation):
                let now = monotonicNanoseconds()
                memberChangedAt[node] = wallClockMicros() / 1000
                logger.notice("member \(status)", metadata: ["node": "\(IPv4Address(node))", "incarnation": "\(incarnation)"])
                for i in elections.indices {
                    switch status {
                    // A restarting peer's datapath still forwards: it keeps its role until its
                    // hold expires (then SWIM declares it dead).
                    case .alive, .suspect, .restarting: handle(elections[i].onPeerAlive(node, nowNanos: now), instance: i)
                    case .dead, .left: handle(elections[i].onPeerDead(node, nowNanos: now), instance: i)
                    }
                }
                if status == .dead || status == .left { peerAdverts[node] = nil }
            }
        }
    }

    fileprivate func channelClosed(_ channel: Channel) { udp.closed(channel) }

    private func send(_ message: SyncMessage, to node: UInt32) {
        guard let udp = udp.channel, let address = peerAddresses[node] else { return }
        let bytes = sealer.seal(message, channel: .gossip)
        var buffer = udp.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        udp.writeAndFlush(AddressedEnvelope(remoteAddress: address, data: buffer), promise: nil)
        counters["datagramsSent", default: 0] += 1
    }

    private func handle(_ actions: [ElectionAction], instance i: Int) {
        loop.assertInEventLoop()
        for action in actions {
            let name = config.instances[i].name
            switch action {
            case .becomeMaster(let term):
                note(i, to: "MASTER", term: term, reason: "elected")
                applyGate()
                jobs.yield(.takeover(instance: i, vips: sortedVIPs(of: i), term: term))
                logger.notice("became MASTER", metadata: ["instance": "\(name)", "term": "\(term)",
                                                          "vips": "\(sortedVIPs(of: i).map(\.description).joined(separator: ","))"])
            case .reassert(let term):
                jobs.yield(.takeover(instance: i, vips: sortedVIPs(of: i), term: term))
                logger.notice("re-asserting the floating IPs after a conflict", metadata: ["instance": "\(name)", "term": "\(term)"])
            case .becomeBackup(let term, let reason):
                note(i, to: "BACKUP", term: term, reason: reason)
                stepDown(i)
                logger.notice("became BACKUP", metadata: ["instance": "\(name)", "term": "\(term)", "reason": "\(reason)"])
            case .becomeFault(let reason):
                note(i, to: "FAULT", term: elections[i].term, reason: reason)
                stepDown(i)
                logger.error("entered FAULT", metadata: ["instance": "\(name)", "reason": "\(reason)"])
            }
        }
    }

    /// Stops answering at once (the gate), then releases through the provider.
    private func stepDown(_ i: Int) {
        takeoversInFlight.withLockedValue { $0[i]?.task.cancel() }
        let before = activeVIPs
        applyGate()
        let dropped = before.subtracting(activeVIPs)
        if !dropped.isEmpty { jobs.yield(.release(vips: dropped.sorted { $0.value < $1.value })) }
    }

    private func note(_ i: Int, to: String, term: UInt64, reason: String) {
        let name = config.instances[i].name
        Counter(label: "tandem_ha_role_changes_total", dimensions: [("instance", name), ("to", to)]).increment()
        Gauge(label: "tandem_ha_role", dimensions: [("instance", name)])
            .record(to == "MASTER" ? 1 : to == "FAULT" ? 2 : 0)
        let from = records[i].transitions.last?.to ?? "BACKUP"
        records[i].transitions.append(.init(from: from, to: to, term: term, reason: reason, atUnixMs: wallClockMicros() / 1000))
        if records[i].transitions.count > 32 { records[i].transitions.removeFirst() }
    }

    /// The datapath answers for exactly the VIPs of the instances this node is MASTER of.
    private func applyGate() {
        var vipsOwned: Set<IPv4Address> = []
        for (i, e) in elections.enumerated() where e.role == .master { vipsOwned.formUnion(vips(of: i)) }
        do {
            try hooks.setActiveVIPs(vipsOwned)
            activeVIPs = vipsOwned
        } catch {
            counters["gateErrors", default: 0] += 1
            logger.error("could not update the datapath's VIP gate", metadata: ["error": "\(error)"])
        }
    }

    private func vips(of i: Int) -> Set<IPv4Address> {
        if let fixed = config.instances[i].vips { return Set(fixed) }
        let claimed = config.instances.compactMap(\.vips).flatMap { $0 }
        return hooks.serviceVIPs().subtracting(claimed)
    }

    private func sortedVIPs(of i: Int) -> [IPv4Address] { vips(of: i).sorted { $0.value < $1.value } }

    // MARK: Provider jobs (serial, off the loop)

    private static func run(_ job: Job, provider: any CloudProvider, shell: HAShell?) async {
        switch job {
        case .release(let vips):
            await provider.release(vips: vips)
        case .takeover(let instance, let vips, let term):
            guard !vips.isEmpty, let shell else { return }
            // A queued move for a term this node no longer holds as MASTER would pull the IP away
            // from the node that won; skip it (its release is queued behind it). Once `stop` has
            // begun this node has announced its leave, and a peer may already have taken over:
            // no queued move may run then either, whatever the election still says.
            func stillMaster() async -> Bool {
                let current = try? await shell.loop.submit {
                    shell.elections[instance].role == .master && shell.elections[instance].term == term
                }.get()
                return current == true && !shell.stoppedBox.withLockedValue({ $0 })
            }
            guard await stillMaster() else { return }
            let preparing = ContinuousClock.now
            await shell.hooks.prepareTakeover(vips, term)
            let prepared = ContinuousClock.now - preparing
            shell.loop.execute { shell.records[instance].lastPrepareMs = milliseconds(prepared) }
            // The preparation may have taken a while: the node may have lost the term meanwhile.
            guard await stillMaster() else { return }
            let started = ContinuousClock.now
            let move = Task { try await provider.takeover(vips: vips, term: term) }
            shell.takeoversInFlight.withLockedValue { $0[instance] = (term, move) }
            // Lost between the check above and the registration: cancel it now.
            if !(await stillMaster()) { move.cancel() }
            let result: Result<CloudTakeoverResult, Error>
            do { result = .success(try await move.value) } catch { result = .failure(error) }
            shell.takeoversInFlight.withLockedValue { if $0[instance]?.term == term { $0[instance] = nil } }
            let elapsed = ContinuousClock.now - started
            let cancelled = move.isCancelled
            shell.loop.execute {
                shell.takeoverFinished(instance: instance, term: term, result: result, elapsed: elapsed, cancelled: cancelled)
            }
        }
    }

    private func takeoverFinished(instance i: Int, term: UInt64, result: Result<CloudTakeoverResult, Error>,
                                  elapsed: Duration, cancelled: Bool = false) {
        let now = monotonicNanoseconds()
        let ms = milliseconds(elapsed)
        let name = config.instances[i].name
        if cancelled {
            // This node lost the term while its provider worked; the winner moves the IPs.
            Counter(label: "tandem_takeovers_cancelled_total", dimensions: [("instance", name)]).increment()
            logger.notice("takeover cancelled: this node lost the term while the provider worked",
                          metadata: ["instance": "\(name)", "term": "\(term)", "ms": "\(String(format: "%.1f", ms))",
                                     "outcome": "\((try? result.get()).map { "finished anyway: \($0.detail)" } ?? "stopped")"])
            return
        }
        switch result {
        case .success(let r):
            records[i].takeovers += 1
            records[i].lastTakeoverAt = wallClockMicros() / 1000
            records[i].lastTakeoverMs = ms
            records[i].lastTakeoverDetail = r.detail
            Timer(label: "tandem_takeover_duration_seconds", dimensions: [("instance", name), ("provider", r.provider)])
                .recordNanoseconds(Int64(clamping: elapsed.components.seconds * 1_000_000_000
                                                   + elapsed.components.attoseconds / 1_000_000_000))
            logger.notice("floating IPs taken over", metadata: ["instance": "\(name)", "term": "\(term)",
                                                                "provider": "\(r.provider)", "ms": "\(String(format: "%.1f", ms))",
                                                                "detail": "\(r.detail)"])
            handle(elections[i].onTakeover(succeeded: true, term: term, nowNanos: now), instance: i)
        case .failure(let error):
            records[i].takeoverFailures += 1
            Counter(label: "tandem_takeover_failures_total", dimensions: [("instance", name)]).increment()
            records[i].lastError = "\(error)"
            logger.error("takeover failed", metadata: ["instance": "\(name)", "term": "\(term)", "error": "\(error)"])
            handle(elections[i].onTakeover(succeeded: false, term: term, nowNanos: now), instance: i)
        }
        swim.localAdverts = elections.map(\.advert)
    }

    // MARK: Status

    private func makeStatus() -> HAStatus {
        let now = monotonicNanoseconds()
        let names = Dictionary(elections.enumerated().map { ($1.advert.instance, config.instances[$0].name) },
                               uniquingKeysWith: { first, _ in first })
        var members: [HAStatus.Member] = [
            .init(node: config.selfID, address: "\(config.bindAddress)", state: "self", incarnation: swim.incarnation,
                  lastHeardMs: nil,
                  roles: Dictionary(elections.enumerated().map { (config.instances[$0].name, $1.role.label) },
                                    uniquingKeysWith: { first, _ in first }),
                  terms: Dictionary(elections.enumerated().map { (config.instances[$0].name, $1.term) },
                                    uniquingKeysWith: { first, _ in first }),
                  inSync: lastInSync, changedAtUnixMs: nil),
        ]
        for m in swim.members {
            let adverts = peerAdverts[m.node] ?? [:]
            var roles: [String: String] = [:]
            var terms: [String: UInt64] = [:]
            var inSync: Bool?
            for (id, a) in adverts {
                let n = names[id] ?? String(id)
                roles[n] = a.role.label
                terms[n] = a.term
                inSync = a.flags.contains(.inSync)
            }
            members.append(.init(node: m.node, address: "\(IPv4Address(m.node))", state: "\(m.status)",
                                 incarnation: m.incarnation,
                                 lastHeardMs: m.heard ? (now &- m.lastHeardNanos) / 1_000_000 : nil,
                                 roles: roles, terms: terms, inSync: inSync, changedAtUnixMs: memberChangedAt[m.node]))
        }
        let instances = elections.enumerated().map { i, e in
            HAStatus.Instance(name: config.instances[i].name, role: e.role.label, term: e.term, master: e.masterID,
                              priority: config.instances[i].priority, external: e.advert.flags.contains(.external),
                              vips: sortedVIPs(of: i).map(\.description), transitions: records[i].transitions,
                              takeovers: records[i].takeovers, takeoverFailures: records[i].takeoverFailures,
                              lastTakeoverAtUnixMs: records[i].lastTakeoverAt, lastTakeoverMs: records[i].lastTakeoverMs,
                              lastPrepareMs: records[i].lastPrepareMs,
                              lastTakeoverDetail: records[i].lastTakeoverDetail, lastError: records[i].lastError)
        }
        var all = counters
        all["socketRebinds"] = udp.rebinds
        let c = swim.counters
        all["probesSent"] = c.probesSent
        all["acksReceived"] = c.acksReceived
        all["indirectProbes"] = c.indirectProbes
        all["suspicionsRaised"] = c.suspicionsRaised
        all["refutations"] = c.refutations
        all["deathsDeclared"] = c.deathsDeclared
        all["falseSuspicionsCleared"] = c.falseSuspicionsCleared
        all["stallsDetected"] = c.stallsDetected
        all["opened"] = opener.opened
        return HAStatus(node: config.selfID, address: "\(config.bindAddress)", provider: provider.name,
                        inSync: lastInSync ?? false, incarnation: swim.incarnation, members: members,
                        instances: instances, counters: all,
                        drops: Dictionary(opener.counters.map { ($0.key.rawValue, $0.value) }, uniquingKeysWith: +))
    }

    // MARK: Clocks and scheduling

    /// SCHED_RR priority 10 for the calling thread; nice -10 if that is refused.
    static func raiseThreadPriority() -> String {
        var param = sched_param()
        param.sched_priority = 10
        if pthread_setschedparam(pthread_self(), SCHED_RR, &param) == 0 { return "SCHED_RR/10" }
        _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, -10)
        return "nice -10 (SCHED_RR refused)"
    }
}

public struct HAControlError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

extension HARole {
    /// LoxiLB's spelling.
    public var label: String {
        switch self {
        case .master: "MASTER"
        case .backup: "BACKUP"
        case .fault: "FAULT"
        }
    }
}

/// Hands received datagrams to the shell (on its loop).
private final class GossipHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    private weak var shell: HAShell?

    init(shell: HAShell?) { self.shell = shell }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var envelope = unwrapInboundIn(data)
        guard let bytes = envelope.data.readBytes(length: envelope.data.readableBytes) else { return }
        shell?.received(bytes)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A refused send (ICMP unreachable from a dead peer) surfaces here; probing goes on.
    }

    func channelInactive(context: ChannelHandlerContext) {
        shell?.channelClosed(context.channel)
        context.fireChannelInactive()
    }
}

private func milliseconds(_ d: Duration) -> Double {
    Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15
}
