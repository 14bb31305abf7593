import CNetfilterConntrack
import Foundation
import Logging
import TandemCore

/// The kernel conntrack source's I/O shell: one dedicated thread (optionally moved into a
/// network namespace first) owns a NETLINK_NETFILTER socket subscribed to the conntrack NEW,
/// UPDATE and DESTROY groups, reads events, runs `ConntrackSourceCore`, and carries out its
/// actions: buffer sizing (SO_RCVBUFFORCE), table dumps on a second socket (initial, after an
/// overrun, periodic reconcile). Changes go to `onChanges` on that thread, in order.
public final class ConntrackSource: @unchecked Sendable {
    public struct Options: Sendable {
        public var settings: ConntrackSourceCore.Settings
        public var filter: ConntrackFilter
        /// NETLINK_BROADCAST_ERROR: the kernel keeps and re-delivers events our socket could not
        /// take (reliable delivery). ENOBUFS is still reported, and still triggers a resync.
        public var reliable: Bool
        /// A network namespace (path, e.g. /run/netns/x) the reader thread enters before opening
        /// its sockets; nil for the caller's.
        public var netnsPath: String?
        /// How long a read waits before the thread checks the stop flag and ticks, milliseconds.
        public var pollMillis: Int32
        /// The netlink port id of this node's sink (`ConntrackSink.portID`): events it caused are
        /// entries learned from peers, tracked but not delivered.
        public var sinkPortID: UInt32?
        /// With an adaptive reconcile (`Settings.reconcileMaxInterval`): when the replication
        /// next needs the table read, monotonic ns (asked on the reader thread at every tick).
        public var reconcileDue: (@Sendable () -> UInt64?)?

        public init(settings: ConntrackSourceCore.Settings = .init(), filter: ConntrackFilter = .all,
                    reliable: Bool = true, netnsPath: String? = nil, pollMillis: Int32 = 100, sinkPortID: UInt32? = nil) {
            self.sinkPortID = sinkPortID
            self.settings = settings
            self.filter = filter
            self.reliable = reliable
            self.netnsPath = netnsPath
            self.pollMillis = pollMillis
        }
    }

    public struct Stats: Sendable {
        public var counters: ConntrackSourceCore.Counters
        public var entries: Int
        public var running: Bool
        /// Last dump: entries and seconds.
        public var lastDumpEntries: Int
        public var lastDumpSeconds: Double
        /// net.netfilter.nf_conntrack_events of the namespace at start (nil when unreadable).
        public var kernelEvents: Int?
    }

    public typealias Handler = @Sendable ([(KernelConnection, deleted: Bool)]) -> Void
    /// Every dump's entries that pass the filter, each marked when the sink wrote it (learned
    /// from a peer, unchanged since), with the monotonic nanoseconds the dump began at: what a
    /// replication core's table scan needs (refreshes for peers, takeovers, missed deletes).
    public typealias DumpHandler = @Sendable (_ entries: [(KernelConnection, learned: Bool)], _ startedNanos: UInt64) -> Void

    private let options: Options
    private let onChanges: Handler
    private let onDump: DumpHandler?
    private let logger: Logger
    private let lock = NSLock()
    private var stopRequested = false
    private var stats: Stats
    private var thread: Thread?
    private let finished = DispatchSemaphore(value: 0)
    private let ready = DispatchSemaphore(value: 0)
    private var startError: String?
    private var started = false

    public init(options: Options = .init(), logger: Logger = Logger(label: "tandem.conntrack"),
                onChanges: @escaping Handler, onDump: DumpHandler? = nil) {
        self.options = options
        self.onChanges = onChanges
        self.onDump = onDump
        self.logger = logger
        stats = Stats(counters: .init(), entries: 0, running: false, lastDumpEntries: 0, lastDumpSeconds: 0, kernelEvents: nil)
    }

    public var currentStats: Stats { lock.withLock { stats } }

    /// Starts the reader thread; returns once it is subscribed (events from then on are seen) and
    /// its initial dump has been delivered. Throws when the namespace or socket cannot be opened.
    public func start() throws {
        let first = lock.withLock { () -> Bool in
            defer { started = true }
            return !started
        }
        guard first else { throw ConntrackSourceError(message: "conntrack source already started") }
        let t = Thread { [self] in self.run() }
        t.name = "tandem-conntrack"
        t.stackSize = 1 << 20
        thread = t
        t.start()
        ready.wait()
        if let e = lock.withLock({ startError }) {
            finished.wait()
            throw ConntrackSourceError(message: e)
        }
    }

    /// Asks the thread to stop and waits for it (at most one poll interval plus a running dump).
    public func stop() {
        let wasRunning: Bool = lock.withLock {
            let r = stats.running && !stopRequested
            stopRequested = true
            return r
        }
        if wasRunning { finished.wait() }
    }

    private var shouldStop: Bool { lock.withLock { stopRequested } }

    // MARK: The thread

    private func failStart(_ message: String) {
        lock.withLock { startError = message }
        ready.signal()
        finished.signal()
    }

    private func run() {
        if let path = options.netnsPath {
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { return failStart("netns \(path): \(String(cString: strerror(errno)))") }
            let rc = ctb_setns_net(fd)
            let e = errno
            close(fd)
            guard rc == 0 else { return failStart("setns \(path): \(String(cString: strerror(e)))") }
        }
        var err: Int32 = 0
        guard let sock = tct_open(0b111, options.reliable ? 1 : 0, &err) else {
            return failStart("ctnetlink event socket: \(String(cString: strerror(-err)))")
        }
        defer { tct_close(sock) }
        let fd = tct_fd(sock)
        let kernelEvents = Self.readKernelEventsSetting()
        if kernelEvents == 0 {
            logger.warning("net.netfilter.nf_conntrack_events is 0: the kernel sends no conntrack events; only dumps will find changes")
        }
        var core = ConntrackSourceCore(settings: options.settings, filter: options.filter)
        lock.withLock {
            stats.running = true
            stats.kernelEvents = kernelEvents
        }
        let bufSize = 256 << 10
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: bufSize, alignment: 8)
        defer { buf.deallocate() }
        execute(core.onStart(now: monotonicNanoseconds()), core: &core, fd: fd, buf: buf)
        publish(core)
        ready.signal()
        while !shouldStop {
            var n = tct_recv(fd, buf.baseAddress, bufSize, options.pollMillis)
            if n >= 0 {
                // Every event already queued goes in one batch (the kernel sends one datagram per
                // event): a burst then leaves in full datagrams, a lone event alone and at once.
                var changes: [(KernelConnection, deleted: Bool)] = []
                var reads = 0
                while n >= 0 {
                    readEvents(UnsafeRawBufferPointer(rebasing: buf[0..<Int(n)]), core: &core, into: &changes)
                    reads += 1
                    guard reads < Self.readsPerBatch else { break }
                    n = tct_recv(fd, buf.baseAddress, bufSize, -1)
                }
                if !changes.isEmpty {
                    publish(core)
                    onChanges(changes)
                }
            }
            // The first read's failure, or the one that ended the drain: an overrun met while
            // draining is handled after the batch (its resync covers that batch too).
            if n == -ENOBUFS {
                logger.notice("conntrack event socket overrun (ENOBUFS) at \(core.bufferSize) bytes: resynchronising from a dump")
                execute(core.onOverrun(), core: &core, fd: fd, buf: buf)
            } else if n == -EMSGSIZE {
                core.countMalformed()
            } else if n < 0 && n != -EAGAIN && n != -EINTR {
                core.countMalformed()
                logger.debug("conntrack event socket: \(String(cString: strerror(-n)))")
            }
            // With events off the dumps are all the source sees: every one the minimum allows.
            let due = kernelEvents == 0 ? 0 : options.reconcileDue?()
            execute(core.onTick(now: monotonicNanoseconds(), dueNanos: due), core: &core, fd: fd, buf: buf)
            publish(core)
        }
        lock.withLock { stats.running = false }
        publish(core)
        finished.signal()
    }

    private func publish(_ core: ConntrackSourceCore) {
        lock.withLock {
            stats.counters = core.counters
            stats.entries = core.known.count
        }
    }

    /// Parses one datagram of events, feeding the core; changes are appended in order.
    private func readEvents(_ data: UnsafeRawBufferPointer, core: inout ConntrackSourceCore,
                            into changes: inout [(KernelConnection, deleted: Bool)]) {
        let (messages, malformed) = NetlinkWalk.split(data)
        if malformed { core.countMalformed() }
        for m in messages {
            switch NetlinkWalk.classify(m, in: data) {
            case .event(let kind):
                guard let c = parse(m, in: data) else { core.countMalformed(); continue }
                let fromSink = m.portID != 0 && m.portID == options.sinkPortID
                for case .deliver(let list) in core.onEvent(kind, c, fromSink: fromSink) {
                    changes.append(contentsOf: list.map { ($0.connection, deleted: $0.deleted) })
                }
            case .malformed: core.countMalformed()
            case .other, .done, .error: core.countSkipped()
            }
        }
    }

    private func parse(_ m: NetlinkMessage, in data: UnsafeRawBufferPointer) -> KernelConnection? {
        ConntrackDump.parse(m, in: data)
    }

    private func execute(_ actions: [ConntrackSourceCore.Action], core: inout ConntrackSourceCore,
                         fd: Int32, buf: UnsafeMutableRawBufferPointer) {
        var queue = actions
        // Dumps for the consumer's scan go after the corrections they caused (in the queue).
        var scans: [([(KernelConnection, learned: Bool)], UInt64)] = []
        defer { for (entries, start) in scans { onDump?(entries, start) } }
        while !queue.isEmpty {
            let a = queue.removeFirst()
            switch a {
            case .deliver(let list):
                publish(core)   // counters first: a consumer that sees the changes sees why
                onChanges(list.map { ($0.connection, deleted: $0.deleted) })
            case .setBuffer(let size):
                let got = tct_set_rcvbuf(fd, Int32(clamping: size))
                if got > 0 {
                    core.onBufferSet(actual: Int(got))
                    logger.info("conntrack event socket buffer: \(got) bytes")
                } else {
                    logger.warning("conntrack event socket buffer \(size): \(String(cString: strerror(-got)))")
                }
            case .startDump(let reason):
                if reason == .resync {
                    // What is queued is older than the dump will be: apply it first, so a stale
                    // event cannot overwrite (or resurrect) what the dump finds. Bounded.
                    drain(fd: fd, buf: buf, core: &core)
                }
                let start = monotonicNanoseconds()
                switch dump(buf: buf) {
                case .success(let (entries, malformed)):
                    core.countMalformed(malformed)
                    let secs = Double(monotonicNanoseconds() - start) / 1e9
                    lock.withLock {
                        stats.lastDumpEntries = entries.count
                        stats.lastDumpSeconds = secs
                    }
                    logger.debug("conntrack \(reason.rawValue) dump: \(entries.count) entries in \(secs) s")
                    queue.append(contentsOf: core.onDump(entries, reason: reason, now: monotonicNanoseconds()))
                    if onDump != nil {
                        let filter = core.filter
                        scans.append((entries.filter { filter.matches($0) }.map { ($0, learned: core.isLearned($0.key)) }, start))
                    }
                case .failure(let e):
                    logger.warning("conntrack \(reason.rawValue) dump failed: \(e.message)")
                    queue.append(contentsOf: core.onDumpFailed(reason: reason, now: monotonicNanoseconds()))
                }
            }
        }
    }

    /// Reads what is already queued on the event socket (up to a bound), without waiting.
    private func drain(fd: Int32, buf: UnsafeMutableRawBufferPointer, core: inout ConntrackSourceCore) {
        var changes: [(KernelConnection, deleted: Bool)] = []
        var budget = max(core.bufferSize, 1 << 20) * 2
        while budget > 0 {
            let n = tct_recv(fd, buf.baseAddress, buf.count, -1)
            if n == -ENOBUFS { core.countSkipped(); continue }   // the resync about to run covers it
            guard n > 0 else { break }
            budget -= Int(n)
            readEvents(UnsafeRawBufferPointer(rebasing: buf[0..<Int(n)]), core: &core, into: &changes)
        }
        if !changes.isEmpty { onChanges(changes) }
    }

    /// A full IPv4 table dump on a fresh socket (ConntrackDump).
    private func dump(buf: UnsafeMutableRawBufferPointer) -> Result<([KernelConnection], Int), ConntrackSourceError> {
        ConntrackDump.ipv4(buf: buf)
    }

    /// Datagrams read per wakeup before the batch is handed on (bounds a batch's latency in a
    /// long burst: 256 events are about a millisecond of the source's work).
    static var readsPerBatch: Int { 256 }

    static func readKernelEventsSetting() -> Int? {
        guard let s = try? String(contentsOfFile: "/proc/sys/net/netfilter/nf_conntrack_events", encoding: .utf8) else { return nil }
        return Int(s.trimmingCharacters(in: .whitespacesAndNewlines))
    }
}

public struct ConntrackSourceError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}
