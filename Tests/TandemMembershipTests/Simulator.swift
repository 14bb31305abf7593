import TandemCore
import TandemMembership
import TandemSyncWire

/// A deterministic network of SWIM instances. The clock steps 1 ms; every node ticks every 10 ms
/// (its own phase) on its own monotonic clock (random offset, so nothing may compare clocks across
/// nodes). Messages go through per-link latency, jitter, loss and cuts, plus test hooks that drop
/// or delay chosen messages. A stalled node neither ticks nor reads: what arrives meanwhile waits
/// (like a socket buffer) and is read after the tick that ends the stall. Every message is checked
/// to survive the wire codec.
struct SimCluster {
    struct Link {
        var latencyMs: UInt64 = 1
        /// Extra uniform delay 0...jitterMs per message.
        var jitterMs: UInt64 = 0
        var lossPercent: UInt64 = 0
        var cut = false
    }

    struct Envelope {
        var from: UInt32
        var to: UInt32
        var message: SyncMessage
    }

    /// A memberChanged action: `observer` now believes `node` has `status`.
    struct Change: Equatable {
        var atMs: UInt64
        var observer: UInt32
        var node: UInt32
        var status: MemberStatus
        var incarnation: UInt32
    }

    struct Sent {
        var atMs: UInt64
        var from: UInt32
        var to: UInt32
        var message: SyncMessage
    }

    let ids: [UInt32]
    var settings: SWIMSettings
    // Per node, indexed by id - 1 (parallel arrays: SWIM values are mutated in place).
    private var swims: [SWIM?] = []
    private var offsets: [UInt64] = []
    private var nextTick: [UInt64] = []
    private var stalledUntil: [UInt64] = []
    private var backlogs: [[Envelope]] = []
    var nowMs: UInt64 = 0
    var rng: SplitMix64
    var defaultLink = Link()
    private var links: [UInt64: Link] = [:]
    /// Return true to drop a message (on top of the link's own loss and cuts).
    var drop: (UInt64, Envelope) -> Bool = { _, _ in false }
    /// Extra milliseconds for a message.
    var extraDelay: (UInt64, Envelope) -> UInt64 = { _, _ in 0 }
    private var inFlight: [UInt64: [Envelope]] = [:]
    private(set) var changes: [Change] = []
    var recordSends = false
    var validateCodec = true
    private(set) var sent: [Sent] = []
    private(set) var messagesSent = 0
    private(set) var maxUpdatesInMessage = 0
    private(set) var codecFailures = 0
    private var nextIncarnation: [UInt32: UInt32] = [:]

    init(nodes n: Int, seed: UInt64, settings: SWIMSettings = .init()) {
        ids = (1...UInt32(n)).map { $0 }
        self.settings = settings
        rng = SplitMix64(seed: seed)
        swims = Array(repeating: nil, count: n)
        offsets = Array(repeating: 0, count: n)
        nextTick = Array(repeating: 0, count: n)
        stalledUntil = Array(repeating: 0, count: n)
        backlogs = Array(repeating: [], count: n)
        for id in ids { start(id) }
    }

    private func slot(_ id: UInt32) -> Int? {
        id >= 1 && Int(id) <= swims.count ? Int(id) - 1 : nil
    }

    // MARK: Nodes

    /// Starts (or restarts) a node with a fresh incarnation, higher than any it had (the shell
    /// derives it from boot time), unless the test says otherwise.
    mutating func start(_ id: UInt32, incarnation: UInt32? = nil) {
        let inc = incarnation ?? (nextIncarnation[id] ?? 1000 * id) + 100
        nextIncarnation[id] = inc
        let offset = rng.next() % 1_000_000_000_000
        let swim = SWIM(selfID: id, peers: ids, incarnation: inc, settings: settings, seed: rng.next(),
                        nowNanos: offset + nowMs * 1_000_000)
        guard let i = slot(id) else { return }
        swims[i] = swim
        offsets[i] = offset
        nextTick[i] = nowMs + rng.next() % 10
        stalledUntil[i] = 0
        backlogs[i] = []
    }

    /// The node stops: no ticks, messages to it vanish.
    mutating func kill(_ id: UInt32) {
        guard let i = slot(id) else { return }
        swims[i] = nil
        backlogs[i] = []
    }

    mutating func stall(_ id: UInt32, forMs ms: UInt64) {
        guard let i = slot(id) else { return }
        stalledUntil[i] = nowMs + ms
    }

    mutating func leave(_ id: UInt32, restarting: Bool = false, copies: Int = 1) {
        guard let i = slot(id), let actions = swims[i]?.leave(restarting: restarting, copies: copies) else { return }
        perform(actions, at: id)
    }

    /// Hands a message to a node as if it arrived now (tests forge traffic with it).
    @discardableResult
    mutating func inject(_ m: SyncMessage, from: UInt32, to: UInt32) -> [SWIMAction] {
        guard let i = slot(to) else { return [] }
        let now = clock(i)
        let actions = swims[i]?.onMessage(m, from: from, nowNanos: now) ?? []
        perform(actions, at: to)
        return actions
    }

    /// Changes a node's local state directly (e.g. its adverts).
    mutating func edit(_ id: UInt32, _ body: (inout SWIM) -> Void) {
        guard let i = slot(id), var swim = swims[i] else { return }
        swims[i] = nil
        body(&swim)
        swims[i] = swim
    }

    func swim(_ id: UInt32) -> SWIM? { slot(id).flatMap { swims[$0] } }

    /// The node's own monotonic clock now.
    func clockNanos(_ id: UInt32) -> UInt64 { slot(id).map { clock($0) } ?? 0 }

    func status(of node: UInt32, at observer: UInt32) -> MemberStatus? { swim(observer)?.status(of: node) }

    var running: [UInt32] { ids.filter { swim($0) != nil } }

    // MARK: Links

    private func key(_ a: UInt32, _ b: UInt32) -> UInt64 { UInt64(a) << 32 | UInt64(b) }

    func link(_ from: UInt32, _ to: UInt32) -> Link { links[key(from, to)] ?? defaultLink }

    mutating func setLink(_ from: UInt32, _ to: UInt32, _ edit: (inout Link) -> Void) {
        var l = link(from, to)
        edit(&l)
        links[key(from, to)] = l
    }

    /// Cuts (or heals) both directions between every node of `a` and every node of `b`.
    mutating func partition(_ a: [UInt32], _ b: [UInt32], cut: Bool = true) {
        for x in a {
            for y in b {
                setLink(x, y) { $0.cut = cut }
                setLink(y, x) { $0.cut = cut }
            }
        }
    }

    // MARK: Running

    mutating func run(ms: UInt64) {
        for _ in 0..<ms { step() }
    }

    /// Runs until `done` holds (checked every millisecond) or `limit` ms pass; returns the ms taken.
    @discardableResult
    mutating func run(until done: (SimCluster) -> Bool, limitMs: UInt64) -> UInt64? {
        let start = nowMs
        while nowMs - start < limitMs {
            if done(self) { return nowMs - start }
            step()
        }
        return done(self) ? nowMs - start : nil
    }

    mutating func step() {
        nowMs += 1
        for i in 0..<swims.count where nowMs >= stalledUntil[i] {
            // Ticks first: a node waking from a stall runs its overdue timer before reading.
            if nowMs >= nextTick[i] {
                nextTick[i] = nowMs + 10
                let now = clock(i)
                if let actions = swims[i]?.onTick(nowNanos: now) { perform(actions, at: ids[i]) }
            }
            if !backlogs[i].isEmpty {
                let backlog = backlogs[i]
                backlogs[i] = []
                for e in backlog { deliver(e) }
            }
        }
        if let due = inFlight.removeValue(forKey: nowMs) {
            for e in due { deliver(e) }
        }
    }

    private func clock(_ i: Int) -> UInt64 { offsets[i] + nowMs * 1_000_000 }

    private mutating func deliver(_ e: Envelope) {
        guard let i = slot(e.to), swims[i] != nil else { return }
        if nowMs < stalledUntil[i] {
            backlogs[i].append(e)
            return
        }
        let now = clock(i)
        if let actions = swims[i]?.onMessage(e.message, from: e.from, nowNanos: now) { perform(actions, at: e.to) }
    }

    private mutating func perform(_ actions: [SWIMAction], at id: UInt32) {
        for a in actions {
            switch a {
            case .memberChanged(let node, let status, let incarnation):
                changes.append(Change(atMs: nowMs, observer: id, node: node, status: status, incarnation: incarnation))
            case .send(let m, let to):
                send(Envelope(from: id, to: to, message: m))
            }
        }
    }

    private mutating func send(_ e: Envelope) {
        messagesSent += 1
        maxUpdatesInMessage = max(maxUpdatesInMessage, e.message.gossip?.updates.count ?? 0)
        if validateCodec, SyncCodec.validate(e.message) != nil { codecFailures += 1 }
        if recordSends { sent.append(Sent(atMs: nowMs, from: e.from, to: e.to, message: e.message)) }
        let l = link(e.from, e.to)
        if l.cut || drop(nowMs, e) { return }
        if l.lossPercent > 0, rng.next() % 100 < l.lossPercent { return }
        let jitter = l.jitterMs > 0 ? rng.next() % (l.jitterMs + 1) : 0
        let delay = max(l.latencyMs + jitter + extraDelay(nowMs, e), 1)
        inFlight[nowMs + delay, default: []].append(e)
    }

    // MARK: Queries

    func changes(observer: UInt32? = nil, node: UInt32? = nil, status: MemberStatus? = nil,
                 since: UInt64 = 0) -> [Change] {
        changes.filter {
            (observer == nil || $0.observer == observer) && (node == nil || $0.node == node)
                && (status == nil || $0.status == status) && $0.atMs >= since
        }
    }

    /// Every running node other than `node` believes `node` has `status`.
    func allSee(_ node: UInt32, as status: MemberStatus) -> Bool {
        running.allSatisfy { $0 == node || self.status(of: node, at: $0) == status }
    }

    /// Every running node believes every other running node alive.
    var allAliveEverywhere: Bool {
        running.allSatisfy { o in running.allSatisfy { n in n == o || status(of: n, at: o) == .alive } }
    }

    func totalCounters(_ path: KeyPath<SWIMCounters, UInt64>) -> UInt64 {
        running.reduce(0) { $0 + (swim($1)?.counters[keyPath: path] ?? 0) }
    }
}

extension SyncMessage {
    /// The member an ack vouches for.
    var ackTarget: UInt32? {
        if case .probeAck(let a) = self { a.target } else { nil }
    }

    var gossip: Gossip? {
        switch self {
        case .probe(let p): p.gossip
        case .probeRequest(let r): r.gossip
        case .probeAck(let a): a.gossip
        default: nil
        }
    }
}
