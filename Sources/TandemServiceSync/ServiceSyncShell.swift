import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import TandemCore
import TandemReplication
import TandemSync
import TandemSyncWire
import TandemSealing
import TandemStatus

/// The node's side of service sharing: the table the merge rule keeps (ServiceSyncCore) lives
/// with the node's services, and the shell asks for it through this protocol.
public protocol ServiceSyncTarget: Sendable {
    func serviceSyncDigest() async -> ServiceDigest
    func serviceSyncRecords() async -> [ServiceRecord]
    /// Merges what a peer sent, and applies the winners to the node's table.
    func serviceSyncMerge(_ records: [ServiceRecord], peerMaxVersion: UInt64, from peer: UInt32) async
    /// This node's endpoint verdicts (proto/SPEC.md §14.5), sent after the digest on every exchange.
    func serviceSyncVerdicts() async -> VerdictSet
    /// A peer's whole verdict set; `epoch` is the sender's boot epoch.
    func serviceSyncReceive(_ verdicts: VerdictSet, from peer: UInt32, epoch: UInt64) async
}

extension ServiceSyncTarget {
    /// A node that keeps no verdicts publishes an empty set.
    public func serviceSyncVerdicts() async -> VerdictSet { VerdictSet(generation: 1, services: [], hosts: []) }
    public func serviceSyncReceive(_ verdicts: VerdictSet, from peer: UInt32, epoch: UInt64) async {}
}

public struct ServiceSyncPeer: Sendable, Hashable {
    public var id: UInt32
    public var address: IPv4Address
    public init(id: UInt32, address: IPv4Address) {
        self.id = id
        self.address = address
    }
}

public struct ServiceSyncShellConfig: Sendable {
    public var selfID: UInt32
    public var bindAddress: IPv4Address
    /// TCP port every node serves the config channel on (default 11114).
    public var port: UInt16
    public var peers: [ServiceSyncPeer]
    public var key: ClusterKey
    /// Exchange period with every peer; a local change exchanges at once.
    public var interval: Duration = .seconds(2)
    /// An exchange that takes longer is abandoned.
    public var exchangeTimeout: Duration = .seconds(5)
    /// Most records taken from one peer in one exchange (live services are at most 256 and
    /// tombstones at most 4096 on a well-behaved peer).
    public var maxRecordsPerExchange = 8192
    /// Connections served at once; more are closed on accept. Peers need one each at a time, so
    /// this only bounds what a stranger (unauthenticated until its first frame) can hold open.
    public var maxServedConnections = 16

    public init(selfID: UInt32, bindAddress: IPv4Address, port: UInt16, peers: [ServiceSyncPeer], key: ClusterKey) {
        self.selfID = selfID
        self.bindAddress = bindAddress
        self.port = port
        self.peers = peers
        self.key = key
    }
}

enum ServiceSyncError: Error, CustomStringConvertible {
    case closed
    case unexpected(String)
    case dropped(SyncDecodeError)
    case wrongSender(UInt32, expected: UInt32)
    case tooManyRecords(Int)
    case verdicts(VerdictAssemblyError)
    case timedOut

    var description: String {
        switch self {
        case .closed: "the peer closed the connection"
        case .unexpected(let what): "unexpected \(what)"
        case .dropped(let e): "frame dropped: \(e)"
        case .wrongSender(let s, let e): "frame from node \(s), expected \(e)"
        case .tooManyRecords(let n): "more than \(n) records"
        case .verdicts(let e): "verdict set refused: \(e)"
        case .timedOut: "exchange timed out"
        }
    }
}

/// Exchanges service tables with every peer over the config channel (proto/SPEC.md §14.3):
/// digests first, whole tables only when they differ. TCP, sealed frames, SwiftNIO's async
/// channels; one exchange per peer at a time.
public final class ServiceSyncShell: Sendable {
    typealias Connection = NIOAsyncChannel<[UInt8], ByteBuffer>

    private let config: ServiceSyncShellConfig
    private let target: any ServiceSyncTarget
    private let logger: Logger
    private let group: MultiThreadedEventLoopGroup
    /// One sealer for this shell's lifetime: it alone seals on the config channel, so its
    /// sequence numbers never repeat under this (sender, epoch) subkey.
    private let sealer: NIOLockedValueBox<SyncSealer>
    private let opener: NIOLockedValueBox<SyncOpener>
    private let peerState: NIOLockedValueBox<[UInt32: ServiceSyncStatus.Peer]>
    private let lastExchange: NIOLockedValueBox<[UInt32: ContinuousClock.Instant]>
    private let differing = NIOLockedValueBox<[UInt32: Int]>([:])
    private let tasks = NIOLockedValueBox<[Task<Void, Never>]>([])
    private let server = NIOLockedValueBox<Channel?>(nil)
    private let stopped = NIOLockedValueBox(false)
    /// Connections being served now, and those closed on accept for the cap.
    private let served = NIOLockedValueBox(0)
    private let refusedConnections = NIOLockedValueBox<UInt64>(0)
    /// Verdict sets whose parts did not fit together (each part decoded on its own).
    private let refusedVerdicts = NIOLockedValueBox<UInt64>(0)
    private let kicks: AsyncStream<Void>
    private let kicker: AsyncStream<Void>.Continuation

    public init(config: ServiceSyncShellConfig, target: any ServiceSyncTarget, logger: Logger) {
        self.config = config
        self.target = target
        self.logger = logger
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let epoch = wallClockMicros()
        sealer = NIOLockedValueBox(SyncSealer(key: config.key, sender: config.selfID, epoch: epoch))
        opener = NIOLockedValueBox(SyncOpener(key: config.key, selfID: config.selfID, members: Set(config.peers.map(\.id))))
        peerState = NIOLockedValueBox(Dictionary(uniqueKeysWithValues: config.peers.map {
            ($0.id, ServiceSyncStatus.Peer(node: $0.id, address: "\($0.address)"))
        }))
        lastExchange = NIOLockedValueBox([:])
        (kicks, kicker) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Binds the config port and starts exchanging.
    public func start() async throws {
        let listener = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: "\(config.bindAddress)", port: Int(config.port)) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try Self.wrap(channel)
                }
            }
        server.withLockedValue { $0 = listener.channel }
        let serve = Task { [self] in
            do {
                try await listener.executeThenClose { inbound in
                    try await withThrowingDiscardingTaskGroup { children in
                        for try await connection in inbound {
                            let admitted = served.withLockedValue { n -> Bool in
                                guard n < config.maxServedConnections else { return false }
                                n += 1
                                return true
                            }
                            guard admitted else {
                                refusedConnections.withLockedValue { $0 &+= 1 }
                                // Through executeThenClose, so the channel's writer is finished
                                // (NIO traps on a writer dropped unfinished).
                                children.addTask { try? await connection.executeThenClose { _, _ in } }
                                continue
                            }
                            children.addTask {
                                await self.serve(connection)
                                self.served.withLockedValue { $0 -= 1 }
                            }
                        }
                    }
                }
            } catch {
                logger.debug("service sync listener ended", metadata: ["error": "\(error)"])
            }
        }
        let exchange = Task { [self] in await runExchanges() }
        tasks.withLockedValue { $0 = [serve, exchange] }
        logger.info("service sharing on", metadata: ["port": "\(config.port)", "peers": "\(config.peers.count)"])
    }

    /// Stops exchanging and closes the port. Idempotent: the node's shutdown path may call it
    /// twice, and a second close on a loop that is gone would never complete.
    public func stop() async {
        let first = stopped.withLockedValue { s -> Bool in
            defer { s = true }
            return !s
        }
        guard first else { return }
        kicker.finish()
        let running = tasks.withLockedValue { t in defer { t = [] }; return t }
        for t in running { t.cancel() }
        if let ch = server.withLockedValue({ s in defer { s = nil }; return s }) { try? await ch.close() }
        for t in running { await t.value }
        try? await group.shutdownGracefully()
    }

    /// A local change (a service, or this node's verdicts): exchange with every peer now rather
    /// than at the next period.
    public func changed() {
        kicker.yield()
    }

    public func status(selfDigest: ServiceDigest, tombstones: Int, counters: ServiceSyncCounters, refused: UInt64)
        -> ServiceSyncStatus
    {
        let now = ContinuousClock.now
        let times = lastExchange.withLockedValue { $0 }
        let peers = peerState.withLockedValue { $0 }.values.sorted { $0.node < $1.node }.map { p -> ServiceSyncStatus.Peer in
            var p = p
            if let t = times[p.node] { p.lastExchangeSecondsAgo = Double((now - t).components.seconds) }
            return p
        }
        var dropped: [String: UInt64] = [:]
        for (reason, n) in opener.withLockedValue({ $0.counters }) { dropped[reason.rawValue] = n }
        let refused = refusedConnections.withLockedValue { $0 }
        if refused > 0 { dropped["connectionsOverCap"] = refused }
        let badSets = refusedVerdicts.withLockedValue { $0 }
        if badSets > 0 { dropped["verdictSetsRefused"] = badSets }
        return ServiceSyncStatus(node: config.selfID, services: selfDigest.count, digest: digestHex(selfDigest.digest),
                                 tombstones: tombstones, peers: peers, counters: counters, dropped: dropped, refused: refused)
    }

    // MARK: Exchanges

    private static func wrap(_ channel: Channel) throws -> Connection {
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(SyncFrameDecoder()))
        return try Connection(wrappingChannelSynchronously: channel)
    }

    private func runExchanges() async {
        // Kicks and the period both start a round; a round with every peer runs concurrently.
        let ticker = Task { [kicker, interval = config.interval] in
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                kicker.yield()
            }
        }
        defer { ticker.cancel() }
        kicker.yield()
        for await _ in kicks {
            if Task.isCancelled { break }
            await withTaskGroup(of: Void.self) { round in
                for peer in config.peers {
                    round.addTask { await self.exchange(with: peer) }
                }
            }
        }
    }

    private func exchange(with peer: ServiceSyncPeer) async {
        do {
            let connection = try await ClientBootstrap(group: group)
                .connectTimeout(.seconds(1))
                .connect(host: "\(peer.address)", port: Int(config.port)) { channel in
                    channel.eventLoop.makeCompletedFuture { try Self.wrap(channel) }
                }
            try await bounded(connection) {
                try await connection.executeThenClose { inbound, outbound in
                    try await self.run(inbound: inbound, outbound: outbound, expecting: peer.id)
                }
            }
        } catch {
            note(peer.id, error: "\(error)")
            logger.debug("service exchange failed", metadata: ["peer": "\(peer.address)", "error": "\(error)"])
        }
    }

    private func serve(_ connection: Connection) async {
        do {
            try await bounded(connection) {
                try await connection.executeThenClose { inbound, outbound in
                    try await self.run(inbound: inbound, outbound: outbound, expecting: nil)
                }
            }
        } catch {
            logger.debug("service exchange (served) failed", metadata: ["error": "\(error)"])
        }
    }

    /// Runs `body`, closing the connection when it takes longer than the exchange timeout.
    private func bounded(_ connection: Connection, _ body: @escaping @Sendable () async throws -> Void) async throws {
        try await withThrowingTaskGroup(of: Bool.self) { g in
            g.addTask { try await body(); return true }
            g.addTask { [timeout = config.exchangeTimeout] in
                try await Task.sleep(for: timeout)
                return false
            }
            let finished = try await g.next() ?? false
            g.cancelAll()
            if !finished {
                connection.channel.close(promise: nil)
                throw ServiceSyncError.timedOut
            }
        }
    }

    /// One exchange, the same on both ends: digests and verdict sets, then whole tables both ways
    /// (sent while receiving, so neither side's send buffer can block the other) when the digests
    /// differ.
    private func run(inbound: NIOAsyncChannelInboundStream<[UInt8]>, outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>,
                     expecting expected: UInt32?) async throws {
        var frames = inbound.makeAsyncIterator()
        let mine = await target.serviceSyncDigest()
        // A verdict set is at most 16 frames (§14.5): small enough to write before reading.
        let verdicts = await target.serviceSyncVerdicts().parts().map { frame(.endpointVerdicts($0)) }
        try await Self.write([frame(.serviceDigest(mine))] + verdicts, to: outbound)
        let (peer, first, header) = try await receive(&frames, expecting: expected)
        guard case .serviceDigest(let theirs) = first else { throw ServiceSyncError.unexpected("\(first.type.wireName) first") }
        var assembler = VerdictAssembler()
        while true {
            let (_, m, _) = try await receive(&frames, expecting: peer)
            guard case .endpointVerdicts(let part) = m else {
                throw ServiceSyncError.unexpected("\(m.type.wireName) where endpoint verdicts were due")
            }
            let set: VerdictSet?
            do { set = try assembler.add(part) } catch {
                refusedVerdicts.withLockedValue { $0 &+= 1 }
                throw ServiceSyncError.verdicts(error)
            }
            if let set {
                await target.serviceSyncReceive(set, from: peer, epoch: header.epoch)
                break
            }
        }
        let agree = theirs.count == mine.count && theirs.digest == mine.digest
        if agree {
            await target.serviceSyncMerge([], peerMaxVersion: theirs.maxVersion, from: peer)
            note(peer, digest: theirs, agrees: true)
            return
        }
        let records = await target.serviceSyncRecords()
        let messages = ServiceSyncCore.frames(records).map { SyncMessage.serviceRecords($0) }
            + [.serviceRecords(ServiceRecords(records: []))]
        let encoded = messages.map(frame)
        async let sent: Void = Self.write(encoded, to: outbound)
        var received: [ServiceRecord] = []
        while true {
            let (_, m, _) = try await receive(&frames, expecting: peer)
            guard case .serviceRecords(let r) = m else { throw ServiceSyncError.unexpected(m.type.wireName) }
            if r.records.isEmpty { break }
            received += r.records
            if received.count > config.maxRecordsPerExchange {
                throw ServiceSyncError.tooManyRecords(config.maxRecordsPerExchange)
            }
        }
        try await sent
        await target.serviceSyncMerge(received, peerMaxVersion: theirs.maxVersion, from: peer)
        // Both ends now hold the winners; a second exchange right away confirms it (only once in
        // a row, so a node that cannot apply a record does not spin).
        if note(peer, digest: theirs, agrees: false) == 1 { kicker.yield() }
    }

    private static func write(_ frames: [ByteBuffer], to outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>) async throws {
        for f in frames { try await outbound.write(f) }
    }

    private func frame(_ m: SyncMessage) -> ByteBuffer {
        ByteBuffer(bytes: sealer.withLockedValue { $0.seal(m, channel: .config) })
    }

    private func receive(_ frames: inout NIOAsyncChannelInboundStream<[UInt8]>.AsyncIterator, expecting: UInt32?)
        async throws -> (UInt32, SyncMessage, SyncHeader)
    {
        guard let bytes = try await frames.next() else { throw ServiceSyncError.closed }
        switch opener.withLockedValue({ $0.open(bytes, channel: .config) }) {
        case .failure(let e):
            logger.debug("service sync frame dropped", metadata: ["reason": "\(e)"])
            throw ServiceSyncError.dropped(e)
        case .success(let (header, message)):
            if let expecting, header.sender != expecting {
                throw ServiceSyncError.wrongSender(header.sender, expected: expecting)
            }
            return (header.sender, message, header)
        }
    }

    /// Records an exchange's outcome; returns how many exchanges in a row found the tables
    /// different.
    @discardableResult
    private func note(_ peer: UInt32, digest: ServiceDigest, agrees: Bool) -> Int {
        lastExchange.withLockedValue { $0[peer] = .now }
        let streak = differing.withLockedValue { d in
            d[peer] = agrees ? 0 : (d[peer] ?? 0) + 1
            return d[peer] ?? 0
        }
        peerState.withLockedValue { all in
            guard var p = all[peer] else { return }
            p.services = digest.count
            p.digest = digestHex(digest.digest)
            p.agrees = agrees
            p.lastError = nil
            all[peer] = p
        }
        return streak
    }

    private func note(_ peer: UInt32, error: String) {
        peerState.withLockedValue { all in
            guard var p = all[peer] else { return }
            p.lastError = error
            // Unreachable: whether it still holds the same services is unknown.
            p.agrees = nil
            all[peer] = p
        }
    }
}
