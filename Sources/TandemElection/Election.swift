import TandemSyncWire

// MASTER/BACKUP/FAULT election of one HA instance on one node.
//
// A pure value: the clock is passed in (`nowNanos`, any monotonic clock, never compared across
// nodes), there is no I/O, and every input returns the actions the shell must carry out. The shell
// feeds it membership from SWIM (alive/suspect -> onPeerAlive, dead/left -> onPeerDead), every
// peer's advert for this instance, the replication layer's sync state, cistate calls and takeover
// results, and calls onTick about every 10 ms. It piggybacks `advert` on every gossip message.
//
// Rules:
// 1. Terms are fencing epochs. A node becomes MASTER only by claiming term = (highest term it has
//    seen) + 1. Every node adopts any higher term it sees in any advert (even from a peer it holds
//    as dead: fencing only ever makes a node step down); a MASTER that sees a higher term steps down
//    in the same call. Two MASTERs with the same term (a race): the higher (priority, node id) stays
//    and emits `reassert`, the other steps down. A MASTER that sees a MASTER with a lower term
//    emits `reassert` (the other side may have moved the floating IP; it steps down when it hears
//    our term). Each conflict is reasserted once (per peer and peer term), not on every advert.
//    A MASTER also reasserts on the first advert from a peer it held as dead if that advert says
//    MASTER or recentMaster (the peer was MASTER within recentMasterNanos): that peer may have
//    been MASTER on the other side of a partition and moved the floating IP, and it may have
//    stepped down (fenced by our advert) before we ever saw it advertise MASTER. A peer that
//    merely restarted or rebooted (a new process, never MASTER in its life) costs no reassert.
//    Likewise when a live peer's adverts newly carry recentMaster without MASTER: it claimed and
//    stepped down (a same-term race lost) between two of its adverts, and its takeover may land
//    after ours. (A loser's takeover that lands after that reassert too is not covered; it needs
//    two claims within one advert interval.)
// 2. Sticky: while any live peer advertises MASTER with this node's current (highest) term, nobody
//    claims, whatever the priorities or sync states; so a returning old master stays BACKUP. A
//    peer SWIM still holds as dead whose MASTER advert arrived within candidateTimeoutNanos counts
//    here too (and in rule 1's conflicts): otherwise, when a partition heals before SWIM sees the
//    other side alive, a MASTER fenced by the other side's advert would reclaim at once, alone in
//    its view, and the two would fence each other back and forth.
// 3. With no live MASTER, the candidates are the live nodes (self included) whose advert is known,
//    not FAULT and not set to BACKUP from outside; a peer SWIM holds as dead but whose advert
//    arrived within candidateTimeoutNanos counts as live (SWIM is about to say so; ignoring it
//    would let both nodes claim the same term). If any candidate is in sync, only in-sync
//    candidates count (an out-of-sync node is elected only when no in-sync node is alive). Ranked
//    by (priority desc, node id desc), the best claims at once; the candidate of rank r claims once
//    r candidate timeouts passed since the master's loss (or since settling) without a claim, so a
//    best candidate that cannot act does not block the instance. Conflicts resolve by rule 1.
// 4. Settle: after start, a node claims nothing until it holds an advert from every live peer (at
//    least one peer live) or settleNanos passed; then it decides with what it knows. A node alone
//    (all peers dead) claims after settleNanos.
// 5. External control (cistate): onExternal(.master) claims at once with a new term and the
//    external flag, even while another node is MASTER (which rule 1 then fences: this is how an
//    operator forces a failover), before settling, and from FAULT; it is a no-op on a node
//    already MASTER (no term churn when the call is repeated). onExternal(.backup) steps down if MASTER and keeps this node out of
//    candidacy (external flag) until a later onExternal(.master). Otherwise the internal election
//    keeps running: an externally made MASTER can still be fenced by a higher term, and the other
//    nodes elect among themselves when the externally set node leaves or stays out.
// 6. FAULT: a failed takeover for the current term makes the node FAULT (not a candidate, not
//    MASTER). After faultHoldNanos it returns to BACKUP ("fault cleared") and is eligible again.
//    Takeover results for another term, or arriving when no longer MASTER, are ignored.
// 7. Partition: each side without a live MASTER elects its own. After healing, rule 1 leaves one
//    MASTER: the one with the higher term, ties by (priority, id). That is normally the side that
//    elected during the partition, minority or not (terms are epochs, not votes; there is no
//    quorum). It emits `reassert` so the floating IP ends on it.
//
// 8. Resume: a daemon that restarted gracefully (its datapath kept forwarding, its peers held it as
//    restarting) resumes the role and term it left with (`resume`), without a claim or a takeover:
//    the floating IPs never moved. If a peer claimed meanwhile (the hold expired), its higher term
//    fences the resumed MASTER by rule 1 on its first advert.
//
// Membership: SWIM starts with every peer alive and never heard, and so does this election. Node
// ids must be unique; 0 and this node's own id are not peers. Terms live in memory only: after a
// whole-cluster restart they start again from 0, and a node that has not heard the cluster's
// term yet (just started) cannot preempt with cistate (its claim is fenced by the real master).

/// What the shell must do.
public enum ElectionAction: Equatable, Sendable {
    /// Open the datapath for the instance's VIPs, move the floating IP here (takeover with this
    /// term), then report `onTakeover`.
    case becomeMaster(term: UInt64)
    /// Stop answering for the VIPs at once and release them.
    case becomeBackup(term: UInt64, reason: String)
    /// Stop answering for the VIPs at once and release them.
    case becomeFault(reason: String)
    /// Run the takeover again (idempotent): another node may have moved the floating IP.
    case reassert(term: UInt64)
}

/// The latest role change, for status display.
public struct ElectionTransition: Equatable, Sendable {
    public var from: HARole
    public var to: HARole
    public var term: UInt64
    public var reason: String
    /// On the clock the election is driven with.
    public var atNanos: UInt64

    public init(from: HARole, to: HARole, term: UInt64, reason: String, atNanos: UInt64) {
        self.from = from
        self.to = to
        self.term = term
        self.reason = reason
        self.atNanos = atNanos
    }
}

public struct ElectionCounters: Sendable, Hashable, Codable {
    /// Times this node became MASTER (internal or external claims).
    public var claims: UInt64 = 0
    /// Claims made by a candidate other than the best, after candidate timeouts.
    public var claimsAfterTimeout: UInt64 = 0
    /// MASTER -> BACKUP (fenced, lost a race, or set from outside).
    public var stepDowns: UInt64 = 0
    /// Higher terms adopted from adverts.
    public var higherTermsSeen: UInt64 = 0
    /// Same-term races lost.
    public var racesLost: UInt64 = 0
    public var reasserts: UInt64 = 0
    public var faults: UInt64 = 0
    public var faultsCleared: UInt64 = 0
    public var takeoversSucceeded: UInt64 = 0
    /// Takeover results for a term that is no longer ours, ignored.
    public var staleTakeoverResults: UInt64 = 0
    /// Adverts for another instance or from a node that is not a peer.
    public var advertsIgnored: UInt64 = 0
    public init() {}
}

public struct Election: Sendable {
    public let selfID: UInt32
    public let settings: ElectionSettings
    /// FNV-1a 32 of the instance name.
    public let instance: UInt32
    /// The configured peers, sorted (self and 0 removed).
    public let peers: [UInt32]

    public private(set) var role: HARole = .backup
    /// The highest term this node has seen or claimed; while MASTER, the term it claimed.
    public private(set) var term: UInt64 = 0
    /// Who this node believes is MASTER (itself included); nil while there is none.
    public private(set) var masterID: UInt32?
    /// The local connection table is in sync (replication).
    public private(set) var inSync = false
    /// Set to BACKUP from outside: out of candidacy until onExternal(.master).
    public private(set) var externalBackup = false
    /// The current MASTER role was set from outside.
    public private(set) var externalMaster = false
    /// Settled (rule 4): may claim.
    public private(set) var settled = false
    public private(set) var lastTransition: ElectionTransition?
    public private(set) var counters = ElectionCounters()

    private let peerSet: Set<UInt32>
    private var alive: Set<UInt32>
    /// Latest advert of each live peer; forgotten when the peer dies.
    private var adverts: [UInt32: InstanceAdvert] = [:]
    /// Latest advert of each peer held as dead that still reached us, and when (rules 2 and 3).
    private var strays: [UInt32: (advert: InstanceAdvert, at: UInt64)] = [:]
    private let startedAt: UInt64
    private var settledAt: UInt64 = 0
    /// When this node last saw that nobody is MASTER (nil while a MASTER is known).
    private var masterLostAt: UInt64?
    private var faultUntil: UInt64 = 0
    /// Conflicts already answered with a reassert: peer -> the term it claimed.
    private var reasserted: [UInt32: UInt64] = [:]
    /// When this node last stopped being MASTER (the recentMaster flag's clock).
    private var masterUntil: UInt64?
    /// Whether each peer's last advert said MASTER or recentMaster.
    private var recentlyMaster: [UInt32: Bool] = [:]
    /// Peers held as dead since we last heard from them -> whether their first advert since was
    /// handled (rule 1's reassert on return). Cleared once SWIM has them alive and one advert came.
    private var returning: [UInt32: Bool] = [:]
    /// The clock never runs backwards here, whatever the caller passes.
    private var now: UInt64

    public init(selfID: UInt32, peers: [UInt32], settings: ElectionSettings, nowNanos: UInt64) {
        self.selfID = selfID
        self.settings = settings
        instance = settings.instanceID
        let set = Set(peers).subtracting([selfID, 0])
        peerSet = set
        self.peers = set.sorted()
        alive = set
        startedAt = nowNanos
        now = nowNanos
    }

    // MARK: Views

    /// What the shell piggybacks on every gossip message.
    public var advert: InstanceAdvert {
        var flags: InstanceAdvert.Flags = []
        if inSync { flags.insert(.inSync) }
        if externalBackup || (role == .master && externalMaster) { flags.insert(.external) }
        if role == .master { flags.insert(.recentMaster) }
        else if let until = masterUntil, now >= until, now - until <= settings.recentMasterNanos { flags.insert(.recentMaster) }
        return InstanceAdvert(instance: instance, term: term, role: role, priority: settings.priority, flags: flags)
    }

    /// Peers this node holds as alive (or suspect), sorted.
    public var alivePeers: [UInt32] { alive.sorted() }

    /// The latest advert of each live peer.
    public var peerAdverts: [UInt32: InstanceAdvert] { adverts }

    /// The ranked candidates (rule 3) as this node sees them now, best first.
    public var candidates: [UInt32] { rankedCandidates() }

    // MARK: Inputs

    /// A peer is alive or suspect (both count as alive).
    public mutating func onPeerAlive(_ node: UInt32, nowNanos: UInt64) -> [ElectionAction] {
        advance(nowNanos)
        guard peerSet.contains(node) else { return [] }
        alive.insert(node)
        if returning[node] == true { returning[node] = nil }
        // What it said while we held it as dead is its latest word.
        if let stray = strays.removeValue(forKey: node), isRecent(stray.at) { adverts[node] = stray.advert }
        return evaluate()
    }

    /// A peer is dead or left: its advert no longer counts (its term stays in `term`).
    public mutating func onPeerDead(_ node: UInt32, nowNanos: UInt64) -> [ElectionAction] {
        advance(nowNanos)
        guard peerSet.contains(node) else { return [] }
        alive.remove(node)
        adverts[node] = nil
        strays[node] = nil
        reasserted[node] = nil
        returning[node] = false
        return evaluate()
    }

    /// A peer's advert for some instance.
    public mutating func onAdvert(_ a: InstanceAdvert, from node: UInt32, nowNanos: UInt64) -> [ElectionAction] {
        advance(nowNanos)
        guard a.instance == instance, peerSet.contains(node) else {
            counters.advertsIgnored += 1
            return []
        }
        var out: [ElectionAction] = []
        // Fencing first, whatever we think of the sender's liveness: a higher term means someone
        // claimed after the term we hold, so a MASTER must stop answering now.
        if a.term > term {
            term = a.term
            counters.higherTermsSeen += 1
            if role == .master { stepDown("higher term \(a.term) from node \(node)", into: &out) }
        }
        // First word from a peer we held as dead: whatever it did meanwhile, the IP must be ours
        // (unless this advert makes us lose a same-term race, decided below).
        // So does a peer whose adverts newly say it was MASTER lately: it claimed (and may have
        // moved the IP) since we last heard from it, even if it stepped down before we saw it.
        var greet = false
        let recent = a.role == .master || a.flags.contains(.recentMaster)
        let wasRecent = recentlyMaster[node] ?? false
        recentlyMaster[node] = recent
        if returning[node] == false {
            returning[node] = true
            if role == .master, recent {
                greet = true
                if a.role == .master { reasserted[node] = a.term }
            }
        } else if role == .master, recent, !wasRecent, a.role != .master {
            greet = true
        }
        if returning[node] == true, alive.contains(node) { returning[node] = nil }
        // A dead peer's advert (one that arrived before SWIM noticed its return, or a late message)
        // counts only while recent (rules 2 and 3).
        if alive.contains(node) {
            adverts[node] = a
        } else {
            strays[node] = (a, now)
        }
        evaluate(into: &out)
        if greet, role == .master { reassert(into: &out) }
        return out
    }

    /// Rule 8: takes back the role and term a graceful restart left (before the first tick). As
    /// MASTER no action follows: the datapath still answers for the VIPs and they never moved.
    public mutating func resume(term resumedTerm: UInt64, asMaster: Bool, nowNanos: UInt64) {
        advance(nowNanos)
        term = max(term, resumedTerm)
        guard asMaster, role == .backup else { return }
        role = .master
        masterID = selfID
        masterLostAt = nil
        settled = true
        settledAt = now
        record(from: .backup, to: .master, reason: "resumed after a graceful restart")
    }

    /// The replication layer's sync state changed.
    public mutating func onLocalSync(_ inSync: Bool, nowNanos: UInt64) -> [ElectionAction] {
        advance(nowNanos)
        self.inSync = inSync
        return evaluate()
    }

    /// cistate: MASTER claims now (preempting any master); BACKUP steps down and stays out until a
    /// later MASTER. FAULT is not a state an operator can set and is ignored.
    public mutating func onExternal(_ role: HARole, nowNanos: UInt64) -> [ElectionAction] {
        advance(nowNanos)
        var out: [ElectionAction] = []
        switch role {
        case .master:
            externalBackup = false
            if self.role == .master {
                // Already MASTER: a new term would only make every node churn.
                externalMaster = true
            } else {
                claim(reason: "set to MASTER from outside", external: true, into: &out)
            }
        case .backup:
            externalBackup = true
            if self.role == .master { stepDown("set to BACKUP from outside", into: &out) }
        case .fault:
            break
        }
        evaluate(into: &out)
        return out
    }

    /// The shell's takeover (becomeMaster or reassert) for `term` finished.
    public mutating func onTakeover(succeeded: Bool, term resultTerm: UInt64, nowNanos: UInt64) -> [ElectionAction] {
        advance(nowNanos)
        var out: [ElectionAction] = []
        if role == .master, resultTerm == term {
            if succeeded {
                counters.takeoversSucceeded += 1
            } else {
                // We cannot hold the floating IP: stop answering and let another node try.
                role = .fault
                masterUntil = now
                externalMaster = false
                reasserted = [:]
                faultUntil = now.addingSaturating(settings.faultHoldNanos)
                counters.faults += 1
                let reason = "takeover failed for term \(resultTerm)"
                record(from: .master, to: .fault, reason: reason)
                out.append(.becomeFault(reason: reason))
            }
        } else {
            // Fenced or stepped down since: the result says nothing about the current term.
            counters.staleTakeoverResults += 1
        }
        evaluate(into: &out)
        return out
    }

    /// Timers: settle, candidate timeouts, fault hold. Call about every 10 ms.
    public mutating func onTick(nowNanos: UInt64) -> [ElectionAction] {
        advance(nowNanos)
        return evaluate()
    }

    // MARK: Decisions

    private mutating func advance(_ nowNanos: UInt64) {
        if nowNanos > now { now = nowNanos }
    }

    private mutating func evaluate() -> [ElectionAction] {
        var out: [ElectionAction] = []
        evaluate(into: &out)
        return out
    }

    /// Applies the rules to the current knowledge; called after every input.
    private mutating func evaluate(into out: inout [ElectionAction]) {
        if role == .fault, now >= faultUntil {
            role = .backup
            counters.faultsCleared += 1
            record(from: .fault, to: .backup, reason: "fault cleared")
            out.append(.becomeBackup(term: term, reason: "fault cleared"))
        }
        if !settled {
            let heardAll = !alive.isEmpty && alive.allSatisfy { adverts[$0] != nil }
            if heardAll || now >= startedAt.addingSaturating(settings.settleNanos) {
                settled = true
                settledAt = now
            }
        }
        if role == .master {
            resolveConflicts(into: &out)
            if role == .master {
                masterID = selfID
                masterLostAt = nil
                return
            }
        }
        // Sticky: a live MASTER with the current term keeps its role (rule 2).
        if let master = currentMaster() {
            masterID = master
            masterLostAt = nil
            return
        }
        masterID = nil
        let lostAt = masterLostAt ?? now
        masterLostAt = lostAt
        guard role == .backup, settled, !externalBackup else { return }
        let ranked = rankedCandidates()
        guard let rank = ranked.firstIndex(of: selfID) else { return }
        if rank > 0 {
            // The better candidates had their chance (rule 3): one timeout each.
            let since = max(lostAt, settledAt)
            let waited = now >= since ? now - since : 0
            guard waited / max(1, settings.candidateTimeoutNanos) >= UInt64(rank) else { return }
            counters.claimsAfterTimeout += 1
        }
        claim(reason: rank == 0 ? "elected" : "elected after \(rank) candidate timeout(s)", external: false, into: &out)
    }

    /// The best (priority, id) peer advertising MASTER with our term: live, or recently heard
    /// while held as dead. Called on every input, so it allocates nothing.
    private func currentMaster() -> UInt32? {
        var best: (priority: UInt8, node: UInt32)?
        for (node, a) in adverts where a.role == .master && a.term == term {
            if let b = best, b > (a.priority, node) { continue }
            best = (a.priority, node)
        }
        for (node, s) in strays where s.advert.role == .master && s.advert.term == term && isRecent(s.at) {
            if let b = best, b > (s.advert.priority, node) { continue }
            best = (s.advert.priority, node)
        }
        return best?.node
    }

    /// MASTER adverts (any term) of live peers, and recent ones of peers held as dead (rule 2),
    /// by node id.
    private func masterAdverts() -> [(node: UInt32, advert: InstanceAdvert)] {
        // The common case (no other MASTER) without allocating.
        guard adverts.values.contains(where: { $0.role == .master })
            || strays.values.contains(where: { $0.advert.role == .master }) else { return [] }
        var list: [(node: UInt32, advert: InstanceAdvert)] = []
        for (node, a) in adverts where a.role == .master { list.append((node, a)) }
        for (node, s) in strays where s.advert.role == .master && isRecent(s.at) { list.append((node, s.advert)) }
        return list.sorted { $0.node < $1.node }
    }

    private func isRecent(_ at: UInt64) -> Bool {
        now >= at && now - at <= settings.candidateTimeoutNanos
    }

    /// Live, known, eligible nodes (self included), sync-gated, best first.
    private func rankedCandidates() -> [UInt32] {
        var list: [(priority: UInt8, node: UInt32, inSync: Bool)] = []
        if role == .backup, !externalBackup { list.append((settings.priority, selfID, inSync)) }
        func consider(_ node: UInt32, _ a: InstanceAdvert) {
            guard a.role != .fault, !(a.role == .backup && a.flags.contains(.external)) else { return }
            list.append((a.priority, node, a.flags.contains(.inSync)))
        }
        for (node, a) in adverts { consider(node, a) }
        for (node, s) in strays where isRecent(s.at) { consider(node, s.advert) }
        if list.contains(where: \.inSync) { list.removeAll { !$0.inSync } }
        list.sort { ($0.priority, $0.node) > ($1.priority, $1.node) }
        return list.map(\.node)
    }

    /// While MASTER: other live MASTERs (rule 1). Higher terms were handled on arrival.
    private mutating func resolveConflicts(into out: inout [ElectionAction]) {
        var reassert = false
        for (node, a) in masterAdverts() {
            guard a.term <= term else { continue }
            if a.term == term, (a.priority, node) > (settings.priority, selfID) {
                counters.racesLost += 1
                stepDown("lost the term \(term) race to node \(node)", into: &out)
                return
            }
            if reasserted[node] != a.term {
                reasserted[node] = a.term
                reassert = true
            }
        }
        if reassert { self.reassert(into: &out) }
    }

    /// One reassert per call at most.
    private mutating func reassert(into out: inout [ElectionAction]) {
        guard !out.contains(.reassert(term: term)) else { return }
        counters.reasserts += 1
        out.append(.reassert(term: term))
    }

    private mutating func claim(reason: String, external: Bool, into out: inout [ElectionAction]) {
        let from = role
        // A term at the top of the range cannot grow; a same-term race then resolves by rank.
        term = term == .max ? .max : term + 1
        role = .master
        externalMaster = external
        masterID = selfID
        masterLostAt = nil
        // The takeover that follows moves the floating IP anyway: reassert only against MASTERs
        // noticed after this claim.
        reasserted = [:]
        for (node, a) in masterAdverts() { reasserted[node] = a.term }
        counters.claims += 1
        record(from: from, to: .master, reason: reason)
        out.append(.becomeMaster(term: term))
    }

    private mutating func stepDown(_ reason: String, into out: inout [ElectionAction]) {
        role = .backup
        masterUntil = now
        externalMaster = false
        reasserted = [:]
        masterID = nil
        counters.stepDowns += 1
        record(from: .master, to: .backup, reason: reason)
        out.append(.becomeBackup(term: term, reason: reason))
    }

    private mutating func record(from: HARole, to: HARole, reason: String) {
        lastTransition = ElectionTransition(from: from, to: to, term: term, reason: reason, atNanos: now)
    }
}

extension UInt64 {
    fileprivate func addingSaturating(_ x: UInt64) -> UInt64 {
        let (sum, overflow) = addingReportingOverflow(x)
        return overflow ? .max : sum
    }
}
