import Logging
import Synchronization
import TandemConntrack
import TandemCore
import TandemReplication
import TandemSealing
import TandemSync
import TandemSyncWire

/// Writes the kernel entries peers replicate into this node's kernel conntrack table.
public struct ConntrackReplicationTarget: ReplicationDatapath {
    public typealias Entry = KernelSyncEntry
    let sink: ConntrackSink

    public init(sink: ConntrackSink) { self.sink = sink }

    public func installReplicated(_ records: [KernelConnection]) -> Int {
        let before = sink.counters.totalFailures
        sink.upsert(records)
        return max(0, sink.counters.totalFailures - before)
    }

    public func removeReplicated(_ keys: [KernelConnection.Key]) {
        sink.delete(keys)
    }
}

/// Kernel conntrack sync on one node: the source reads the kernel's table (events, dumps), a
/// replication shell of its own carries the entries to the peers on the kernel channels, and the
/// sink writes what the peers send into this node's table. Before this node's provider moves a
/// floating IP to it, `prepareTakeover` has every learned entry in the kernel (keepalived +
/// conntrackd's weak spot: the address came up before the commit finished).
public final class KernelTableSync: Sendable {
    public struct Options: Sendable {
        /// This node's sync address (its id) and the peers', all on `port` (UDP and TCP).
        public var selfAddress: IPv4Address
        public var peers: [IPv4Address]
        public var port: UInt16
        public var key: ClusterKey
        public var mode: ConntrackSinkCore.Mode
        /// The shortest time between reconcile dumps, and the longest: in between, a dump comes
        /// when the replication needs timeouts read (a flow's copies half through their
        /// lifetime). A max not above the min gives a fixed interval.
        public var reconcileSeconds: Double
        public var reconcileMaxSeconds: Double
        public var filter: ConntrackFilter
        /// The network namespace whose table is replicated (a path such as /run/netns/x); nil
        /// for the daemon's own. The sockets of the replication shell stay in the caller's.
        public var netnsPath: String?
        /// The event socket's receive buffer at start and the cap it doubles to on overruns
        /// (conntrackd's NetlinkBufferSize and NetlinkBufferSizeMaxGrowth).
        public var netlinkBufferBytes: Int
        public var netlinkBufferMaxBytes: Int
        /// Runs on the source's thread before each batch of local changes is handed on. For
        /// tests: blocking in it stalls the reader, as a descheduled daemon would.
        public var beforeSourceBatch: (@Sendable () -> Void)?

        public init(selfAddress: IPv4Address, peers: [IPv4Address], port: UInt16, key: ClusterKey,
                    mode: ConntrackSinkCore.Mode = .inject, reconcileSeconds: Double = 30, reconcileMaxSeconds: Double = 3600,
                    filter: ConntrackFilter = .all,
                    netnsPath: String? = nil, netlinkBufferBytes: Int = 4 << 20, netlinkBufferMaxBytes: Int = 64 << 20,
                    beforeSourceBatch: (@Sendable () -> Void)? = nil) {
            self.netlinkBufferBytes = netlinkBufferBytes
            self.netlinkBufferMaxBytes = netlinkBufferMaxBytes
            self.beforeSourceBatch = beforeSourceBatch
            self.selfAddress = selfAddress
            self.peers = peers
            self.port = port
            self.key = key
            self.mode = mode
            self.reconcileSeconds = reconcileSeconds
            self.reconcileMaxSeconds = reconcileMaxSeconds
            self.filter = filter
            self.netnsPath = netnsPath
        }
    }

    public let sink: ConntrackSink
    public let shell: KernelReplicationShell
    private let gate: PublishGate
    private let source: Mutex<ConntrackSource?>
    private let ticker: Mutex<Task<Void, Never>?>
    private let logger: Logger

    private init(sink: ConntrackSink, shell: KernelReplicationShell, gate: PublishGate, logger: Logger) {
        self.sink = sink
        self.shell = shell
        self.gate = gate
        self.logger = logger
        source = Mutex(nil)
        ticker = Mutex(nil)
    }

    /// Opens the sink, starts the replication shell and then the source (whose first dump
    /// replicates the table as it is). Throws a clear message when a socket cannot be opened.
    public static func start(_ o: Options, logger: Logger) async throws(KernelTableSyncError) -> KernelTableSync {
        let sink: ConntrackSink
        do {
            sink = try ConntrackSink(options: .init(settings: .init(mode: o.mode), netnsPath: o.netnsPath))
        } catch {
            throw KernelTableSyncError(message: "\(error)")
        }
        let shell = KernelReplicationShell(
            config: ReplicationShellConfig(
                selfID: o.selfAddress.value, bindAddress: o.selfAddress, port: o.port,
                peers: o.peers.map { ReplicationPeer(id: $0.value, address: $0, port: o.port) }, key: o.key),
            datapath: ConntrackReplicationTarget(sink: sink), logger: logger)
        do { try await shell.start() } catch {
            sink.close()
            throw KernelTableSyncError(message: "cannot listen on \(o.selfAddress):\(o.port): \(error)")
        }
        let gate = PublishGate()
        let sync = KernelTableSync(sink: sink, shell: shell, gate: gate, logger: logger)
        var sourceOptions = ConntrackSource.Options(
            settings: .init(bufferSize: o.netlinkBufferBytes, maxBufferSize: o.netlinkBufferMaxBytes,
                            reconcileInterval: o.reconcileSeconds, reconcileMaxInterval: o.reconcileMaxSeconds),
            filter: o.filter.excludingNodeTraffic([o.selfAddress] + o.peers), netnsPath: o.netnsPath,
            sinkPortID: sink.portID)
        // Reading the whole kernel table is the dear part of holding it (5-6 s of CPU per million
        // entries per node, measured): read it when the replication needs timeouts, not on a fixed beat.
        sourceOptions.reconcileDue = { [shell] in
            let ms = shell.scanDueMillis
            let (ns, overflow) = ms.multipliedReportingOverflow(by: 1_000_000)
            return overflow ? nil : ns
        }
        let source = ConntrackSource(
            options: sourceOptions,
            logger: logger,
            onChanges: { [shell, gate, before = o.beforeSourceBatch] changes in
                before?()
                guard gate.admit(changes.count) else { return }
                shell.submit(changes: changes.map { (record: $0.0, deleted: $0.deleted) })
            },
            onDump: { [shell, gate] entries, startedNanos in
                guard gate.admit(0) else { return }
                shell.submit(scan: entries.map { (record: $0.0, fromPeer: $0.learned) },
                             readAtMillis: startedNanos / 1_000_000)
            })
        do { try source.start() } catch {
            await shell.stop()
            sink.close()
            throw KernelTableSyncError(message: "\(error)")
        }
        sync.source.withLock { $0 = source }
        // Retries of failed injections that are due (the sink writes everything else at once).
        let tick = Task.detached { [sink] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(50))
                sink.tick()
            }
        }
        sync.ticker.withLock { $0 = tick }
        logger.info("kernel conntrack sync started", metadata: [
            "mode": "\(o.mode.rawValue)", "port": "\(o.port)", "sinkPort": "\(sink.portID)",
        ])
        return sync
    }

    /// Whether this node's kernel changes go to the peers. Only the node that carries the
    /// traffic (the MASTER) has changes to announce; a node stepping down is about to lose its
    /// address, and its kernel then kills every entry masqueraded to it (masquerade's device and
    /// address cleanup): those destroys are not connection ends, and sent on they would delete
    /// the new MASTER's copies. The HA shell turns this off before it releases the address and
    /// on when it takes over; without HA it stays on. Entries learned from peers still arrive.
    public func setPublishing(_ on: Bool) {
        if gate.set(on) {
            logger.info(on ? "conntrack changes published (this node carries the traffic)"
                           : "conntrack changes held back (this node is not MASTER)")
        }
    }

    public var isPublishing: Bool { gate.isOn }
    /// Local changes not sent because this node was not publishing.
    public var heldBackChanges: UInt64 { gate.heldBack }

    /// Whether this node holds the cluster's kernel entries (its bulk transfer is done).
    public var inSync: Bool { shell.inSync }

    /// The source's counters and table size.
    public var sourceStats: ConntrackSource.Stats? { source.withLock { $0?.currentStats } }

    /// The source's, the sink's and the publish gate's counters under `conntrack_` names, for the
    /// node's status and metrics (tandem_conntrack_*). Every field of both cores' counters, so
    /// one added there is reported too.
    public func counters() -> [String: UInt64] {
        var out: [String: UInt64] = [:]
        func add(_ prefix: String, _ value: Any) {
            for child in Mirror(reflecting: value).children {
                guard let label = child.label else { continue }
                if let n = child.value as? Int { out["conntrack_\(prefix)_\(label)"] = UInt64(max(0, n)) }
            }
        }
        if let s = sourceStats {
            add("source", s.counters)
            out["conntrack_source_dumped_entries"] = UInt64(max(0, s.lastDumpEntries))
        }
        let sink = sink.counters
        add("sink", sink)
        for (reason, n) in sink.failures { out["conntrack_sink_failures_\(reason)"] = UInt64(max(0, n)) }
        out["conntrack_held_back_changes"] = heldBackChanges
        out["conntrack_publishing"] = isPublishing ? 1 : 0
        return out
    }

    /// Every learned entry into the kernel table before the floating IP moves here.
    @discardableResult
    public func prepareTakeover() -> ConntrackSinkCore.CommitReport {
        let report = sink.commit()
        logger.info("conntrack entries committed for takeover", metadata: ["report": "\(report)"])
        return report
    }

    public func stop() async {
        ticker.withLock { $0?.cancel() }
        let s = source.withLock { s -> ConntrackSource? in
            defer { s = nil }
            return s
        }
        s?.stop()
        await shell.stop()
        sink.close()
    }
}

public struct KernelTableSyncError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

/// Whether local kernel changes are sent, and how many were not (readable from any thread).
final class PublishGate: Sendable {
    private let state = Mutex((on: true, heldBack: UInt64(0)))

    /// Whether `n` changes (0 for a scan) may go out; counts them when not.
    func admit(_ n: Int) -> Bool {
        state.withLock { s in
            if !s.on { s.heldBack &+= UInt64(n) }
            return s.on
        }
    }

    /// Sets the gate; returns whether it changed.
    func set(_ on: Bool) -> Bool {
        state.withLock { s in
            defer { s.on = on }
            return s.on != on
        }
    }

    var isOn: Bool { state.withLock { $0.on } }
    var heldBack: UInt64 { state.withLock { $0.heldBack } }
}
