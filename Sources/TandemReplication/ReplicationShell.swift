import Glibc
import Synchronization
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import TandemCore
import TandemSync
import TandemSyncWire
import TandemSealing
import TandemShellSupport
import TandemStatus

/// Where replicated entries go: the local datapath's connection maps (flows), or the kernel's
/// conntrack table (kernel entries).
public protocol ReplicationDatapath<Entry>: Sendable {
    associatedtype Entry: ReplicatedEntry
    /// Installs or updates entries learned from peers; returns how many could not be installed.
    func installReplicated(_ records: [Entry.Record]) -> Int
    /// Removes entries (a flow: both directions).
    func removeReplicated(_ keys: [Entry.Key])
}

public struct ReplicationPeer: Sendable, Hashable {
    public var id: UInt32
    public var address: IPv4Address
    public var port: UInt16
    public init(id: UInt32, address: IPv4Address, port: UInt16) {
        self.id = id
        self.address = address
        self.port = port
    }
}

public struct ReplicationShellConfig: Sendable {
    public var bindAddress: IPv4Address
    /// UDP (deltas) and TCP (bulk transfers) share this port number.
    public var port: UInt16
    public var peers: [ReplicationPeer]
    public var key: ClusterKey
    public var core: ReplicationConfig
    /// Timer period for acks, nacks, keepalives and anti-entropy while there is work that cannot
    /// wait (`ReplicationCore.wantsPromptTick`).
    public var tickMilliseconds: Int64 = 2
    /// Timer period when there is none: keepalives (every 100 ms) go out at most this late. An
    /// idle 2 ms tick cost ~4% of a core per node (a wakeup and a timer re-arm 500 times a second).
    public var idleTickMilliseconds: Int64 = 20
    /// Bulk-transfer connections served at once; more are closed on accept. A cluster needs one
    /// per peer at a time, so this only bounds what strangers can hold open.
    public var maxBulkConnections = 16
    /// An accepted connection must deliver its (authenticated) request within this time.
    public var bulkRequestTimeout: TimeAmount = .seconds(2)
    /// No served connection lives longer than this (the requester gives up after 30 s).
    public var bulkConnectionLifetime: TimeAmount = .seconds(60)

    public init(selfID: UInt32, bindAddress: IPv4Address, port: UInt16, peers: [ReplicationPeer], key: ClusterKey) {
        self.bindAddress = bindAddress
        self.port = port
        self.peers = peers.filter { $0.id != selfID }
        self.key = key
        core = ReplicationConfig(selfID: selfID, peers: self.peers.map(\.id))
        core.bulkPort = port
    }
}

/// The I/O shell around ReplicationCore: one NIO event loop owns the core, a UDP socket for
/// deltas, acks, keepalives and digests, and TCP for bulk transfers. All core access happens on
/// that loop, so the core needs no locks; other threads hand work over with `execute`.
public final class ReplicationShell<Entry: ReplicatedEntry>: @unchecked Sendable {
    // Everything below `loop` is touched only on `loop` (one thread); the entry points assert it
    // (`assertInEventLoop`, checked in debug builds, so the tests catch a stray caller).
    public let config: ReplicationShellConfig
    private let group: MultiThreadedEventLoopGroup
    private let loop: EventLoop
    /// Writes learned flows into the datapath, in order, on its own thread: a bulk transfer's
    /// decoding and merging (on `loop`) and its map writes then use both cores instead of one.
    /// The in-sync flag is set through the same queue, so it turns true only after every flow
    /// received before it is in the maps.
    private let installGroup: MultiThreadedEventLoopGroup
    private let installLoop: EventLoop
    private let datapath: any ReplicationDatapath<Entry>
    private let logger: Logger
    /// The core and the sealer are shared by the loop and a direct submitter (the thread that
    /// read local changes: see `submit(changes:)`), so every access holds `coreLock`: the
    /// accessors below take it for the duration of one access, and the direct path holds it
    /// across its changes, seals and sends. Never touched by anything called under the lock.
    private let coreLock = NIOLock()
    private var lockedCore: ReplicationCore<Entry>
    private var lockedSealer: SyncSealer
    private var core: ReplicationCore<Entry> {
        _read {
            coreLock.lock()
            defer { coreLock.unlock() }
            yield lockedCore
        }
        _modify {
            coreLock.lock()
            defer { coreLock.unlock() }
            yield &lockedCore
        }
    }
    private var sealer: SyncSealer {
        _read {
            coreLock.lock()
            defer { coreLock.unlock() }
            yield lockedSealer
        }
        _modify {
            coreLock.lock()
            defer { coreLock.unlock() }
            yield &lockedSealer
        }
    }
    /// Local changes' datagrams go out from the submitting thread through this socket once the
    /// shell has started (nil before, or when it could not be bound; disabled at stop). Under `coreLock`.
    private var direct: DirectSending?
    private var opener: SyncOpener
    /// Lazy only because its bind closure needs `self`; first touched by `start`, before the loop
    /// runs anything of this shell.
    private lazy var udp = RebindingDatagramSocket(name: "sync-\(Entry.tableName)", loop: loop, logger: logger) { [weak self, group, config] in
        Self.bindDatagram(group: group, config: config, shell: self)
    }
    private var server: Channel?
    /// The next tick; nil once stopping (and before start).
    private var timer: Scheduled<Void>?
    private var timerDeadline = NIODeadline.distantFuture
    private var peerAddresses: [UInt32: SocketAddress] = [:]
    private var pulls: [UInt32: Channel] = [:]
    private var datagramsSent: UInt64 = 0
    private var datagramsReceived: UInt64 = 0
    private var bytesSent: UInt64 = 0
    /// Written on `installLoop`, read anywhere.
    private let installFailuresBox = NIOLockedValueBox<UInt64>(0)
    /// Batches handed to `installLoop` and not yet written (added on `loop`, taken off there).
    private let installQueued = QueuedCount()
    private var authWarnings = WarningLimiter()
    private var lastSummary: UInt64 = 0
    private var flushScheduled = false
    private var scanInProgress = false
    /// Datagrams written and not yet flushed.
    private var unflushed = 0
    /// Actions of the datagrams read so far in the current read burst.
    private var receivedActions: [ReplicationAction<Entry>] = []
    private var summarised = ReplicationCounters()
    private let inSyncBox = NIOLockedValueBox(false)
    private let scanDueBox = NIOLockedValueBox(UInt64.max)
    private let stoppedBox = NIOLockedValueBox(false)
    /// Bulk-server connections open now, and those closed for the cap or a missing request.
    private let bulkServerBox = NIOLockedValueBox(BulkServerStats())

    public init(config: ReplicationShellConfig, datapath: any ReplicationDatapath<Entry>, logger: Logger) {
        self.config = config
        self.datapath = datapath
        self.logger = logger
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        loop = group.next()
        installGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        installLoop = installGroup.next()
        let epoch = wallClockMicros()
        lockedCore = ReplicationCore<Entry>(config: config.core, epoch: epoch, seed: epoch ^ UInt64(config.core.selfID))
        lockedSealer = SyncSealer(key: config.key, sender: config.core.selfID, epoch: epoch)
        opener = SyncOpener(key: config.key, selfID: config.core.selfID, members: Set(config.peers.map(\.id)))
    }

    /// Bulk-server connections: open now, refused over the cap, closed for a missing request.
    public var bulkServerStats: BulkServerStats { bulkServerBox.withLockedValue { $0 } }

    /// Whether this node holds the cluster's table (readable from any thread).
    public var inSync: Bool { inSyncBox.withLockedValue { $0 } }
    /// When the local table next needs a scan, on `clockMillis()` (`ReplicationCore.scanDueMillis`
    /// as of the last tick, at most 20 ms old; .max: nothing needs one). A source that reads its
    /// whole table to scan it asks this.
    public var scanDueMillis: UInt64 { scanDueBox.withLockedValue { $0 } }

    // MARK: Lifecycle

    public func start() async throws {
        try await udp.start()
        let serverChannel: Channel
        do {
            serverChannel = try await ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { [weak self, bulkServerBox, config] channel in
                    channel.eventLoop.makeCompletedFuture {
                        // Unauthenticated until the first frame: bound how many, and how long.
                        let admitted = bulkServerBox.withLockedValue { s -> Bool in
                            guard s.open < config.maxBulkConnections else {
                                s.refusedOverCap &+= 1
                                return false
                            }
                            s.open += 1
                            return true
                        }
                        guard admitted else { throw BulkServerRefusal.overCap }
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(SyncFrameDecoder()))
                        try channel.pipeline.syncOperations.addHandler(
                            BulkServerHandler(onRequest: { [weak self] in self?.serve(frame: $0, on: $1) }, stats: bulkServerBox,
                                              requestTimeout: config.bulkRequestTimeout, lifetime: config.bulkConnectionLifetime))
                    }
                }
                .bind(host: "\(config.bindAddress)", port: Int(config.port)).get()
        } catch {
            try? await loop.submit { [self] in udp.stop() }.get()?.close()
            throw error
        }
        try await loop.submit { [self] in
            // Replication latency is what failover hinges on: this thread outranks the table scan
            // and ordinary work (nice -5; per thread on Linux, 0 names the calling thread).
            _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, -5)
            server = serverChannel
            for p in config.peers {
                peerAddresses[p.id] = try SocketAddress(ipAddress: "\(p.address)", port: Int(p.port))
            }
            perform(core.start(now: now()))
            installLoop.execute {
                // Learned flows reach the maps on this thread: as urgent as the loop's.
                _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, -5)
            }
            scheduleTick(in: config.tickMilliseconds)
        }.get()
        if let sender = DirectDatagramSender(bindAddress: config.bindAddress) {
            let peers = config.peers.map { DirectDatagramSender.peer(id: $0.id, address: $0.address, port: $0.port) }
            coreLock.withLock { direct = DirectSending(sender: sender, peers: peers) }
        } else {
            logger.notice("replication: no direct send socket; local changes go out through the event loop",
                          metadata: ["bind": "\(config.bindAddress)"])
        }
        logger.info("replication started", metadata: [
            "table": "\(Entry.tableName)", "node": "\(config.core.selfID)", "listen": "\(config.bindAddress):\(config.port)",
            "peers": "\(config.peers.map { "\($0.id)@\($0.address):\($0.port)" }.joined(separator: ","))",
        ])
    }

    static var datagramsPerRead: Int { 16 }

    /// The UDP socket. A send the kernel refuses (a local firewall's EPERM, say) makes NIO close
    /// the channel; `udp` binds a new one, so replication never stops over it.
    private static func bindDatagram(group: EventLoopGroup, config: ReplicationShellConfig,
                                     shell: ReplicationShell?) -> EventLoopFuture<Channel> {
        DatagramBootstrap(group: group)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            // Deltas come in bursts; a bigger receive buffer rides them out.
            .channelOption(.socketOption(.so_rcvbuf), value: 4 << 20)
            // recvmmsg: up to 16 datagrams per read syscall, 4 reads per wakeup. NIO splits one
            // receive buffer evenly between them, so it must hold 16 of the largest datagram.
            .channelOption(.datagramVectorReadMessageCount, value: Self.datagramsPerRead)
            .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: Self.datagramsPerRead * 2048))
            .channelInitializer { [weak shell] channel in
                channel.eventLoop.makeCompletedFuture {
                    // net.core.rmem_max (212 KB by default) caps SO_RCVBUF; a root daemon may go
                    // past it. A bulk of events (a table's worth after a pause) arrives as
                    // thousands of datagrams at once; overflowing the buffer costs nacks and
                    // retransmissions. Best effort: without the privilege the capped size stays.
                    try? channel.syncOptions?.setOption(ChannelOptions.Types.SocketOption(level: .socket, name: NIOBSDSocket.Option(rawValue: SO_RCVBUFFORCE)),
                                                        value: 16 << 20)
                    try channel.pipeline.syncOperations.addHandler(DatagramHandler(
                        onDatagram: { [weak shell] in shell?.received(datagram: $0) },
                        onBurstEnded: { [weak shell] in shell?.receivedBurstEnded() },
                        onClosed: { [weak shell] in shell?.datagramClosed($0) }))
                }
            }
            .bind(host: "\(config.bindAddress)", port: Int(config.port))
    }

    /// Not gated on the tick timer: the first hello goes out at start before the timer exists,
    /// and NIO closes the channel inside that write (a node whose first sends a firewall refused
    /// once stayed deaf and mute, and declared itself in sync alone with an empty table).
    fileprivate func datagramClosed(_ channel: Channel) { udp.closed(channel) }

    public func stop() async {
        // Idempotent: the daemon's shutdown paths may call this twice, and NIO must not be asked
        // to shut the group down again.
        let first = stoppedBox.withLockedValue { stopped -> Bool in
            defer { stopped = true }
            return !stopped
        }
        guard first else { return }
        coreLock.withLock { direct?.enabled = false }
        let closing: [Channel] = (try? await loop.submit { [self] () -> [Channel] in
            timer?.cancel()
            timer = nil
            let all = [udp.stop(), server].compactMap { $0 } + Array(pulls.values)
            server = nil
            pulls.removeAll()
            return all
        }.get()) ?? []
        for c in closing { try? await c.close() }
        try? await group.shutdownGracefully()
        // After the main loop, which queues installs: the queue drains here, before the caller
        // closes the datapath.
        _ = try? await installLoop.submit {}.get()
        try? await installGroup.shutdownGracefully()
    }

    // MARK: Input from the local datapath

    /// Local datapath changes (ring-buffer events), from any thread. Once started, they are
    /// recorded, sealed and sent on the calling thread (one thread fewer on the lag's path than
    /// handing them to the loop: per-hop timestamps put that hop at 30-40 us p50 at 1k flows/s);
    /// before, they queue on the loop.
    public func submit(changes: [(record: Entry.Record, deleted: Bool)]) {
        guard !changes.isEmpty, !stoppedBox.withLockedValue({ $0 }) else { return }
        if submitDirect(changes) { return }
        submitQueued(changes)
    }

    static var submitSlice: Int { 1024 }

    /// Datagrams of local changes sent from the submitting thread (the direct path), so far.
    public var datagramsSentDirectly: UInt64 { coreLock.withLock { direct?.datagrams ?? 0 } }

    /// The direct path of `submit`: false (nothing done) when there is no direct socket. A big
    /// batch goes a slice at a time, the lock released between slices so the loop's work
    /// (acks, received deltas) interleaves. Actions other than datagrams (none are expected from
    /// local changes) and datagrams the socket refused for room go to the loop.
    private func submitDirect(_ changes: [(record: Entry.Record, deleted: Bool)]) -> Bool {
        var start = changes.startIndex
        var handOver: [ReplicationAction<Entry>] = []
        var refused: [(bytes: [UInt8], peer: UInt32)] = []
        while start < changes.endIndex {
            let end = min(start + Self.submitSlice, changes.endIndex)
            let sent = coreLock.withLock { () -> Bool in
                guard var d = direct, d.enabled else { return false }
                let t = now()
                var actions: [ReplicationAction<Entry>] = []
                for c in changes[start..<end] {
                    actions += lockedCore.onLocalChange(c.record, deleted: c.deleted, now: t)
                }
                actions += lockedCore.flush(now: t)
                for a in actions {
                    let (message, only): (SyncMessage, UInt32?)
                    switch a {
                    case .broadcast(let m): (message, only) = (m, nil)
                    case .send(let m, let to): (message, only) = (m, to)
                    default:
                        handOver.append(a)
                        continue
                    }
                    let bytes = lockedSealer.seal(message, channel: Entry.datagramChannel)
                    for p in d.peers where only == nil || p.id == only {
                        if !d.send(bytes, to: p) { refused.append((bytes, p.id)) }
                    }
                }
                direct = d
                return true
            }
            if !sent {
                // Stopped (or not started) between slices: the rest takes the loop's path.
                if start == changes.startIndex { return false }
                submitQueued(Array(changes[start...]))
                break
            }
            start = end
        }
        if !handOver.isEmpty || !refused.isEmpty, !stoppedBox.withLockedValue({ $0 }) {
            loop.execute { [self, refused, handOver] in
                for r in refused { if let a = peerAddresses[r.peer] { send(r.bytes, to: [a]) } }
                perform(handOver)
            }
        }
        return true
    }

    /// The loop's path of `submit`: before start (the changes wait on the loop for it), or
    /// without a direct socket.
    private func submitQueued(_ changes: [(record: Entry.Record, deleted: Bool)]) {
        guard !stoppedBox.withLockedValue({ $0 }) else { return }
        loop.execute { [self] in
            let t = now()
            for (i, c) in changes.enumerated() {
                perform(core.onLocalChange(c.record, deleted: c.deleted, now: t))
                if (i + 1) % Self.submitSlice == 0 { perform(core.flush(now: t)) }
            }
            scheduleFlush()
        }
    }

    /// Sends queued changes once the loop has run the work already queued behind this call, so a
    /// burst of events leaves in full datagrams instead of one datagram per event.
    private func scheduleFlush() {
        guard !flushScheduled else { return }
        flushScheduled = true
        loop.execute { [self] in
            flushScheduled = false
            perform(core.flush(now: now()))
        }
    }

    /// The periodic scan of the local table (original directions), from any thread. Worked
    /// through in slices with a pause between them, so deltas and datagrams interleave with it:
    /// NIO runs every task queued while it runs tasks before it reads a socket again, so slices
    /// queued with `execute` would hold the loop for the whole scan (400-700 ms at 500k flows,
    /// measured as lag spikes of that size). A scan that arrives while one is in progress is
    /// dropped; the next pass covers it. `readAtMillis` is `ReplicationShell.clockMillis()` taken
    /// before reading the table began.
    public func submit(scan live: [(record: Entry.Record, fromPeer: Bool)], readAtMillis: UInt64) {
        guard !stoppedBox.withLockedValue({ $0 }) else { return }
        loop.execute { [self] in
            guard !scanInProgress else { return }
            scanInProgress = true
            scanTiming = ScanTiming(startedNanos: monotonicNanoseconds(), flows: live.count)
            core.beginScan(now: now(), readAtMillis: readAtMillis)
            scanSlice(live, from: 0)
        }
    }

    /// Loop time a scan took, and its longest slice (the most it delayed deltas), for the log.
    private struct ScanTiming {
        var startedNanos: UInt64
        var flows: Int
        var loopNanos: UInt64 = 0
        var longestSliceNanos: UInt64 = 0
        mutating func add(_ started: UInt64) {
            let d = monotonicNanoseconds() &- started
            loopNanos += d
            longestSliceNanos = max(longestSliceNanos, d)
        }
    }
    private var scanTiming = ScanTiming(startedNanos: 0, flows: 0)

    /// Flows per scan slice (about a millisecond of loop time each).
    static var scanSliceSize: Int { 1024 }

    private func scanSlice(_ live: [(record: Entry.Record, fromPeer: Bool)], from start: Int) {
        let began = monotonicNanoseconds()
        defer { scanTiming.add(began) }
        let end = min(start + Self.scanSliceSize, live.count)
        let t = now()
        perform(core.onLocalScanChunk(Array(live[start..<end]), now: t))
        if end < live.count {
            loop.scheduleTask(in: Self.slicePause) { [self] in scanSlice(live, from: end) }
        } else {
            // About 4 slices' worth of records per slice of leaves.
            let leaves = max(1, min(ReplicaLeaves.count,
                                    ReplicaLeaves.count * 4 * Self.scanSliceSize / max(1, core.table.count)))
            loop.scheduleTask(in: Self.slicePause) { [self] in finishSlice(fromLeaf: 0, leaves: leaves) }
        }
    }

    private func finishSlice(fromLeaf start: Int, leaves: Int) {
        let began = monotonicNanoseconds()
        let end = min(start + leaves, ReplicaLeaves.count)
        perform(core.finishScan(leaves: start..<end, now: now()))
        scanTiming.add(began)
        if end < ReplicaLeaves.count {
            loop.scheduleTask(in: Self.slicePause) { [self] in finishSlice(fromLeaf: end, leaves: leaves) }
        } else {
            scanInProgress = false
            scheduleFlush()
            let s = scanTiming
            logger.debug("replication scan done", metadata: [
                "flows": "\(s.flows)", "records": "\(core.table.count)",
                "took_ms": "\((monotonicNanoseconds() &- s.startedNanos) / 1_000_000)",
                "loop_ms": "\(s.loopNanos / 1_000_000)", "longest_slice_us": "\(s.longestSliceNanos / 1000)"])
        }
    }

    public func status() async -> ReplicationStatus? {
        guard !stoppedBox.withLockedValue({ $0 }) else { return nil }
        return try? await loop.submit { [self] in makeStatus() }.get()
    }

    // MARK: Loop-confined work

    private func now() -> SyncTime {
        SyncTime(monotonicMillis: Self.clockMillis(), wallMicros: wallClockMicros())
    }

    /// The monotonic clock the core's times are on, in milliseconds.
    public static func clockMillis() -> UInt64 { monotonicNanoseconds() / 1_000_000 }

    /// Arms the tick timer `milliseconds` from now, unless it is already due sooner.
    private func scheduleTick(in milliseconds: Int64) {
        let at = NIODeadline.now() + .milliseconds(milliseconds)
        if timer != nil, timerDeadline <= at { return }
        timer?.cancel()
        timerDeadline = at
        timer = loop.scheduleTask(deadline: at) { [weak self] in self?.tick() }
    }

    /// New work for the timer (deltas arrived: an ack is due): make sure it comes soon.
    private func tickSoon() {
        if timer != nil { scheduleTick(in: config.tickMilliseconds) }
    }

    private func tick() {
        loop.assertInEventLoop()
        guard timer != nil else { return } // stopping
        let t = now()
        var actions = core.onTick(now: t)
        actions += core.flush(now: t)
        perform(actions)
        // Published here, not per change: its reader (the kernel source) looks every 100 ms.
        let due = core.scanDueMillis
        scanDueBox.withLockedValue { $0 = due }
        timer = nil
        scheduleTick(in: core.wantsPromptTick ? config.tickMilliseconds : config.idleTickMilliseconds)
        if t.monotonicMillis >= lastSummary &+ 30_000 {
            lastSummary = t.monotonicMillis
            logSummary()
        }
    }

    /// Whether a batch of `count` map writes runs here on the loop rather than on the install
    /// thread: a few records cost a few microseconds here, while handing them over costs a thread
    /// wakeup on the lag's path (tens of microseconds on a busy machine). Only when nothing is
    /// queued there, so the writes of one flow stay in order.
    private func installsInline(_ count: Int) -> Bool {
        count <= Self.inlineInstallLimit && installQueued.value.load(ordering: .acquiring) == 0
    }

    /// Records above which a batch goes to the install thread (a bulk transfer's or a burst's:
    /// their decoding on this loop and their writes there then use both cores).
    static var inlineInstallLimit: Int { 64 }

    private func perform(_ actions: [ReplicationAction<Entry>]) {
        loop.assertInEventLoop()
        var installs: [Entry.Record] = []
        var removals: [Entry.Key] = []
        func applyDatapath() {
            if !installs.isEmpty {
                let batch = installs
                installs.removeAll(keepingCapacity: true)
                if installsInline(batch.count) {
                    let failed = datapath.installReplicated(batch)
                    if failed > 0 { installFailuresBox.withLockedValue { $0 += UInt64(failed) } }
                } else {
                    installQueued.value.add(1, ordering: .relaxed)
                    installLoop.execute { [datapath, installFailuresBox, installQueued, logger] in
                        let failed = datapath.installReplicated(batch)
                        if failed > 0 { installFailuresBox.withLockedValue { $0 += UInt64(failed) } }
                        logger.trace("installed learned flows", metadata: ["count": "\(batch.count)", "failed": "\(failed)"])
                        installQueued.value.subtract(1, ordering: .releasing)
                    }
                }
            }
            if !removals.isEmpty {
                let batch = removals
                removals.removeAll(keepingCapacity: true)
                if installsInline(batch.count) {
                    datapath.removeReplicated(batch)
                } else {
                    installQueued.value.add(1, ordering: .relaxed)
                    installLoop.execute { [datapath, installQueued] in
                        datapath.removeReplicated(batch)
                        installQueued.value.subtract(1, ordering: .releasing)
                    }
                }
            }
        }
        for a in actions {
            switch a {
            case .install(let r):
                if !removals.isEmpty { applyDatapath() } // keep install/remove order per flow
                installs.append(r)
            case .remove(let k):
                if !installs.isEmpty { applyDatapath() }
                removals.append(k)
            case .send(let m, let to):
                guard let address = peerAddresses[to] else { continue }
                send(sealer.seal(m, channel: Entry.datagramChannel), to: [address])
            case .broadcast(let m):
                send(sealer.seal(m, channel: Entry.datagramChannel), to: Array(peerAddresses.values))
            case .pull(let from, let request):
                startPull(from: from, request: request)
            case .abortPull(let id):
                pulls.removeValue(forKey: id)?.close(promise: nil)
            case .inSyncChanged(let v):
                // Behind the installs queued so far: in sync means in the maps, not just received.
                applyDatapath()
                let entries = core.table.liveCount
                installLoop.execute { [inSyncBox, logger] in
                    inSyncBox.withLockedValue { $0 = v }
                    logger.info(v ? "replication in sync" : "replication out of sync", metadata: ["table": "\(Entry.tableName)", "entries": "\(entries)"])
                }
            }
        }
        applyDatapath()
        if unflushed > 0 {
            unflushed = 0
            udp.channel?.flush()
        }
    }

    /// Queues a datagram; `perform` flushes what it sent, so a burst leaves in sendmmsg calls of
    /// up to 32 datagrams instead of a syscall per datagram.
    private func send(_ bytes: [UInt8], to addresses: [SocketAddress]) {
        guard let udp = udp.channel, !addresses.isEmpty else { return }
        for address in addresses {
            var buffer = udp.allocator.buffer(capacity: bytes.count)
            buffer.writeBytes(bytes)
            udp.write(AddressedEnvelope(remoteAddress: address, data: buffer), promise: nil)
            datagramsSent += 1
            bytesSent += UInt64(bytes.count)
            unflushed += 1
        }
        // NIO's pending-write queue slows down when thousands of datagrams wait in it.
        if unflushed >= 32 {
            unflushed = 0
            udp.flush()
        }
    }

    /// One datagram of a read burst. Its actions wait for the end of the burst (NIO reads up to
    /// 64 datagrams per wakeup: 4 recvmmsg of 16): their map writes then go to the install thread
    /// as one batch, and their answers out with one flush, instead of one of each per datagram.
    fileprivate func received(datagram bytes: [UInt8]) {
        loop.assertInEventLoop()
        datagramsReceived += 1
        switch opener.open(bytes, channel: Entry.datagramChannel) {
        case .success(let (header, message)):
            receivedActions += core.onMessage(message, from: header, now: now())
        case .failure(let error):
            noteDrop(error)
        }
    }

    fileprivate func receivedBurstEnded() {
        loop.assertInEventLoop()
        var actions = receivedActions
        receivedActions.removeAll(keepingCapacity: true)
        actions += core.flush(now: now())
        perform(actions)
        if core.wantsPromptTick { tickSoon() }
    }

    private func noteDrop(_ error: SyncDecodeError) {
        if error.reason == .authFailed, let held = authWarnings.admit(nowMillis: now().monotonicMillis) {
            logger.warning("sync messages fail authentication: is the cluster key the same on every node?",
                           metadata: ["detail": "\(error.detail)", "heldBack": "\(held)"])
        } else {
            logger.debug("sync message dropped", metadata: ["reason": "\(error)"])
        }
    }

    // MARK: Bulk transfers

    /// Serving side: a peer's request arrived on an accepted connection.
    fileprivate func serve(frame bytes: [UInt8], on channel: Channel) {
        loop.assertInEventLoop()
        switch opener.open(bytes, channel: Entry.streamChannel) {
        case .failure(let error):
            noteDrop(error)
            channel.close(promise: nil)
        case .success(let (header, message)):
            guard case .bulkRequest(let request) = message else {
                channel.close(promise: nil)
                return
            }
            let (begin, entries, flushed) = core.serveBulk(request, now: now())
            perform(flushed)
            write(.bulkBegin(begin), on: channel)
            logger.debug("serving bulk transfer", metadata: ["peer": "\(header.sender)", "entries": "\(entries.count)",
                                                             "leaves": "\(request.leaves.count)"])
            serveSlice(entries, from: 0, requestID: request.requestID, on: channel)
        }
    }

    /// Frames of a bulk answer encoded and sealed per slice; the loop reads its sockets between
    /// slices, so serving a big table does not hold up the delta stream to every other peer.
    static var bulkFramesPerSlice: Int { 4 }

    private func serveSlice(_ entries: [Entry], from start: Int, requestID: UInt32, on channel: Channel) {
        guard channel.isActive else { return }
        let per = Entry.maxEntriesPerStreamFrame
        let end = min(start + per * Self.bulkFramesPerSlice, entries.count)
        var i = start
        while i < end {
            let next = min(i + per, end)
            write(Entry.bulkChunkMessage(requestID: requestID, entries: Array(entries[i..<next])), on: channel)
            i = next
        }
        if end < entries.count {
            channel.flush()
            loop.scheduleTask(in: Self.slicePause) { [self] in serveSlice(entries, from: end, requestID: requestID, on: channel) }
            return
        }
        write(.bulkEnd(BulkEnd(requestID: requestID, entryCount: UInt64(entries.count))), on: channel)
        channel.writeAndFlush(channel.allocator.buffer(capacity: 0)).whenComplete { _ in
            channel.close(promise: nil)
        }
    }

    /// A pause that lets the loop read its sockets before the next slice of a long job (a scan, a
    /// bulk answer): a task queued with `execute` would run before any I/O (NIO drains its task
    /// queue first). Longer pauses (2 ms) were tried for the scan: it then overlapped more deltas
    /// and lag got worse, not better.
    static var slicePause: TimeAmount { .microseconds(100) }

    private func write(_ m: SyncMessage, on channel: Channel) {
        let bytes = sealer.seal(m, channel: Entry.streamChannel)
        var buffer = channel.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        channel.write(buffer, promise: nil)
        bytesSent += UInt64(bytes.count)
    }

    /// Requesting side: connect, send the request, feed the answer to the core.
    private func startPull(from peer: UInt32, request: BulkRequest) {
        guard let address = peerAddresses[peer] else {
            perform(core.onTransferFailed(requestID: request.requestID, now: now()))
            return
        }
        let id = request.requestID
        let connect = ClientBootstrap(group: loop)
            .connectTimeout(.seconds(2))
            .channelInitializer { [weak self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(SyncFrameDecoder()))
                    try channel.pipeline.syncOperations.addHandler(BulkClientHandler(
                        onFrame: { [weak self] in self?.pulled(frame: $0, from: peer, requestID: id, channel: $1) },
                        onClosed: { [weak self] in self?.pullClosed(requestID: id) }))
                }
            }
            .connect(to: address)
        connect.whenComplete { [self] result in
            switch result {
            case .success(let channel):
                pulls[id] = channel
                write(.bulkRequest(request), on: channel)
                channel.flush()
            case .failure(let error):
                logger.debug("bulk transfer connect failed", metadata: ["peer": "\(peer)", "error": "\(error)"])
                perform(core.onTransferFailed(requestID: id, now: now()))
            }
        }
    }

    fileprivate func pulled(frame bytes: [UInt8], from peer: UInt32, requestID: UInt32, channel: Channel) {
        loop.assertInEventLoop()
        switch opener.open(bytes, channel: Entry.streamChannel) {
        case .failure(let error):
            noteDrop(error)
            channel.close(promise: nil)
        case .success(let (header, message)):
            guard header.sender == peer else {
                channel.close(promise: nil)
                return
            }
            let t = now()
            switch message {
            case .bulkBegin(let b): core.onBulkBegin(b, from: peer)
            case .bulkChunk, .kernelBulkChunk:
                guard let (id, entries) = Entry.bulkChunk(in: message) else {
                    channel.close(promise: nil)
                    return
                }
                perform(core.onBulkChunk(requestID: id, entries: entries, from: peer, now: t))
            case .bulkEnd(let e):
                perform(core.onBulkEnd(e, from: peer, now: t))
                pulls[requestID] = nil
                channel.close(promise: nil)
            default: channel.close(promise: nil)
            }
        }
    }

    fileprivate func pullClosed(requestID: UInt32) {
        loop.assertInEventLoop()
        pulls[requestID] = nil
        // A transfer that ended cleanly is gone from the core already; this only fails broken ones.
        perform(core.onTransferFailed(requestID: requestID, now: now()))
    }

    // MARK: Status

    private func makeStatus() -> ReplicationStatus {
        let t = now().monotonicMillis
        let directSent = coreLock.withLock {
            (datagrams: direct?.datagrams ?? 0, bytes: direct?.bytes ?? 0, errors: direct?.errors ?? 0)
        }
        let peers = config.peers.map { p -> ReplicationStatus.Peer in
            let v = core.peers[p.id]
            let r = core.receivers[p.id]
            return .init(id: p.id, address: "\(p.address):\(p.port)", inSync: v?.inSync ?? false,
                         lastHeardMillisecondsAgo: v?.lastHeard.map { t >= $0 ? t - $0 : 0 },
                         streamCumulative: r?.cumulative, streamHasGap: r?.hasGap ?? false)
        }
        var dropped: [String: UInt64] = [:]
        for (reason, n) in opener.counters where n > 0 { dropped[reason.rawValue] = n }
        return ReplicationStatus(
            nodeID: config.core.selfID, epoch: core.epoch, inSync: core.inSync, entries: core.table.count,
            liveEntries: core.table.liveCount, nextSequence: core.sender.nextSequence,
            retransmitWindow: core.sender.windowCount, peers: peers, counters: core.counters, dropped: dropped,
            datagramsSent: datagramsSent + directSent.datagrams, datagramsReceived: datagramsReceived,
            bytesSent: bytesSent + directSent.bytes,
            installFailures: installFailuresBox.withLockedValue { $0 }, lagP50Micros: core.lag.quantile(0.5), lagP99Micros: core.lag.quantile(0.99),
            lagMaxMicros: core.lag.max, socketRebinds: udp.rebinds, sendErrors: directSent.errors)
    }

    private func logSummary() {
        let c = core.counters
        guard c != summarised else { return }
        summarised = c
        var dropped = 0 as UInt64
        for (_, n) in opener.counters { dropped += n }
        logger.info("replication", metadata: [
            "inSync": "\(core.inSync)", "entries": "\(core.table.liveCount)", "sent": "\(c.entriesSent)",
            "applied": "\(c.entriesApplied)", "retransmitted": "\(c.retransmittedEntries)",
            "nacksSent": "\(c.nacksSent)", "dropped": "\(dropped)", "bulk": "\(c.bulkTransfersCompleted)",
            "antiEntropyRepaired": "\(c.antiEntropyRepaired)", "lagP99us": "\(core.lag.quantile(0.99))",
        ])
    }
}

// MARK: Channel handlers (thin: they hand bytes to the shell on its loop)

// The handlers are not generic: they call closures the shell made, so the shell's code they reach
// runs specialised for its entry kind (a generic handler, called by NIO through a protocol
// witness, would run the shell and the core unspecialised: 2-3x the CPU per entry).

private final class DatagramHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    let onDatagram: @Sendable ([UInt8]) -> Void
    let onBurstEnded: @Sendable () -> Void
    let onClosed: @Sendable (Channel) -> Void
    init(onDatagram: @escaping @Sendable ([UInt8]) -> Void, onBurstEnded: @escaping @Sendable () -> Void,
         onClosed: @escaping @Sendable (Channel) -> Void) {
        self.onDatagram = onDatagram
        self.onBurstEnded = onBurstEnded
        self.onClosed = onClosed
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var envelope = unwrapInboundIn(data)
        // Anything larger than a datagram we would send is dropped by the opener's size check.
        let n = min(envelope.data.readableBytes, SyncWire.maxDatagram + 1)
        guard let bytes = envelope.data.readBytes(length: n) else { return }
        onDatagram(bytes)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        onBurstEnded()
        context.fireChannelReadComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // ICMP port-unreachable from a peer that is down surfaces here; the socket stays usable.
    }

    func channelInactive(context: ChannelHandlerContext) {
        onClosed(context.channel)
        context.fireChannelInactive()
    }
}

/// Bulk-server connection accounting (readable from any thread, for status and tests).
public struct BulkServerStats: Sendable, Equatable {
    public var open = 0
    public var refusedOverCap: UInt64 = 0
    public var closedWithoutRequest: UInt64 = 0
    public var closedOverLifetime: UInt64 = 0
}

enum BulkServerRefusal: Error {
    case overCap
}

private final class BulkServerHandler: ChannelInboundHandler {
    typealias InboundIn = [UInt8]
    let onRequest: @Sendable ([UInt8], Channel) -> Void
    private let stats: NIOLockedValueBox<BulkServerStats>
    private let requestTimeout: TimeAmount
    private let lifetime: TimeAmount
    private var served = false
    private var timers: [Scheduled<Void>] = []

    init(onRequest: @escaping @Sendable ([UInt8], Channel) -> Void, stats: NIOLockedValueBox<BulkServerStats>,
         requestTimeout: TimeAmount, lifetime: TimeAmount) {
        self.onRequest = onRequest
        self.stats = stats
        self.requestTimeout = requestTimeout
        self.lifetime = lifetime
    }

    func handlerAdded(context: ChannelHandlerContext) {
        // Timers from the moment of accept: a client that never sends, or never stops
        // reading slowly, does not keep the socket.
        let channel = context.channel
        timers.append(context.eventLoop.scheduleTask(in: requestTimeout) { [weak self, stats] in
            guard let self, !self.served else { return }
            stats.withLockedValue { $0.closedWithoutRequest &+= 1 }
            channel.close(promise: nil)
        })
        timers.append(context.eventLoop.scheduleTask(in: lifetime) { [stats] in
            guard channel.isActive else { return }
            stats.withLockedValue { $0.closedOverLifetime &+= 1 }
            channel.close(promise: nil)
        })
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !served else { return }
        served = true
        onRequest(unwrapInboundIn(data), context.channel)
    }

    func channelInactive(context: ChannelHandlerContext) {
        for t in timers { t.cancel() }
        timers = []
        stats.withLockedValue { $0.open -= 1 }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

private final class BulkClientHandler: ChannelInboundHandler {
    typealias InboundIn = [UInt8]
    let onFrame: @Sendable ([UInt8], Channel) -> Void
    let onClosed: @Sendable () -> Void
    init(onFrame: @escaping @Sendable ([UInt8], Channel) -> Void, onClosed: @escaping @Sendable () -> Void) {
        self.onFrame = onFrame
        self.onClosed = onClosed
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        onFrame(unwrapInboundIn(data), context.channel)
    }

    func channelInactive(context: ChannelHandlerContext) {
        onClosed()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

/// The shells of the BPF datapath's flows and of the kernel's conntrack table.
public typealias FlowReplicationShell = ReplicationShell<SyncEntry>
public typealias KernelReplicationShell = ReplicationShell<KernelSyncEntry>

/// A count shared by two threads (an Atomic cannot be captured by a closure on its own).
private final class QueuedCount: Sendable {
    let value = Atomic<Int>(0)
}

/// The direct path's socket, peers and what it sent (kept with the core, under its lock).
struct DirectSending {
    let sender: DirectDatagramSender
    let peers: [DirectDatagramSender.Peer]
    /// False once the shell stops (the counters stay for its status).
    var enabled = true
    private(set) var datagrams: UInt64 = 0
    private(set) var bytes: UInt64 = 0
    /// Sends that failed for another reason than room (a firewall's EPERM, no route): dropped, as
    /// the loop's channel drops them; the receiver's nacks and the keepalives repair the gap.
    private(set) var errors: UInt64 = 0

    init(sender: DirectDatagramSender, peers: [DirectDatagramSender.Peer]) {
        self.sender = sender
        self.peers = peers
    }

    /// False when the socket had no room (EAGAIN/ENOBUFS): the caller sends it another way.
    mutating func send(_ b: [UInt8], to p: DirectDatagramSender.Peer) -> Bool {
        switch sender.send(b, to: p) {
        case 0:
            datagrams += 1
            bytes += UInt64(b.count)
            return true
        case EAGAIN, ENOBUFS:
            return false
        default:
            errors += 1
            return true
        }
    }
}
