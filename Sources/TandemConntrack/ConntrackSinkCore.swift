import TandemCore

/// The kernel conntrack sink's logic, pure: learned entries in, ctnetlink requests out, their
/// acks back in. Two modes:
/// - `inject`: every upsert and delete becomes a request as it arrives (batched);
/// - `hold`: entries are kept here (keyed by `KernelConnection.Key`, deletes remove them) and
///   become requests only on `onCommit` (at takeover).
///
/// A request is create-or-update: a create answered EEXIST is sent again as an update, an update
/// answered ENOENT as a create. Transient errors are retried after a delay, a bounded number of
/// times; the rest are dropped and counted by errno name. Every entry's outcome is independent:
/// one that fails never holds back the others. Time is passed in (monotonic nanoseconds); the
/// shell (`ConntrackSink`) sends the batches and feeds back the per-message acks.
public struct ConntrackSinkCore: Sendable {
    public enum Mode: String, Hashable, Sendable, CaseIterable {
        case inject
        case hold
    }

    public struct Settings: Hashable, Sendable {
        public var mode: Mode
        /// Requests per batch (one sendmsg); each still has its own ack.
        public var batchSize: Int
        /// Retries of a transient failure (ENOMEM, ENOBUFS, EAGAIN, EBUSY, ...), then it is dropped.
        public var maxRetries: Int
        /// First retry delay, seconds; doubled on each further retry.
        public var retryDelay: Double
        /// Set IP_CT_TCP_FLAG_BE_LIBERAL on injected TCP entries (as conntrackd does unless
        /// TCPWindowTracking is on): ctnetlink cannot carry the sequence/window state
        /// (td_end, td_maxwin), so the peer picks the window up from the next packets, and a
        /// liberal entry does not mark in-flight segments invalid meanwhile.
        public var liberalTCP: Bool
        /// Timeout (seconds) for an upsert that carries none.
        public var defaultTimeout: UInt32

        public init(mode: Mode = .inject, batchSize: Int = 256, maxRetries: Int = 5, retryDelay: Double = 0.01,
                    liberalTCP: Bool = true, defaultTimeout: UInt32 = 300) {
            self.mode = mode
            self.batchSize = max(1, batchSize)
            self.maxRetries = max(0, maxRetries)
            self.retryDelay = max(0, retryDelay)
            self.liberalTCP = liberalTCP
            self.defaultTimeout = defaultTimeout
        }
    }

    public enum Op: String, Hashable, Sendable {
        case create
        case update
        case delete
    }

    /// One ctnetlink request, described by value (the shell turns it into attributes).
    public struct Request: Hashable, Sendable {
        public var seq: UInt32
        public var op: Op
        public var message: SinkMessage
    }

    public enum Action: Hashable, Sendable {
        /// Send these requests in one datagram and feed every ack to `onAcks`.
        case send([Request])
    }

    public struct Counters: Hashable, Sendable {
        /// Entries written (created or updated) successfully.
        public var injected = 0
        public var created = 0
        public var updated = 0
        /// Creates answered EEXIST and resent as updates.
        public var existedBecameUpdate = 0
        /// Updates answered ENOENT whose resent create then succeeded.
        public var createdAfterENOENT = 0
        public var deleted = 0
        /// Deletes of entries the kernel did not have (not failures).
        public var deleteAbsent = 0
        /// Upserts whose remaining time ran out before they could be sent (inject mode: queued
        /// too long; hold mode: aged out while held).
        public var expired = 0
        public var expiredBeforeCommit = 0
        /// Dropped failures by errno name (EINVAL, EPERM, EOPNOTSUPP, or a transient one past
        /// its retries).
        public var failures: [String: Int] = [:]
        public var retries = 0
        /// Retries or conversions abandoned because a newer change for the same entry arrived.
        public var superseded = 0
        public var batches = 0
        public var requests = 0
        /// Acks for no request in flight, and ack messages that could not be read.
        public var unexpectedAcks = 0
        public var malformedAcks = 0
        /// Requests whose ack never came (the shell gave up waiting): retried like ENOBUFS.
        public var lostAcks = 0
        public var commits = 0
        /// Entries held (hold mode) right now.
        public var held = 0
        public init() {}

        public var totalFailures: Int { failures.values.reduce(0, +) }
    }

    public struct CommitReport: Hashable, Sendable, CustomStringConvertible {
        /// Entries written to the kernel table.
        public var committed = 0
        /// Held entries whose time ran out before the commit: not injected.
        public var expired = 0
        public var failures: [String: Int] = [:]
        public var retries = 0
        public var batches = 0
        public var seconds = 0.0
        public init() {}

        public var description: String {
            var s = "committed \(committed), expired \(expired), retries \(retries), batches \(batches), "
                + "\(String(Int(seconds * 1_000_000)))us"
            if !failures.isEmpty {
                s += ", failures " + failures.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: " ")
            }
            return s
        }
    }

    /// An entry as learned, with when it was learned (its remaining timeout counts from then).
    struct Learned: Hashable, Sendable {
        var connection: KernelConnection
        var learnedAt: UInt64
    }

    /// What is to be done for a key: write this entry, or delete it.
    enum Work: Hashable, Sendable {
        case upsert(Learned, Op)
        case delete(KernelConnection.Key)
    }

    struct Pending: Hashable, Sendable {
        var work: Work
        /// Attempts after the first send that failed transiently.
        var retries: Int
        /// Create <-> update conversions so far (bounded, so a racing peer cannot loop us).
        var conversions: Int
        /// The entry was first tried as an update and is now a create (counts createdAfterENOENT).
        var fromUpdate: Bool
        /// Not before this time (retry delay).
        var notBefore: UInt64
    }

    public private(set) var settings: Settings
    public private(set) var counters = Counters()
    /// Hold mode's user-space table.
    private(set) var held: [KernelConnection.Key: Learned] = [:]
    /// Work not yet sent, newest per key, in arrival order.
    private var pending: [KernelConnection.Key: Pending] = [:]
    private var order: [KernelConnection.Key] = []
    private var orderHead = 0
    /// Sent, waiting for their acks.
    private var inFlight: [UInt32: (key: KernelConnection.Key, pending: Pending)] = [:]
    private var nextSeq: UInt32 = 1
    private var commitStart: (counters: Counters, at: UInt64)?

    static let maxConversions = 4

    public init(settings: Settings = .init()) {
        self.settings = settings
    }

    public var mode: Mode { settings.mode }
    public var heldCount: Int { held.count }
    /// Nothing queued, scheduled or in flight.
    public var isIdle: Bool { pending.isEmpty && inFlight.isEmpty }
    public var inFlightCount: Int { inFlight.count }
    public var pendingCount: Int { pending.count }

    /// The earliest time a scheduled retry may be sent (nil when none waits).
    public var nextRetryAt: UInt64? { pending.values.map(\.notBefore).filter { $0 > 0 }.min() }

    // MARK: Input

    /// Learned upserts and deletes, in order (what the source or the sync receiver delivers).
    public mutating func onChanges(_ changes: [(KernelConnection, deleted: Bool)], now: UInt64) -> [Action] {
        for (c, deleted) in changes {
            if deleted { delete(c.key) } else { upsert(c, now: now) }
        }
        return settings.mode == .inject ? nextBatches(now: now) : []
    }

    public mutating func onUpsert(_ c: KernelConnection, now: UInt64) -> [Action] {
        onChanges([(c, deleted: false)], now: now)
    }

    public mutating func onDelete(_ key: KernelConnection.Key, now: UInt64) -> [Action] {
        delete(key)
        return settings.mode == .inject ? nextBatches(now: now) : []
    }

    private mutating func upsert(_ c: KernelConnection, now: UInt64) {
        let learned = Learned(connection: c, learnedAt: now)
        switch settings.mode {
        case .hold:
            held[c.key] = learned
            counters.held = held.count
        case .inject:
            // Create first: after a takeover and for new flows that is what the kernel lacks; an
            // existing entry answers EEXIST and is updated instead.
            enqueue(c.key, Pending(work: .upsert(learned, .create), retries: 0, conversions: 0, fromUpdate: false, notBefore: 0))
        }
    }

    private mutating func delete(_ key: KernelConnection.Key) {
        switch settings.mode {
        case .hold:
            held.removeValue(forKey: key)
            counters.held = held.count
        case .inject:
            enqueue(key, Pending(work: .delete(key), retries: 0, conversions: 0, fromUpdate: false, notBefore: 0))
        }
    }

    /// Newest work per key wins; a key keeps its place in the queue if it is already waiting.
    private mutating func enqueue(_ key: KernelConnection.Key, _ p: Pending) {
        if pending.updateValue(p, forKey: key) == nil { order.append(key) }
    }

    /// Switches mode. Going from hold to inject hands the held entries to the queue (they are
    /// injected as if just committed); going to hold keeps what is queued going out.
    public mutating func setMode(_ mode: Mode, now: UInt64) -> [Action] {
        guard mode != settings.mode else { return [] }
        settings.mode = mode
        if mode == .inject {
            moveHeldToQueue(now: now)
            return nextBatches(now: now)
        }
        return []
    }

    /// Hold mode's takeover: every held entry becomes a create (aged by the time it was held;
    /// those out of time are counted and dropped). The shell sends the batches and feeds the acks
    /// until `isIdle`, then calls `finishCommit`. In inject mode it flushes what is queued.
    public mutating func onCommit(now: UInt64) -> [Action] {
        commitStart = (counters, now)
        counters.commits += 1
        moveHeldToQueue(now: now, commit: true)
        return nextBatches(now: now)
    }

    private mutating func moveHeldToQueue(now: UInt64, commit: Bool = false) {
        // Oldest first is as good as any order; sorting keeps runs reproducible.
        for (key, learned) in held.sorted(by: { $0.value.learnedAt < $1.value.learnedAt }) {
            if remaining(learned, now: now) == 0 {
                counters.expired += 1
                if commit { counters.expiredBeforeCommit += 1 }
                continue
            }
            enqueue(key, Pending(work: .upsert(learned, .create), retries: 0, conversions: 0, fromUpdate: false, notBefore: 0))
        }
        held.removeAll()
        counters.held = 0
    }

    /// The report of the commit started by `onCommit` (call once `isIdle`).
    public mutating func finishCommit(now: UInt64) -> CommitReport {
        var r = CommitReport()
        guard let (before, at) = commitStart else { return r }
        commitStart = nil
        r.committed = counters.injected - before.injected
        r.expired = counters.expiredBeforeCommit - before.expiredBeforeCommit
        r.retries = counters.retries - before.retries
        r.batches = counters.batches - before.batches
        for (k, v) in counters.failures {
            let d = v - (before.failures[k] ?? 0)
            if d > 0 { r.failures[k] = d }
        }
        r.seconds = Double(now &- at) / 1e9
        return r
    }

    // MARK: Batches

    /// Remaining whole seconds of an entry learned at `learnedAt` (0 once out of time): its
    /// timeout at the source minus the time since, rounded down, so an entry never outlives its
    /// source.
    func remaining(_ l: Learned, now: UInt64) -> UInt32 {
        let total = UInt64(l.connection.timeout ?? settings.defaultTimeout) * 1_000_000_000
        let held = now > l.learnedAt ? now - l.learnedAt : 0
        return held >= total ? 0 : UInt32((total - held) / 1_000_000_000)
    }

    /// As many batches as the queue holds now (retries not yet due stay queued).
    public mutating func nextBatches(now: UInt64) -> [Action] {
        var actions: [Action] = []
        var batch: [Request] = []
        var deferred: [KernelConnection.Key] = []
        while orderHead < order.count {
            let key = order[orderHead]
            orderHead += 1
            guard let p = pending[key] else { continue }
            if p.notBefore > now {
                deferred.append(key)
                continue
            }
            pending.removeValue(forKey: key)
            guard let req = request(for: p, key: key, now: now) else { continue }
            inFlight[req.seq] = (key, p)
            batch.append(req)
            if batch.count >= settings.batchSize {
                actions.append(.send(batch))
                batch.removeAll(keepingCapacity: true)
            }
        }
        if !batch.isEmpty { actions.append(.send(batch)) }
        order = deferred
        orderHead = 0
        counters.batches += actions.count
        counters.requests += actions.reduce(0) { if case .send(let b) = $1 { return $0 + b.count } else { return $0 } }
        return actions
    }

    private mutating func request(for p: Pending, key: KernelConnection.Key, now: UInt64) -> Request? {
        let message: SinkMessage
        let op: Op
        switch p.work {
        case .delete(let k):
            op = .delete
            message = SinkMessage.delete(k)
        case .upsert(let l, let o):
            let left = remaining(l, now: now)
            guard left > 0 else {
                counters.expired += 1
                return nil
            }
            op = o
            message = SinkMessage.write(l.connection, op: o, timeout: left, liberalTCP: settings.liberalTCP)
        }
        let seq = nextSeq
        nextSeq = nextSeq == UInt32.max ? 1 : nextSeq + 1
        return Request(seq: seq, op: op, message: message)
    }

    // MARK: Acks

    /// The kernel's answer to each request (errno 0 = done). Returns what to send next (retries
    /// due now, conversions, anything queued meanwhile).
    public mutating func onAcks(_ acks: [(seq: UInt32, errno: Int32)], now: UInt64) -> [Action] {
        for (seq, err) in acks {
            guard let (key, p) = inFlight.removeValue(forKey: seq) else {
                counters.unexpectedAcks += 1
                continue
            }
            resolve(key: key, p, errno: err, now: now)
        }
        return nextBatches(now: now)
    }

    /// Requests the shell stopped waiting for (no ack within its bound, or the ack socket
    /// overran): treated as a transient failure, so they are retried.
    public mutating func onAcksLost(_ seqs: [UInt32], now: UInt64) -> [Action] {
        for seq in seqs {
            guard let (key, p) = inFlight.removeValue(forKey: seq) else { continue }
            counters.lostAcks += 1
            resolve(key: key, p, errno: SinkErrno.ENOBUFS, now: now)
        }
        return nextBatches(now: now)
    }

    /// Sequence numbers still waiting for an ack.
    public var inFlightSeqs: [UInt32] { Array(inFlight.keys) }

    public mutating func countMalformedAck(_ n: Int = 1) { counters.malformedAcks += n }

    private mutating func resolve(key: KernelConnection.Key, _ p: Pending, errno err: Int32, now: UInt64) {
        // A newer change for this key is already queued: it replaces whatever this one would
        // still do (retry or conversion); a success or final failure is still counted below.
        let superseded = pending[key] != nil
        switch (p.work, err) {
        case (.delete, 0):
            counters.deleted += 1
        case (.delete, SinkErrno.ENOENT):
            counters.deleteAbsent += 1
        case (.upsert(_, let op), 0):
            counters.injected += 1
            if op == .create {
                counters.created += 1
                if p.fromUpdate { counters.createdAfterENOENT += 1 }
            } else {
                counters.updated += 1
            }
        case (.upsert(let l, .create), SinkErrno.EEXIST):
            counters.existedBecameUpdate += 1
            convert(key, p, to: Pending(work: .upsert(l, .update), retries: p.retries, conversions: p.conversions + 1,
                                        fromUpdate: false, notBefore: 0), superseded: superseded, err: err)
        case (.upsert(let l, .update), SinkErrno.ENOENT):
            convert(key, p, to: Pending(work: .upsert(l, .create), retries: p.retries, conversions: p.conversions + 1,
                                        fromUpdate: true, notBefore: 0), superseded: superseded, err: err)
        default:
            if SinkErrno.isTransient(err) && p.retries < settings.maxRetries {
                if superseded {
                    counters.superseded += 1
                    return
                }
                counters.retries += 1
                var r = p
                r.retries += 1
                // Capped at an hour, so no setting can overflow the clock arithmetic.
                let delay = min(settings.retryDelay * Double(1 << min(r.retries - 1, 20)), 3600)
                r.notBefore = now &+ UInt64(delay * 1e9)
                enqueue(key, r)
            } else {
                counters.failures[SinkErrno.name(err), default: 0] += 1
            }
        }
    }

    private mutating func convert(_ key: KernelConnection.Key, _ p: Pending, to next: Pending, superseded: Bool, err: Int32) {
        if superseded {
            counters.superseded += 1
            return
        }
        guard next.conversions <= Self.maxConversions else {
            // The entry keeps appearing and vanishing under us: give up on it, counted.
            counters.failures[SinkErrno.name(err), default: 0] += 1
            return
        }
        enqueue(key, next)
    }
}

/// What a ctnetlink request for an entry carries, decided here so it is unit-tested:
/// - create: the original tuple, the reply tuple as the *inverted original*, and the NAT as
///   CTA_NAT_SRC / CTA_NAT_DST targets. The kernel (ctnetlink_setup_nat -> nf_nat_setup_info)
///   then derives the translated reply tuple itself and sets IPS_SRC_NAT / IPS_DST_NAT and the
///   NAT_DONE bits, which is what makes it rewrite packets; a reply tuple sent already translated
///   would make nf_nat_setup_info find nothing to do and leave those bits off (no rewriting).
/// - update: tuple, status, timeout, mark, TCP info only: ctnetlink refuses NAT attributes on an
///   existing entry (EOPNOTSUPP) and cannot change its tuples.
/// - delete: the original tuple and zone only (a CTA_ID would have to match the peer's own id).
/// Status: only the bits ctnetlink lets user space set are sent (SEEN_REPLY, ASSURED,
/// FIXED_TIMEOUT), plus CONFIRMED, which an existing entry has and which must not differ or the
/// kernel answers EBUSY; EXPECTED, DYING, NAT, SEQ_ADJUST, TEMPLATE and OFFLOAD bits are the
/// kernel's own.
public struct SinkMessage: Hashable, Sendable {
    public var original: KernelTuple
    public var zone: UInt16
    public var reply: KernelTuple?
    public var snat: NATView.Target?
    public var dnat: NATView.Target?
    /// Whether the NAT targets include the port (port-carrying protocols only).
    public var natPorts: Bool
    public var status: ConntrackStatus?
    public var timeout: UInt32?
    public var mark: UInt32?
    public var tcp: TCPInfo?

    public static let settableStatus: ConntrackStatus = [.seenReply, .assured, .fixedTimeout]
    /// IP_CT_TCP_FLAG_* bits that describe the connection (window scaling and SACK negotiated,
    /// close initiated, liberal); the others describe tracking state ctnetlink cannot transfer
    /// (td_maxack, unacknowledged data), so they are left to the peer's kernel.
    public static let tcpFlagMask: UInt8 = TCPInfo.flagWindowScale | TCPInfo.flagSACKPermitted
        | TCPInfo.flagCloseInit | TCPInfo.flagBeLiberal

    static func delete(_ key: KernelConnection.Key) -> SinkMessage {
        SinkMessage(original: key.original, zone: key.zone, reply: nil, snat: nil, dnat: nil, natPorts: false,
                    status: nil, timeout: nil, mark: nil, tcp: nil)
    }

    static func write(_ c: KernelConnection, op: ConntrackSinkCore.Op, timeout: UInt32, liberalTCP: Bool) -> SinkMessage {
        var tcp: TCPInfo?
        if c.proto == 6, let t = c.tcp {
            var info = TCPInfo(state: t.state)
            let liberal: UInt8 = liberalTCP ? TCPInfo.flagBeLiberal : 0
            info.flagsOriginal = ((t.flagsOriginal ?? 0) | liberal) & tcpFlagMask
            info.flagsReply = ((t.flagsReply ?? 0) | liberal) & tcpFlagMask
            info.maskOriginal = tcpFlagMask
            info.maskReply = tcpFlagMask
            // The kernel applies window scales only with both and with WINDOW_SCALE set on both.
            if let a = t.windowScaleOriginal, let b = t.windowScaleReply {
                info.windowScaleOriginal = a
                info.windowScaleReply = b
            }
            tcp = info
        }
        let status = c.status.intersection(settableStatus).union(.confirmed)
        var m = SinkMessage(original: c.original, zone: c.zone, reply: nil, snat: nil, dnat: nil, natPorts: false,
                            status: status, timeout: timeout, mark: c.mark, tcp: tcp)
        if op == .create {
            m.reply = c.original.inverted
            let nat = c.nat
            m.snat = nat.snat
            m.dnat = nat.dnat
            if case .ports = c.original.l4 { m.natPorts = true }
        }
        return m
    }
}

/// Linux errno numbers the sink reasons about, and their names for the counters (the core stays
/// free of libc so it is tested as plain values).
public enum SinkErrno {
    public static let EPERM: Int32 = 1
    public static let ENOENT: Int32 = 2
    public static let EINTR: Int32 = 4
    public static let EAGAIN: Int32 = 11
    public static let ENOMEM: Int32 = 12
    public static let EBUSY: Int32 = 16
    public static let EEXIST: Int32 = 17
    public static let EINVAL: Int32 = 22
    public static let ENOSPC: Int32 = 28
    public static let ETIMEDOUT: Int32 = 110
    public static let ENOBUFS: Int32 = 105
    public static let EOPNOTSUPP: Int32 = 95

    /// Worth retrying: the kernel was short of memory or busy (ENOSPC: a hash chain too long,
    /// which a resize fixes), or the request timed out (a module being loaded).
    public static func isTransient(_ e: Int32) -> Bool {
        [ENOMEM, ENOBUFS, EAGAIN, EBUSY, EINTR, ENOSPC, ETIMEDOUT].contains(e)
    }

    public static func name(_ e: Int32) -> String {
        switch e {
        case 0: "OK"
        case 1: "EPERM"
        case 2: "ENOENT"
        case 3: "ESRCH"
        case 4: "EINTR"
        case 5: "EIO"
        case 7: "E2BIG"
        case 11: "EAGAIN"
        case 12: "ENOMEM"
        case 13: "EACCES"
        case 14: "EFAULT"
        case 16: "EBUSY"
        case 17: "EEXIST"
        case 19: "ENODEV"
        case 22: "EINVAL"
        case 28: "ENOSPC"
        case 34: "ERANGE"
        case 38: "ENOSYS"
        case 62: "ETIME"
        case 71: "EPROTO"
        case 90: "EMSGSIZE"
        case 93: "EPROTONOSUPPORT"
        case 95: "EOPNOTSUPP"
        case 97: "EAFNOSUPPORT"
        case 105: "ENOBUFS"
        case 110: "ETIMEDOUT"
        default: "errno \(e)"
        }
    }
}

/// Reading the kernel's acks (NLMSG_ERROR messages) out of a datagram, every length checked:
/// pure, so truncated and garbage input is unit-tested.
public enum SinkAckParser {
    public struct Result: Hashable, Sendable {
        public var acks: [Ack]
        /// Messages (or trailing bytes) that could not be read.
        public var malformed: Int
        /// Well-formed messages that are not acks (ignored).
        public var other: Int
    }

    public struct Ack: Hashable, Sendable {
        public var seq: UInt32
        public var errno: Int32
    }

    public static func parse(_ buf: UnsafeRawBufferPointer) -> Result {
        let (messages, bad) = NetlinkWalk.split(buf)
        var r = Result(acks: [], malformed: bad ? 1 : 0, other: 0)
        for m in messages {
            guard m.type == NetlinkWalk.error else {
                r.other += 1
                continue
            }
            // nlmsghdr (16) + int error (4); the request's header follows (CAP_ACK) but the
            // outer header already carries the request's sequence number.
            guard m.length >= NetlinkWalk.headerSize + 4 else {
                r.malformed += 1
                continue
            }
            let seq = buf.loadUnaligned(fromByteOffset: m.offset + 8, as: UInt32.self)
            let raw = buf.loadUnaligned(fromByteOffset: m.offset + NetlinkWalk.headerSize, as: Int32.self)
            // The kernel sends -errno; anything positive is not a valid ack.
            guard raw <= 0, raw != Int32.min else {
                r.malformed += 1
                continue
            }
            r.acks.append(Ack(seq: seq, errno: -raw))
        }
        return r
    }
}
