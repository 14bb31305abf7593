import TandemCore
import TandemElection
import TandemSyncWire

/// A deterministic discrete-event simulation of one HA instance's election on N nodes.
///
/// - Clock: milliseconds; each node's election sees its own monotonic clock (a random offset), so
///   nothing may compare clocks across nodes.
/// - Membership oracle: the truth is "both up and in the same partition group". Each node's view of
///   each peer follows the truth after a detection delay (death: `deathDelayMs`, return:
///   `aliveDelayMs`, each plus 0...`detectionJitterMs`), and a change that reverts before it is
///   detected is never reported, like SWIM. A starting node holds every peer alive, as SWIM does.
/// - Adverts: every node sends its advert to every peer it can reach every `advertIntervalMs`
///   (random phase), delivered after latency plus jitter if the link still works then.
/// - Shell: becomeMaster and reassert run a takeover on the node's serial job queue that moves the
///   floating IP when it completes (unless `takeoverFails`), then reports onTakeover; becomeBackup
///   and becomeFault queue a release (the IP leaves the node if it still holds it).
/// - Invariants, checked every 10 ms (violations collect in `issues`):
///   * two MASTERs that can reach each other resolve within `splitBrainBoundMs` (so at most one
///     MASTER per term, and at most one MASTER at all, among connected nodes);
///   * with `uniqueClaims`, no term is claimed by two nodes while the first claimant still runs
///     (a whole-cluster restart forgets the terms, so a dead claimant's term may come again);
///   * once nothing was disturbed for `quietMs` (starts, kills, partitions, sync and cistate
///     changes), every connected group of up nodes has exactly one MASTER, every node in it names
///     that MASTER and holds its term, and with one group the floating IP is on the MASTER.
final class ElectionSim {
    struct Config {
        var advertIntervalMs: UInt64 = 50
        var latencyMs: UInt64 = 2
        var jitterMs: UInt64 = 4
        /// The shell ticks every 10 ms; timers only need to be roughly on time, and every advert
        /// is an input too.
        var tickMs: UInt64 = 10
        var deathDelayMs: UInt64 = 300
        var aliveDelayMs: UInt64 = 30
        var detectionJitterMs: UInt64 = 100
        var takeoverMs: UInt64 = 15
        var checkEveryMs: UInt64 = 10
        var quietMs: UInt64 = 2_500
        var splitBrainBoundMs: UInt64 = 500
        var uniqueClaims = false
        /// Whether the quiet-time check expects a MASTER (off while every node is out of the running).
        var expectMaster = true
        var settings = ElectionSettings(instanceName: "llb-inst0")
    }

    struct Node {
        let id: UInt32
        var priority: UInt8
        var inSync = true
        var clockOffsetMs: UInt64
        /// By peer slot: believed alive, and the pending change with its token.
        var view: [Bool]
        var pendingView: [(alive: Bool, token: Int)?]
        var busyUntilMs: UInt64 = 0
    }

    struct Logged: CustomStringConvertible {
        var atMs: UInt64
        var node: UInt32
        var action: ElectionAction
        var description: String { "t=\(atMs) node \(node): \(action)" }
    }


    /// Node ids are 1...n.
    let ids: [UInt32]
    var config: Config
    private(set) var nodes: [Node] = []
    // Hot per-node state, by slot (id - 1), kept out of Node so reading it copies nothing.
    private var up: [Bool]
    private var generation: [Int]
    private var elections: [Election?]
    /// Each running election's role, refreshed after every input (the invariant checks read it
    /// every few milliseconds).
    private var roles: [HARole?]
    private(set) var nowMs: UInt64 = 0
    private(set) var log: [Logged] = []
    private(set) var issues: [String] = []
    /// Node the floating IP is on.
    private(set) var ipOwner: UInt32?
    private(set) var lastDisturbanceMs: UInt64 = 0
    /// Claims of a term that another running node had claimed before (same-term races, which
    /// rule 1 resolves; with `uniqueClaims` each is an issue too).
    private(set) var sameTermClaims = 0
    /// Return true to make this node's takeover for this term fail.
    var takeoverFails: (UInt32, UInt64) -> Bool = { _, _ in false }

    private var group: [Int]
    private var rng: SplitMix64
    private var queue = EventHeap()
    private var nextToken = 0
    /// Term -> (node, generation) of each claim.
    private var claims: [UInt64: [(node: UInt32, generation: Int)]] = [:]
    private var conflictSince: [UInt64: UInt64] = [:]
    private var reported: Set<String> = []

    /// Node ids are 1...priorities.count (a missing one gets priority 100).
    init(priorities: [UInt32: UInt8], seed: UInt64, config: Config = Config()) {
        let n = priorities.keys.max().map(Int.init) ?? 0
        ids = (0..<n).map { UInt32($0 + 1) }
        self.config = config
        rng = SplitMix64(seed: seed)
        group = Array(repeating: 0, count: n)
        up = Array(repeating: false, count: n)
        generation = Array(repeating: 0, count: n)
        elections = Array(repeating: nil, count: n)
        roles = Array(repeating: nil, count: n)
        for id in ids {
            nodes.append(Node(id: id, priority: priorities[id] ?? 100, clockOffsetMs: rng.next() % 1_000_000_000,
                              view: Array(repeating: true, count: n), pendingView: Array(repeating: nil, count: n)))
        }
        queue.push(at: config.checkEveryMs, .check)
    }

    private func slot(_ id: UInt32) -> Int { Int(id) - 1 }
    private func valid(_ id: UInt32) -> Bool { id >= 1 && Int(id) <= nodes.count }

    // MARK: Script

    func start(_ id: UInt32) {
        guard valid(id), !up[slot(id)] else { return }
        let i = slot(id)
        var settings = config.settings
        settings.priority = nodes[i].priority
        up[i] = true
        generation[i] += 1
        elections[i] = Election(selfID: id, peers: ids, settings: settings, nowNanos: clock(i))
        roles[i] = .backup
        // SWIM starts with every peer alive.
        nodes[i].view = Array(repeating: true, count: nodes.count)
        nodes[i].pendingView = Array(repeating: nil, count: nodes.count)
        let gen = generation[i]
        // The shell tells the election the sync state on its first tick.
        let inSync = nodes[i].inSync
        apply(id) { e, now in e.onLocalSync(inSync, nowNanos: now) }
        queue.push(at: nowMs + 1 + rng.next() % config.tickMs, .tick(id, gen))
        queue.push(at: nowMs + 1 + rng.next() % config.advertIntervalMs, .gossip(id, gen))
        disturbed()
    }

    func kill(_ id: UInt32) {
        guard valid(id), up[slot(id)] else { return }
        let i = slot(id)
        up[i] = false
        generation[i] += 1
        elections[i] = nil
        roles[i] = nil
        // The floating IP stays where it was: nobody removed it, but nothing answers behind it.
        disturbed()
    }

    func partition(_ groups: [[UInt32]]) {
        for (g, members) in groups.enumerated() { for id in members where valid(id) { group[slot(id)] = g } }
        disturbed()
    }

    func heal() {
        group = Array(repeating: 0, count: nodes.count)
        disturbed()
    }

    func setSync(_ id: UInt32, _ inSync: Bool) {
        guard valid(id) else { return }
        nodes[slot(id)].inSync = inSync
        apply(id) { e, now in e.onLocalSync(inSync, nowNanos: now) }
        disturbed()
    }

    func external(_ id: UInt32, _ role: HARole) {
        apply(id) { e, now in e.onExternal(role, nowNanos: now) }
        disturbed()
    }

    /// Runs the simulation for `ms` milliseconds.
    func run(ms: UInt64) {
        let end = nowMs + ms
        while let t = queue.nextTime, t <= end {
            guard let (at, event) = queue.pop() else { break }
            nowMs = at
            handle(event)
        }
        nowMs = end
    }

    /// Runs until nothing was disturbed for the quiet time, plus a margin (the quiet check ran).
    func settle() { run(ms: config.quietMs + 300) }

    // MARK: Views

    func isUp(_ id: UInt32) -> Bool { valid(id) && up[slot(id)] }
    func election(_ id: UInt32) -> Election? { valid(id) ? elections[slot(id)] : nil }
    func role(_ id: UInt32) -> HARole? { valid(id) ? roles[slot(id)] : nil }
    func term(_ id: UInt32) -> UInt64? { valid(id) ? elections[slot(id)]?.term : nil }
    var masters: [UInt32] {
        var list: [UInt32] = []
        for (i, r) in roles.enumerated() where r == .master { list.append(UInt32(i + 1)) }
        return list
    }

    /// The one MASTER every up node agrees on, if there is one.
    var establishedMaster: UInt32? {
        guard masters.count == 1, let m = masters.first else { return nil }
        return ids.filter(isUp).allSatisfy({ election($0)?.masterID == m }) ? m : nil
    }

    func actions(of id: UInt32, since: UInt64 = 0) -> [ElectionAction] {
        log.filter { $0.node == id && $0.atMs >= since }.map(\.action)
    }

    func connected(_ a: UInt32, _ b: UInt32) -> Bool { isUp(a) && isUp(b) && group[slot(a)] == group[slot(b)] }

    /// The up nodes in connected groups.
    var components: [[UInt32]] {
        var byGroup: [Int: [UInt32]] = [:]
        for id in ids where isUp(id) { byGroup[group[slot(id)], default: []].append(id) }
        return byGroup.keys.sorted().compactMap { byGroup[$0] }
    }

    /// Issues plus the end of the log, for a failure message.
    var report: String {
        (issues.prefix(10) + ["log:"] + log.suffix(40).map(\.description)).joined(separator: "\n")
    }

    // MARK: Machinery

    private func clock(_ i: Int) -> UInt64 { (nowMs + nodes[i].clockOffsetMs) * 1_000_000 }

    private func disturbed() {
        lastDisturbanceMs = nowMs
        reconcileViews()
    }

    private func issue(_ key: String, _ text: String) {
        guard !reported.contains(key) else { return }
        reported.insert(key)
        issues.append("t=\(nowMs): \(text)")
    }

    /// Schedules each view change the truth calls for; cancels those it no longer does.
    private func reconcileViews() {
        for o in ids where isUp(o) {
            let oi = slot(o)
            for p in ids where p != o {
                let pi = slot(p)
                let truth = connected(o, p)
                if nodes[oi].view[pi] == truth {
                    nodes[oi].pendingView[pi] = nil
                } else if nodes[oi].pendingView[pi]?.alive != truth {
                    nextToken += 1
                    let delay = (truth ? config.aliveDelayMs : config.deathDelayMs)
                        + rng.next() % (config.detectionJitterMs + 1)
                    nodes[oi].pendingView[pi] = (truth, nextToken)
                    queue.push(at: nowMs + delay, .view(observer: o, peer: p, alive: truth, token: nextToken))
                }
            }
        }
    }

    /// Feeds one input to a running node's election (in place) and carries out its actions.
    private func apply(_ id: UInt32, _ input: (inout Election, UInt64) -> [ElectionAction]) {
        guard valid(id) else { return }
        let i = slot(id)
        guard up[i] else { return }
        let now = clock(i)
        var actions: [ElectionAction] = []
        if var e = elections[i] {
            // Moved out and back so the election's storage is never shared while it changes.
            elections[i] = nil
            actions = input(&e, now)
            roles[i] = e.role
            elections[i] = e
        }
        for a in actions { perform(a, by: id) }
    }

    private func perform(_ action: ElectionAction, by id: UInt32) {
        log.append(Logged(atMs: nowMs, node: id, action: action))
        switch action {
        case .becomeMaster(let term):
            let earlier = (claims[term] ?? []).filter {
                $0.node != id && isUp($0.node) && generation[slot($0.node)] == $0.generation
            }
            if !earlier.isEmpty { sameTermClaims += 1 }
            if config.uniqueClaims, let other = earlier.first {
                issue("claims\(term)", "term \(term) claimed by \(id) and, earlier, by \(other.node) (still running)")
            }
            claims[term, default: []].append((id, generation[slot(id)]))
            queueJob(id, takeover: term)
        case .reassert(let term):
            queueJob(id, takeover: term)
        case .becomeBackup, .becomeFault:
            queueJob(id, takeover: nil)
        }
    }

    /// The shell's serial job queue: a takeover takes `takeoverMs`, a release 1 ms.
    private func queueJob(_ id: UInt32, takeover term: UInt64?) {
        let i = slot(id)
        let done = max(nowMs, nodes[i].busyUntilMs) + (term == nil ? 1 : config.takeoverMs)
        nodes[i].busyUntilMs = done
        if let term {
            queue.push(at: done, .takeover(id, term, !takeoverFails(id, term)))
        } else {
            queue.push(at: done, .release(id))
        }
    }

    private func handle(_ event: Event) {
        switch event {
        case .tick(let id, let gen):
            guard isUp(id), generation[slot(id)] == gen else { return }
            apply(id) { e, now in e.onTick(nowNanos: now) }
            queue.push(at: nowMs + config.tickMs, .tick(id, gen))
        case .gossip(let id, let gen):
            guard isUp(id), generation[slot(id)] == gen, let advert = elections[slot(id)]?.advert else { return }
            for p in ids where p != id && connected(id, p) {
                queue.push(at: nowMs + config.latencyMs + rng.next() % (config.jitterMs + 1),
                           .deliver(from: id, to: p, advert))
            }
            queue.push(at: nowMs + config.advertIntervalMs, .gossip(id, gen))
        case .deliver(let from, let to, let advert):
            // Sent before a cut: lost if the link is gone now (apply skips a receiver that is down).
            guard group[slot(from)] == group[slot(to)] else { return }
            apply(to) { e, now in e.onAdvert(advert, from: from, nowNanos: now) }
        case .takeover(let id, let term, let ok):
            // The provider call runs to its end whatever the node decided meanwhile (the shell's
            // serial queue); a crashed node's call dies with it.
            guard isUp(id) else { return }
            if ok { ipOwner = id }
            apply(id) { e, now in e.onTakeover(succeeded: ok, term: term, nowNanos: now) }
        case .release(let id):
            if ipOwner == id, isUp(id) { ipOwner = nil }
        case .view(let o, let p, let alive, let token):
            let oi = slot(o), pi = slot(p)
            guard isUp(o), let pending = nodes[oi].pendingView[pi], pending.token == token else { return }
            nodes[oi].view[pi] = alive
            nodes[oi].pendingView[pi] = nil
            if alive {
                apply(o) { e, now in e.onPeerAlive(p, nowNanos: now) }
            } else {
                apply(o) { e, now in e.onPeerDead(p, nowNanos: now) }
            }
        case .check:
            check()
            queue.push(at: nowMs + config.checkEveryMs, .check)
        }
    }

    private func check() {
        let ms = masters
        // Connected MASTERs must resolve quickly (fencing by term, then the same-term race).
        var seen: Set<UInt64> = []
        for (i, a) in ms.enumerated() {
            for b in ms[(i + 1)...] where connected(a, b) {
                let key = UInt64(a) << 32 | UInt64(b)
                seen.insert(key)
                let since = conflictSince[key] ?? nowMs
                conflictSince[key] = since
                if nowMs - since > config.splitBrainBoundMs {
                    issue("split\(key)@\(since)", "nodes \(a) (term \(term(a) ?? 0)) and \(b) (term \(term(b) ?? 0)) "
                          + "both MASTER for \(nowMs - since) ms")
                }
            }
        }
        if !conflictSince.isEmpty { conflictSince = conflictSince.filter { seen.contains($0.key) } }

        guard config.expectMaster, nowMs >= lastDisturbanceMs + config.quietMs else { return }
        let groups = components
        for g in groups {
            let m = g.filter { role($0) == .master }
            guard m.count == 1, let master = m.first, let t = term(master) else {
                issue("quiet\(lastDisturbanceMs)", "quiet group \(g) has MASTERs \(m)")
                continue
            }
            for id in g where election(id)?.masterID != master || term(id) != t {
                let named = election(id)?.masterID.map(String.init) ?? "none"
                issue("agree\(lastDisturbanceMs)",
                      "node \(id) names \(named) term \(term(id) ?? 0); MASTER \(master) term \(t)")
            }
            if groups.count == 1, ipOwner != master {
                issue("ip\(lastDisturbanceMs)", "floating IP on \(String(describing: ipOwner)), MASTER is \(master)")
            }
        }
    }
}

private enum Event {
    case tick(UInt32, Int)
    case gossip(UInt32, Int)
    case deliver(from: UInt32, to: UInt32, InstanceAdvert)
    case takeover(UInt32, UInt64, Bool)
    case release(UInt32)
    case view(observer: UInt32, peer: UInt32, alive: Bool, token: Int)
    case check
}

/// A binary min-heap of events by (time, insertion order), so equal times pop in a deterministic
/// order. Not generic: the simulation spends its time here, and unspecialized generics are slow
/// in debug builds.
private struct EventHeap {
    private struct Entry {
        var at: UInt64
        var seq: UInt64
        var event: Event
    }
    private var items: [Entry] = []
    private var seq: UInt64 = 0

    var nextTime: UInt64? { items.first?.at }

    private func less(_ i: Int, _ j: Int) -> Bool {
        items[i].at != items[j].at ? items[i].at < items[j].at : items[i].seq < items[j].seq
    }

    mutating func push(at: UInt64, _ event: Event) {
        seq += 1
        items.append(Entry(at: at, seq: seq, event: event))
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard less(i, parent) else { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() -> (UInt64, Event)? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < items.count, less(l, m) { m = l }
                if r < items.count, less(r, m) { m = r }
                if m == i { break }
                items.swapAt(i, m)
                i = m
            }
        }
        return (top.at, top.event)
    }
}
