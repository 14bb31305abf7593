import TandemCore
import TandemSyncWire

/// What the SWIM core asks its shell to do, or tells it.
public enum SWIMAction: Equatable, Sendable {
    /// Send this gossip message to that member.
    case send(SyncMessage, to: UInt32)
    /// The locally believed status of a member changed (alive, suspect, dead, left).
    case memberChanged(node: UInt32, status: MemberStatus, incarnation: UInt32)
}

/// Membership counters, for logs and the API.
public struct SWIMCounters: Sendable, Hashable, Codable {
    /// Probes started at a protocol period (one per period).
    public var probesSent: UInt64 = 0
    /// Slow-rate probes of dead members.
    public var deadProbesSent: UInt64 = 0
    /// Probes sent at once to every live member to spread news this node made (start, a suspicion
    /// raised, a death declared, a refutation).
    public var announcementsSent: UInt64 = 0
    /// Acks that answered our period probe, directly or relayed.
    public var acksReceived: UInt64 = 0
    /// Ping-reqs sent after a direct probe timed out.
    public var indirectProbes: UInt64 = 0
    /// Probes sent on another member's behalf (ping-reqs served).
    public var relayedProbes: UInt64 = 0
    public var suspicionsRaised: UInt64 = 0
    /// Times this node bumped its incarnation to deny a suspicion, death or leave about itself.
    public var refutations: UInt64 = 0
    /// Suspects this node declared dead when their suspicion timed out.
    public var deathsDeclared: UInt64 = 0
    /// Suspects that came back alive with a higher incarnation before timing out.
    public var falseSuspicionsCleared: UInt64 = 0
    /// Tick gaps long enough to mean this node itself was stalled.
    public var stallsDetected: UInt64 = 0
    /// Probe misses not held against the member: this node had just started and nobody had yet
    /// answered it (startup grace), so the fault was as likely its own.
    public var startupMissesIgnored: UInt64 = 0
    /// Suspects not declared dead at their deadline because they were heard directly meanwhile.
    public var deathsAverted: UInt64 = 0
    /// Members that announced a graceful restart and were held (no suspicion, no election).
    public var restartHoldsStarted: UInt64 = 0
    /// Restarting members that did not return within restartHoldNanos (declared dead).
    public var restartHoldsExpired: UInt64 = 0
    public init() {}
}

/// The SWIM failure detector of one node, after Apple's swift-cluster-membership `SWIM.Instance`,
/// with Lifeguard-style local health. A pure value: no I/O, no clock, no global randomness. The
/// shell calls `onTick` every `tickNanos`, hands every authenticated gossip message to `onMessage`
/// and carries out the returned actions.
///
/// Membership is static (the configured peers); members are never forgotten: dead ones are still
/// probed every `deadProbePeriodNanos` so their return is noticed (members that left are not: they
/// announce themselves when they come back). Departures from the SWIM paper, each for the 300 ms
/// detection budget or for fewer false positives (the tests measure both):
/// - The probe target is the live member with the oldest evidence of life (suspects first), ties in
///   random order, instead of plain round robin: in a healthy cluster that visits every member like
///   round robin, but a member that falls silent is probed by everyone within about one period.
/// - News this node makes itself is sent at once to every live member ("announcements") instead of
///   waiting for piggyback rounds, so a suspicion or death reaches the whole cluster in one hop.
/// - A message to a member we hold as suspect or dead carries that belief, so it can refute.
public struct SWIM: Sendable {
    public let selfID: UInt32
    public let settings: SWIMSettings
    /// Attached unchanged to every outgoing message (the election's adverts; opaque here).
    public var localAdverts: [InstanceAdvert] = []
    /// This node's incarnation: grows when it refutes a suspicion about itself.
    public private(set) var incarnation: UInt32
    /// Set by `leave()`: this node announces `left` (or `restarting`) and no longer probes.
    public private(set) var hasLeft = false
    /// What `leave()` announces about this node.
    private var departure: MemberStatus = .left
    public private(set) var counters = SWIMCounters()

    /// Peers sorted by node id (deterministic iteration), and their slots.
    private var peers: [Member]
    private let slots: [UInt32: Int]
    private var queue: Piggyback
    private var rng: SplitMix64
    private var probe: PendingProbe?
    private var nextPeriodNanos: UInt64
    private var lastTickNanos: UInt64
    private var started = false
    private var startedAtNanos: UInt64 = 0
    /// Some member answered one of our probes: our own sending works.
    private var roundTripSeen = false
    private var nextProbeID: UInt32 = 0
    /// Ping-reqs served: the ack from the target is forwarded to the requester until expiry.
    private var relays: [RelayKey: UInt64] = [:]
    /// Scratch for one call: the actions so far, and whether news of ours must be announced.
    private var output: [SWIMAction] = []
    private var announce = false
    private var announceAlso: [UInt32] = []

    private struct PendingProbe: Sendable {
        var id: UInt32
        var target: UInt32
        /// Direct ack wait ends here: then ping-req (or suspect, with nobody to ask).
        var directDeadline: UInt64
        /// Indirect probing ends with the period: then suspect.
        var periodEnd: UInt64
        var indirectSent = false
    }

    private struct RelayKey: Hashable, Sendable {
        var requester: UInt32
        var probeID: UInt32
        var target: UInt32
    }

    public init(selfID: UInt32, peers: [UInt32], incarnation: UInt32, settings: SWIMSettings = .init(), seed: UInt64,
                nowNanos: UInt64) {
        self.selfID = selfID
        self.settings = settings.sanitized
        self.incarnation = incarnation
        var rng = SplitMix64(seed: seed)
        let ids = Set(peers).subtracting([selfID, 0]).sorted()
        self.peers = ids.map { Member(node: $0, nowNanos: nowNanos, tiebreak: rng.next()) }
        var slots: [UInt32: Int] = [:]
        for (i, id) in ids.enumerated() { slots[id] = i }
        self.slots = slots
        queue = Piggyback(members: ids.count + 1, multiplier: self.settings.retransmitMultiplier)
        nextProbeID = UInt32(truncatingIfNeeded: rng.next())
        self.rng = rng
        nextPeriodNanos = nowNanos
        lastTickNanos = nowNanos
    }

    // MARK: Views

    /// Every peer (not this node), by node id.
    public var members: [MemberInfo] { peers.map(\.info) }

    public func member(_ node: UInt32) -> MemberInfo? {
        slots[node].map { peers[$0].info }
    }

    /// The believed status of a peer, or this node's own; nil for a node not in the cluster.
    public func status(of node: UInt32) -> MemberStatus? {
        if node == selfID { return hasLeft ? departure : .alive }
        return slots[node].map { peers[$0].status }
    }

    /// Updates still waiting to be piggybacked.
    public var pendingUpdates: Int { queue.count }

    /// How many times each update is piggybacked before it is dropped.
    public var retransmitBudget: Int { queue.budget }

    // MARK: Events

    /// Call every `tickNanos` (the first call right after init): starts probes, handles timeouts.
    public mutating func onTick(nowNanos now: UInt64) -> [SWIMAction] {
        guard !hasLeft else { return [] }
        guard started else {
            // Say hello to everyone at once, so a restarted node is seen alive in one round trip,
            // and start probing at a random phase so nodes started together do not probe in step.
            started = true
            startedAtNanos = now
            lastTickNanos = now
            nextPeriodNanos = now.plus(rng.next() % settings.protocolPeriodNanos)
            announce = true
            return finish()
        }
        detectStall(now)
        expireSuspicions(now)
        expireRestartHolds(now)
        advanceProbe(now)
        // A probe still in flight (late or irregular ticks) keeps its full window; the next one
        // starts when it ends.
        if now >= nextPeriodNanos, probe == nil {
            nextPeriodNanos = nextPeriodNanos.plus(settings.protocolPeriodNanos)
            if nextPeriodNanos <= now { nextPeriodNanos = now.plus(settings.protocolPeriodNanos) }
            startProbe(now)
        }
        probeDeadMembers(now)
        if !relays.isEmpty { relays = relays.filter { $0.value > now } }
        return finish()
    }

    /// An authenticated gossip message from `sender` (the shell checked the seal and the sender).
    public mutating func onMessage(_ m: SyncMessage, from sender: UInt32, nowNanos now: UInt64) -> [SWIMAction] {
        guard sender != selfID, let s = slots[sender] else { return [] }
        let gossip: Gossip
        switch m {
        case .probe(let p): gossip = p.gossip
        case .probeRequest(let r): gossip = r.gossip
        case .probeAck(let a): gossip = a.gossip
        default: return []
        }
        if hasLeft {
            // Keep answering probes: each ack repeats our `left`, in case the announcement was lost.
            if case .probe(let p) = m, p.target == selfID { ack(p, to: sender) }
            return finish()
        }

        peers[s].heard = true
        peers[s].lastHeardNanos = now
        peers[s].lastConfirmedNanos = now
        // An ack answers a probe of ours: what we send arrives.
        if case .probeAck(let a) = m, a.requester == 0 || a.requester == selfID { roundTripSeen = true }
        // Any message straight from the target answers our probe of it, whatever it is.
        if let p = probe, p.target == sender {
            if case .probeAck(let a) = m, a.requester == 0, a.probeID == p.id, a.target == sender {
                counters.acksReceived += 1
            }
            probe = nil
        }

        for u in gossip.updates { apply(u, now) }

        switch m {
        case .probe(let p):
            if p.target == selfID { ack(p, to: sender) }
        case .probeRequest(let r):
            serveProbeRequest(r, from: sender, now)
        case .probeAck(let a):
            handleAck(a, from: sender, now)
        default:
            break
        }
        return finish()
    }

    /// Announces `left` to every member; afterwards this node only answers probes. With
    /// `restarting`, announces `restarting` instead: peers hold this node (no suspicion, no
    /// election) for their restartHoldNanos, until its next life says it is alive. Sent `copies`
    /// times to each member, since the process may be gone before any ack could be missed.
    public mutating func leave(restarting: Bool = false, copies: Int = 1) -> [SWIMAction] {
        guard !hasLeft else { return [] }
        hasLeft = true
        departure = restarting ? .restarting : .left
        probe = nil
        relays = [:]
        for m in peers where m.status != .left {
            for _ in 0..<max(1, copies) {
                sendProbe(to: m.node)
                counters.announcementsSent += 1
            }
        }
        return finish()
    }

    // MARK: Probing

    private mutating func startProbe(_ now: UInt64) {
        // Suspects first (they need our suspicion to refute, we need a verdict), then the member
        // we have the oldest evidence of life for.
        var best: Int?
        for i in peers.indices where peers[i].isLive {
            guard let b = best else { best = i; continue }
            let (x, y) = (peers[i], peers[b])
            let xs = x.status == .suspect, ys = y.status == .suspect
            if xs != ys {
                if xs { best = i }
            } else if x.lastConfirmedNanos != y.lastConfirmedNanos {
                if x.lastConfirmedNanos < y.lastConfirmedNanos { best = i }
            } else if x.tiebreak < y.tiebreak {
                best = i
            }
        }
        guard let i = best else { return }
        peers[i].tiebreak = rng.next()
        let id = sendProbe(to: peers[i].node)
        probe = PendingProbe(id: id, target: peers[i].node, directDeadline: now.plus(settings.probeTimeoutNanos),
                             periodEnd: now.plus(settings.protocolPeriodNanos))
        counters.probesSent += 1
    }

    private mutating func advanceProbe(_ now: UInt64) {
        guard var p = probe else { return }
        if now >= p.periodEnd {
            probe = nil
            probeFailed(p, now)
            return
        }
        guard !p.indirectSent, now >= p.directDeadline else { return }
        let helpers = peers.filter { $0.status == .alive && $0.node != p.target }.map(\.node)
            .shuffled(using: &rng).prefix(settings.indirectProbeCount)
        if helpers.isEmpty {
            // Nobody to ask (two-node cluster, or everyone else down): the direct miss decides.
            probe = nil
            probeFailed(p, now)
            return
        }
        for h in helpers {
            let r = ProbeRequest(probeID: p.id, target: p.target, gossip: gossip(for: h))
            output.append(.send(.probeRequest(r), to: h))
            counters.indirectProbes += 1
        }
        p.indirectSent = true
        probe = p
    }

    private mutating func probeFailed(_ p: PendingProbe, _ now: UInt64) {
        guard let i = slots[p.target], peers[i].status == .alive else { return }
        if !roundTripSeen && now < startedAtNanos.plus(settings.startupGraceNanos) {
            counters.startupMissesIgnored += 1
            return
        }
        // Suspect at the incarnation we know: only the member itself can deny it, with a higher one.
        peers[i].status = .suspect
        peers[i].suspectedAtNanos = now
        peers[i].suspicionDeadline = now.plus(settings.suspicionTimeoutNanos)
        counters.suspicionsRaised += 1
        queue.enqueue(peers[i].update)
        changed(i)
        announce = true
        announceAlso.append(p.target)
    }

    private mutating func expireSuspicions(_ now: UInt64) {
        for i in peers.indices where peers[i].status == .suspect && now >= peers[i].suspicionDeadline {
            // Direct evidence beats the timeout: a suspect we heard from after suspecting it is
            // running, and only cannot hear us (or refute in time). It stays suspect, and is
            // declared dead only after a whole suspicion timeout of silence.
            if peers[i].lastHeardNanos > peers[i].suspectedAtNanos {
                peers[i].suspectedAtNanos = now
                peers[i].suspicionDeadline = now.plus(settings.suspicionTimeoutNanos)
                counters.deathsAverted += 1
                continue
            }
            peers[i].status = .dead
            peers[i].nextDeadProbeNanos = now.plus(settings.deadProbePeriodNanos)
            counters.deathsDeclared += 1
            if probe?.target == peers[i].node { probe = nil }
            queue.enqueue(peers[i].update)
            changed(i)
            // The member too: if it is in fact running, it refutes at once.
            announce = true
            announceAlso.append(peers[i].node)
        }
    }

    /// A restarting member that has not come back within the hold is dead, as a silent one would
    /// be; announced at the incarnation it restarted with (dead outranks restarting there).
    private mutating func expireRestartHolds(_ now: UInt64) {
        for i in peers.indices where peers[i].status == .restarting && now >= peers[i].holdDeadline {
            peers[i].status = .dead
            peers[i].nextDeadProbeNanos = now.plus(settings.deadProbePeriodNanos)
            counters.restartHoldsExpired += 1
            counters.deathsDeclared += 1
            queue.enqueue(peers[i].update)
            changed(i)
        }
    }

    /// Dead and restarting members are probed now and then, so their return is noticed even if
    /// their own hello is lost.
    private mutating func probeDeadMembers(_ now: UInt64) {
        for i in peers.indices where (peers[i].status == .dead || peers[i].status == .restarting)
            && now >= peers[i].nextDeadProbeNanos {
            peers[i].nextDeadProbeNanos = now.plus(settings.deadProbePeriodNanos)
            sendProbe(to: peers[i].node)
            counters.deadProbesSent += 1
        }
    }

    /// Lifeguard-style local health: a long gap between ticks means this process was not running
    /// (CPU starvation, a paused VM). Missing acks in that time say nothing about the others, so
    /// every pending deadline moves back by the gap.
    private mutating func detectStall(_ now: UInt64) {
        let gap = now > lastTickNanos ? now - lastTickNanos : 0
        lastTickNanos = max(lastTickNanos, now)
        let (limit, overflow) = settings.stallFactor.multipliedReportingOverflow(by: settings.tickNanos)
        guard !overflow, gap > limit else { return }
        counters.stallsDetected += 1
        if var p = probe {
            p.directDeadline = p.directDeadline.plus(gap)
            p.periodEnd = p.periodEnd.plus(gap)
            probe = p
        }
        nextPeriodNanos = nextPeriodNanos.plus(gap)
        for i in peers.indices where peers[i].status == .suspect {
            peers[i].suspicionDeadline = peers[i].suspicionDeadline.plus(gap)
        }
        relays = relays.mapValues { $0.plus(gap) }
    }

    // MARK: Messages

    private mutating func ack(_ p: Probe, to sender: UInt32) {
        // For an indirect probe the ack goes back through the helper (the sender), requester kept.
        let a = ProbeAck(probeID: p.probeID, target: selfID, requester: p.requester, gossip: gossip(for: sender))
        output.append(.send(.probeAck(a), to: sender))
    }

    private mutating func serveProbeRequest(_ r: ProbeRequest, from sender: UInt32, _ now: UInt64) {
        if r.target == selfID {
            // Asked to probe ourselves: we are the proof.
            let a = ProbeAck(probeID: r.probeID, target: selfID, requester: sender, gossip: gossip(for: sender))
            output.append(.send(.probeAck(a), to: sender))
            return
        }
        // Bounded: a few per member is plenty (one probe per period each).
        guard r.target != sender, slots[r.target] != nil, relays.count < 4 * peers.count else { return }
        relays[RelayKey(requester: sender, probeID: r.probeID, target: r.target)] =
            now.plus(settings.protocolPeriodNanos)
        let p = Probe(probeID: r.probeID, target: r.target, requester: sender, gossip: gossip(for: r.target))
        output.append(.send(.probe(p), to: r.target))
        counters.relayedProbes += 1
    }

    private mutating func handleAck(_ a: ProbeAck, from sender: UInt32, _ now: UInt64) {
        if a.requester == 0 { return }  // a direct ack: settled above with the sender's evidence
        if a.requester == selfID {
            // Relayed answer to our indirect probe.
            guard let p = probe, p.id == a.probeID, p.target == a.target, let t = slots[a.target] else { return }
            probe = nil
            counters.acksReceived += 1
            peers[t].lastConfirmedNanos = now
            return
        }
        // The target answering a probe we made for someone else: pass it on.
        let key = RelayKey(requester: a.requester, probeID: a.probeID, target: a.target)
        guard a.target == sender, relays.removeValue(forKey: key) != nil, slots[a.requester] != nil else { return }
        let relayed = ProbeAck(probeID: a.probeID, target: a.target, requester: a.requester,
                               gossip: gossip(for: a.requester))
        output.append(.send(.probeAck(relayed), to: a.requester))
    }

    /// Sends a probe that nothing waits for (announcements, dead members, leave); any ack still
    /// counts as evidence and carries gossip back.
    @discardableResult
    private mutating func sendProbe(to node: UInt32) -> UInt32 {
        nextProbeID &+= 1
        let p = Probe(probeID: nextProbeID, target: node, requester: 0, gossip: gossip(for: node))
        output.append(.send(.probe(p), to: node))
        return nextProbeID
    }

    /// Our own update first, then the recipient's status if we do not hold it alive (so it can
    /// refute), then the least-sent pending updates: at most maxPiggybackUpdates besides our own.
    private mutating func gossip(for recipient: UInt32) -> Gossip {
        var updates = [MemberUpdate(node: selfID, incarnation: incarnation, status: hasLeft ? departure : .alive)]
        var room = settings.maxPiggybackUpdates
        var excluded: UInt32?
        if room > 0, let r = slots[recipient], peers[r].status != .alive {
            updates.append(peers[r].update)
            queue.noteSent(peers[r].update)
            room -= 1
            excluded = recipient
        }
        updates += queue.take(room, excluding: excluded)
        return Gossip(updates: updates, adverts: localAdverts)
    }

    // MARK: Updates

    private mutating func apply(_ u: MemberUpdate, _ now: UInt64) {
        if u.node == selfID {
            applyAboutSelf(u)
            return
        }
        guard let i = slots[u.node], u.supersedes(incarnation: peers[i].incarnation, status: peers[i].status) else {
            return
        }
        let old = peers[i].status
        peers[i].incarnation = u.incarnation
        peers[i].status = u.status
        switch u.status {
        case .alive:
            if old == .suspect { counters.falseSuspicionsCleared += 1 }
        case .suspect:
            peers[i].suspectedAtNanos = now
            peers[i].suspicionDeadline = now.plus(settings.suspicionTimeoutNanos)
        case .dead, .left:
            peers[i].nextDeadProbeNanos = now.plus(settings.deadProbePeriodNanos)
            if probe?.target == u.node { probe = nil }
        case .restarting:
            // Only a hold this node started counts down here: a repeat of the same news (every
            // ack of the departing process carries it) does not extend it, by the supersede rule.
            peers[i].holdDeadline = now.plus(settings.restartHoldNanos)
            peers[i].nextDeadProbeNanos = now.plus(settings.deadProbePeriodNanos)
            if probe?.target == u.node { probe = nil }
            counters.restartHoldsStarted += 1
        }
        // New to us, so possibly to others: pass it on.
        queue.enqueue(u)
        if old != u.status { changed(i) }
    }

    /// Refutation: a claim that we are suspect, dead or left at our incarnation (or a later one,
    /// from a previous life) is denied by going above it; every message carries our update first.
    private mutating func applyAboutSelf(_ u: MemberUpdate) {
        guard u.incarnation >= incarnation else { return }
        if u.status == .alive {
            // Someone remembers us alive at a later incarnation (a previous life): catch up.
            incarnation = u.incarnation
            return
        }
        guard u.incarnation < .max else { return }  // cannot go above; never trap
        incarnation = u.incarnation + 1
        counters.refutations += 1
        announce = true
    }

    private mutating func changed(_ i: Int) {
        let m = peers[i]
        output.append(.memberChanged(node: m.node, status: m.status, incarnation: m.incarnation))
    }

    /// Ends a call: announcements of our own news go to every live member (plus any member the
    /// news is about), then the actions are handed over.
    private mutating func finish() -> [SWIMAction] {
        if announce && !hasLeft {
            var targets = Set(announceAlso)
            for m in peers where m.isLive { targets.insert(m.node) }
            for t in targets.sorted() {
                sendProbe(to: t)
                counters.announcementsSent += 1
            }
        }
        announce = false
        announceAlso = []
        let out = output
        output = []
        return out
    }
}
