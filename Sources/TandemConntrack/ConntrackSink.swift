import CNetfilterConntrack
import Foundation
import Synchronization
import TandemCore

/// The kernel conntrack sink's I/O shell: one ctnetlink request socket, opened in a given
/// network namespace (a netlink socket stays in the namespace it was created in, so after the
/// open any thread may use it), running `ConntrackSinkCore`. Calls are synchronous: `apply`
/// (inject mode) and `commit` return once every request they sent has its ack, so a caller that
/// moves the floating IP after `commit()` returns knows the kernel has every entry. They block
/// for the batch's round trips: call them off an event loop. All calls are serialised.
public final class ConntrackSink: Sendable {
    public struct Options: Sendable {
        public var settings: ConntrackSinkCore.Settings
        /// A network namespace (e.g. /run/netns/x) to open the socket in; nil for the caller's.
        public var netnsPath: String?
        /// Send and receive buffer of the socket (forced past the sysctl limits when root): a
        /// batch is one datagram, and its acks wait in the receive buffer until read.
        public var bufferBytes: Int
        /// How long to wait for a batch's missing acks before counting them lost (then retried).
        public var ackTimeoutMillis: Int32

        public init(settings: ConntrackSinkCore.Settings = .init(), netnsPath: String? = nil,
                    bufferBytes: Int = 8 << 20, ackTimeoutMillis: Int32 = 1000) {
            self.settings = settings
            self.netnsPath = netnsPath
            self.bufferBytes = bufferBytes
            self.ackTimeoutMillis = ackTimeoutMillis
        }
    }

    /// What the socket and scratch buffers are; only touched under `state`'s lock.
    private struct State: ~Copyable {
        var core: ConntrackSinkCore
        let sock: OpaquePointer
        let send: UnsafeMutableRawBufferPointer
        let recv: UnsafeMutableRawBufferPointer
        var closed = false
    }

    private let state: Mutex<State>
    private let published: Mutex<ConntrackSinkCore.Counters>
    private let ackTimeoutMillis: Int32
    /// The socket's netlink port id. ctnetlink stamps the events a request causes with the
    /// requester's port id (nlmsg_pid), so a source in the same namespace can tell the entries
    /// this sink wrote from the kernel's own and not send them back to the peer.
    public let portID: UInt32
    static let sendBufferSize = 256 << 10
    static let recvBufferSize = 256 << 10

    public init(options: Options = .init()) throws {
        let sock = try Self.inNamespace(options.netnsPath) { () throws(ConntrackSourceError) -> OpaquePointer in
            var err: Int32 = 0
            guard let s = tct_sink_open(Int32(clamping: options.bufferBytes), &err) else {
                throw ConntrackSourceError(message: "ctnetlink sink socket: \(String(cString: strerror(-err)))")
            }
            return s
        }
        portID = mnl_socket_get_portid(sock)   // before the socket is handed to the lock
        let send = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.sendBufferSize, alignment: 8)
        let recv = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.recvBufferSize, alignment: 8)
        state = Mutex(State(core: ConntrackSinkCore(settings: options.settings), sock: sock, send: send, recv: recv))
        published = Mutex(ConntrackSinkCore.Counters())
        ackTimeoutMillis = options.ackTimeoutMillis
    }

    deinit {
        close()
    }

    /// Closes the socket; later calls do nothing.
    public func close() {
        state.withLock { s in
            guard !s.closed else { return }
            s.closed = true
            tct_close(s.sock)
            s.send.deallocate()
            s.recv.deallocate()
        }
    }

    public var counters: ConntrackSinkCore.Counters { published.withLock { $0 } }
    public var mode: ConntrackSinkCore.Mode { state.withLock { $0.core.mode } }
    public var heldCount: Int { state.withLock { $0.core.heldCount } }

    /// Learned changes in order (upserts and deletes). Inject mode: written to the kernel before
    /// this returns (retries not yet due stay queued for `flush` or the next call). Hold mode:
    /// kept in memory.
    public func apply(_ changes: [(KernelConnection, deleted: Bool)]) {
        run { core, now in core.onChanges(changes, now: now) }
    }

    public func upsert(_ entries: [KernelConnection]) {
        apply(entries.map { ($0, deleted: false) })
    }

    public func delete(_ keys: [KernelConnection.Key]) {
        run { core, now in
            var actions: [ConntrackSinkCore.Action] = []
            for k in keys { actions += core.onDelete(k, now: now) }
            return actions
        }
    }

    /// Sends retries that are due, without waiting for the others.
    public func tick() {
        run { core, now in core.nextBatches(now: now) }
    }

    /// Waits out scheduled retries until nothing is queued (bounded by the retry settings).
    public func flush() {
        run(untilIdle: true) { core, now in core.nextBatches(now: now) }
    }

    /// Takeover: writes every held entry (hold mode) or whatever is queued (inject mode) and
    /// returns once every request has its ack and every retry is done.
    public func commit() -> ConntrackSinkCore.CommitReport {
        var report = ConntrackSinkCore.CommitReport()
        run(untilIdle: true, start: { core, now in core.onCommit(now: now) },
            finish: { core, now in report = core.finishCommit(now: now) })
        return report
    }

    /// Switches between inject and hold (to inject: the held entries are written now).
    public func setMode(_ mode: ConntrackSinkCore.Mode) {
        run(untilIdle: true) { core, now in core.setMode(mode, now: now) }
    }

    // MARK: Running the core

    private func run(untilIdle: Bool = false,
                     start: (inout ConntrackSinkCore, UInt64) -> [ConntrackSinkCore.Action],
                     finish: ((inout ConntrackSinkCore, UInt64) -> Void)? = nil) {
        let counters: ConntrackSinkCore.Counters = state.withLock { s in
            guard !s.closed else { return s.core.counters }
            var queue = start(&s.core, monotonicNanoseconds())
            while true {
                while !queue.isEmpty {
                    let a = queue.removeFirst()
                    switch a {
                    case .send(let batch): queue += send(batch, &s)
                    }
                }
                guard untilIdle, !s.core.isIdle else { break }
                // Only retries waiting for their time remain (nothing is in flight here).
                if let at = s.core.nextRetryAt {
                    let now = monotonicNanoseconds()
                    if at > now { usleep(useconds_t(min((at - now) / 1000, 1_000_000))) }
                }
                queue = s.core.nextBatches(now: monotonicNanoseconds())
            }
            finish?(&s.core, monotonicNanoseconds())
            return s.core.counters
        }
        published.withLock { $0 = counters }
    }

    /// Builds the batch into datagrams (as many requests as fit), sends each and reads its acks.
    private func send(_ batch: [ConntrackSinkCore.Request], _ s: inout State) -> [ConntrackSinkCore.Action] {
        var actions: [ConntrackSinkCore.Action] = []
        var i = 0
        while i < batch.count {
            var len = 0
            var seqs: [UInt32] = []
            var failed: [(seq: UInt32, errno: Int32)] = []
            while i < batch.count {
                let r = batch[i]
                guard let ct = nfct_new() else {
                    failed.append((r.seq, SinkErrno.ENOMEM))
                    i += 1
                    continue
                }
                r.message.write(to: ct)
                let op: Int32 = r.op == .create ? 0 : (r.op == .update ? 1 : 2)
                let end = tct_sink_put(s.send.baseAddress, s.send.count, len, ct, op, r.seq)
                nfct_destroy(ct)
                if end == -ENOSPC && !seqs.isEmpty { break }   // datagram full: send, then go on
                i += 1
                if end < 0 {
                    failed.append((r.seq, -end))
                    continue
                }
                len = Int(end)
                seqs.append(r.seq)
            }
            if !failed.isEmpty { actions += s.core.onAcks(failed, now: monotonicNanoseconds()) }
            guard !seqs.isEmpty else { continue }
            let rc = tct_sink_send(s.sock, s.send.baseAddress, len)
            if rc < 0 {
                // Nothing of it reached ctnetlink: every request gets the send's errno
                // (transient ones are retried).
                actions += s.core.onAcks(seqs.map { ($0, -rc) }, now: monotonicNanoseconds())
                continue
            }
            actions += readAcks(Set(seqs), &s)
        }
        return actions
    }

    /// Reads until every request of the datagram has its ack (or the wait runs out).
    private func readAcks(_ expected: Set<UInt32>, _ s: inout State) -> [ConntrackSinkCore.Action] {
        var waiting = expected
        var acks: [(seq: UInt32, errno: Int32)] = []
        acks.reserveCapacity(expected.count)
        let fd = tct_fd(s.sock)
        var overrun = false
        while !waiting.isEmpty {
            let n = tct_recv(fd, s.recv.baseAddress, s.recv.count, overrun ? 50 : ackTimeoutMillis)
            if n == -EINTR { continue }
            if n == -ENOBUFS {
                // Acks were dropped: read what is left, then count the rest lost (retried).
                overrun = true
                continue
            }
            if n == -EMSGSIZE { s.core.countMalformedAck(); continue }
            guard n > 0 else { break }   // timeout or error: the rest are lost
            let parsed = SinkAckParser.parse(UnsafeRawBufferPointer(rebasing: s.recv[0..<Int(n)]))
            if parsed.malformed > 0 { s.core.countMalformedAck(parsed.malformed) }
            for a in parsed.acks {
                waiting.remove(a.seq)
                acks.append((a.seq, a.errno))
            }
        }
        var actions = s.core.onAcks(acks, now: monotonicNanoseconds())
        if !waiting.isEmpty { actions += s.core.onAcksLost(Array(waiting), now: monotonicNanoseconds()) }
        return actions
    }

    // MARK: Namespaces and reading back

    /// Runs `body` on a short-lived thread that has entered the namespace at `path` (the caller's
    /// own thread stays where it is); nil runs it here.
    static func inNamespace<T>(_ path: String?, _ body: @escaping @Sendable () throws(ConntrackSourceError) -> T) throws(ConntrackSourceError) -> T {
        guard let path else { return try body() }
        let box = NamespaceResult<T>()
        let done = DispatchSemaphore(value: 0)
        let t = Thread {
            defer { done.signal() }
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else {
                box.result = .failure(ConntrackSourceError(message: "netns \(path): \(String(cString: strerror(errno)))"))
                return
            }
            let rc = ctb_setns_net(fd)
            let e = errno
            Glibc.close(fd)
            guard rc == 0 else {
                box.result = .failure(ConntrackSourceError(message: "setns \(path): \(String(cString: strerror(e)))"))
                return
            }
            do throws(ConntrackSourceError) { box.result = .success(try body()) } catch { box.result = .failure(error) }
        }
        t.stackSize = 1 << 20
        t.start()
        done.wait()
        guard let r = box.result else { throw ConntrackSourceError(message: "namespace thread did not run") }
        return try r.get()
    }

    /// The IPv4 conntrack table of a namespace (nil: the caller's), for checks and reconciles.
    public static func readTable(netnsPath: String? = nil) throws -> [KernelConnection] {
        try inNamespace(netnsPath) { () throws(ConntrackSourceError) -> [KernelConnection] in
            let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 << 10, alignment: 8)
            defer { buf.deallocate() }
            switch ConntrackDump.ipv4(buf: buf) {
            case .success(let (entries, _)): return entries
            case .failure(let e): throw e
            }
        }
    }
}

/// Carries a namespace thread's result back (written before the semaphore is signalled, read
/// after the wait, so never at the same time).
private final class NamespaceResult<T>: @unchecked Sendable {
    var result: Result<T, ConntrackSourceError>?
}

extension SinkMessage {
    /// Sets this request's attributes on a fresh `nf_conntrack` (network byte order there).
    func write(to ct: OpaquePointer) {
        original.setOriginal(on: ct)
        nfct_set_attr_u16(ct, ATTR_ZONE, zone)
        if let reply {
            if case .ports = reply.l4 {
                reply.setReply(on: ct)
            } else {
                // ICMP and portless: the library inverts the original itself (ICMP type included).
                _ = nfct_setobjopt(ct, UInt32(NFCT_SOPT_SETUP_REPLY))
            }
        }
        if let snat { tct_sink_set_snat(ct, snat.address.networkOrder, natPorts ? Int32(snat.port.bigEndian) : -1) }
        if let dnat { tct_sink_set_dnat(ct, dnat.address.networkOrder, natPorts ? Int32(dnat.port.bigEndian) : -1) }
        if let status { nfct_set_attr_u32(ct, ATTR_STATUS, status.rawValue) }
        if let timeout { nfct_set_attr_u32(ct, ATTR_TIMEOUT, timeout) }
        if let mark { nfct_set_attr_u32(ct, ATTR_MARK, mark) }
        tcp?.set(on: ct)
    }
}
