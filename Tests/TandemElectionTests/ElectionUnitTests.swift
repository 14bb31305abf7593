import Testing
import TandemElection
import TandemSyncWire

/// Direct tests of one Election value, driven call by call.

private let ms: UInt64 = 1_000_000
private let instanceName = "llb-inst0"
private let instanceID = HAInstance.instanceID(instanceName)

private func settings(priority: UInt8 = 100) -> ElectionSettings {
    ElectionSettings(instanceName: instanceName, priority: priority)
}

private func advert(term: UInt64, role: HARole = .backup, priority: UInt8 = 100,
                    flags: InstanceAdvert.Flags = [.inSync]) -> InstanceAdvert {
    InstanceAdvert(instance: instanceID, term: term, role: role, priority: priority, flags: flags)
}

/// A node alone (its peers dead at once) that claimed term 1 after settling.
private func loneMaster(_ id: UInt32 = 1, peers: [UInt32] = [2], priority: UInt8 = 100) -> Election {
    var e = Election(selfID: id, peers: peers, settings: settings(priority: priority), nowNanos: 0)
    _ = e.onLocalSync(true, nowNanos: 0)
    for p in peers { _ = e.onPeerDead(p, nowNanos: 0) }
    let actions = e.onTick(nowNanos: 1000 * ms)
    precondition(actions == [.becomeMaster(term: 1)])
    return e
}

private func isBackup(_ actions: [ElectionAction]) -> Bool {
    actions.contains { if case .becomeBackup = $0 { true } else { false } }
}

@Suite("Election unit")
struct ElectionUnitTests {
    @Test("instance id is FNV-1a 32 over the UTF-8 name")
    func fnv() {
        // Published FNV-1a 32 test vectors.
        #expect(HAInstance.instanceID("") == 0x811C_9DC5)
        #expect(HAInstance.instanceID("a") == 0xE40C_292C)
        #expect(HAInstance.instanceID("foobar") == 0xBF9C_F968)
        #expect(settings().instanceID == HAInstance.instanceID("llb-inst0"))
        let e = Election(selfID: 1, peers: [2], settings: settings(), nowNanos: 0)
        #expect(e.advert.instance == HAInstance.instanceID("llb-inst0"))
        #expect(e.advert == InstanceAdvert(instance: instanceID, term: 0, role: .backup, priority: 100, flags: []))
    }

    @Test("adverts for other instances and from non-peers are ignored")
    func ignored() {
        var e = Election(selfID: 1, peers: [2], settings: settings(), nowNanos: 0)
        var other = advert(term: 9, role: .master)
        other.instance &+= 1
        #expect(e.onAdvert(other, from: 2, nowNanos: ms).isEmpty)
        #expect(e.onAdvert(advert(term: 9, role: .master), from: 7, nowNanos: ms).isEmpty)
        #expect(e.onAdvert(advert(term: 9, role: .master), from: 1, nowNanos: ms).isEmpty)
        #expect(e.term == 0 && e.masterID == nil && e.counters.advertsIgnored == 3)
        // A stranger's "dead" changes nothing either.
        #expect(e.onPeerDead(7, nowNanos: ms).isEmpty && e.alivePeers == [2])
    }

    @Test("a lone node claims only after settle")
    func loneSettle() {
        var e = Election(selfID: 1, peers: [2, 3], settings: settings(), nowNanos: 5_000 * ms)
        #expect(e.onPeerDead(2, nowNanos: 5_100 * ms).isEmpty)
        #expect(e.onPeerDead(3, nowNanos: 5_200 * ms).isEmpty)
        #expect(e.onTick(nowNanos: 5_999 * ms).isEmpty && !e.settled)
        #expect(e.onTick(nowNanos: 6_000 * ms) == [.becomeMaster(term: 1)])
        #expect(e.role == .master && e.masterID == 1 && e.advert.role == .master && e.advert.term == 1)
        #expect(e.lastTransition?.to == .master && e.counters.claims == 1)
    }

    @Test("settle: a starting node with a live MASTER peer never claims, whatever its priority")
    func settleWithMaster() {
        var e = Election(selfID: 9, peers: [1, 2], settings: settings(priority: 255), nowNanos: 0)
        _ = e.onLocalSync(true, nowNanos: 0)
        // Nothing heard yet: no claim, not even at the end of the hold if nothing is known.
        #expect(e.onTick(nowNanos: 500 * ms).isEmpty)
        #expect(e.onAdvert(advert(term: 4, role: .master, priority: 1), from: 1, nowNanos: 600 * ms).isEmpty)
        #expect(!e.settled, "one live peer not heard yet")
        #expect(e.onAdvert(advert(term: 4, priority: 1), from: 2, nowNanos: 610 * ms).isEmpty)
        #expect(e.settled && e.masterID == 1 && e.term == 4)
        for t in stride(from: 620, to: 10_000, by: 10) {
            #expect(e.onTick(nowNanos: UInt64(t) * ms).isEmpty)
        }
        #expect(e.role == .backup && e.counters.claims == 0)
    }

    @Test("term fencing: a MASTER steps down in the same call that brings a higher term")
    func fencing() {
        var a = loneMaster()
        _ = a.onPeerAlive(2, nowNanos: 1_100 * ms)
        // A BACKUP's advert carries the term too: any message fences.
        let actions = a.onAdvert(advert(term: 2), from: 2, nowNanos: 1_101 * ms)
        #expect(actions == [.becomeBackup(term: 2, reason: "higher term 2 from node 2")])
        #expect(a.role == .backup && a.term == 2 && a.advert.role == .backup && a.advert.term == 2)
        // Even an advert from a peer held as dead fences (the other direction is never unsafe).
        var b = loneMaster()
        #expect(b.onAdvert(advert(term: 7, role: .master), from: 2, nowNanos: 1_100 * ms)
            == [.becomeBackup(term: 7, reason: "higher term 7 from node 2")])
        // SWIM holds it as dead, but a MASTER that talks to us is not gone: no reclaim (and no
        // fencing back and forth) while its adverts keep coming.
        #expect(b.peerAdverts.isEmpty && b.masterID == 2 && b.candidates == [2, 1])
        #expect(b.onAdvert(advert(term: 7, role: .master), from: 2, nowNanos: 1_300 * ms).isEmpty)
        #expect(b.onTick(nowNanos: 1_700 * ms).isEmpty && b.masterID == 2)
        // Silent for longer than the candidate timeout: it is as dead as SWIM says.
        #expect(b.onTick(nowNanos: 1_701 * ms) == [.becomeMaster(term: 8)])
    }

    @Test("a partition heals before SWIM notices: no fencing back and forth, the winner reasserts")
    func healBeforeDetection() {
        // Both held each other as dead; 2 claimed a higher term meanwhile.
        var a = loneMaster(1, peers: [2])
        var b = Election(selfID: 2, peers: [1], settings: settings(), nowNanos: 0)
        _ = b.onLocalSync(true, nowNanos: 0)
        #expect(b.onAdvert(advert(term: 1, role: .master), from: 1, nowNanos: 0).isEmpty)
        #expect(b.onPeerDead(1, nowNanos: 0) == [.becomeMaster(term: 2)])
        // Adverts cross; both still hold the other as dead.
        let aAdvert = a.advert, bAdvert = b.advert
        #expect(a.onAdvert(bAdvert, from: 2, nowNanos: 2_000 * ms)
            == [.becomeBackup(term: 2, reason: "higher term 2 from node 2")])
        #expect(b.onAdvert(aAdvert, from: 1, nowNanos: 2_000 * ms) == [.reassert(term: 2)])
        for t in stride(from: 2_050, through: 3_000, by: 50) {
            #expect(a.onAdvert(b.advert, from: 2, nowNanos: UInt64(t) * ms).isEmpty)
            #expect(b.onAdvert(a.advert, from: 1, nowNanos: UInt64(t) * ms).isEmpty)
        }
        #expect(a.role == .backup && b.role == .master && a.masterID == 2 && a.term == 2 && b.term == 2)
        // SWIM catches up: nothing changes.
        #expect(a.onPeerAlive(2, nowNanos: 3_001 * ms).isEmpty && b.onPeerAlive(1, nowNanos: 3_001 * ms).isEmpty)
        #expect(a.peerAdverts[2]?.role == .master)
    }

    @Test("same-term race: the higher (priority, id) stays and reasserts once, the other steps down",
          arguments: [(UInt8(100), UInt8(100)), (UInt8(200), UInt8(50)), (UInt8(50), UInt8(200))])
    func sameTermRace(p1: UInt8, p2: UInt8) {
        var n1 = loneMaster(1, peers: [2], priority: p1)
        var n2 = loneMaster(2, peers: [1], priority: p2)
        let winner: UInt32 = (p1, 1) > (p2, 2) ? 1 : 2
        _ = n1.onPeerAlive(2, nowNanos: 2_000 * ms)
        _ = n2.onPeerAlive(1, nowNanos: 2_000 * ms)
        // The adverts cross on the wire: each was sent before the other arrived.
        let (ad1, ad2) = (n1.advert, n2.advert)
        let a1 = n1.onAdvert(ad2, from: 2, nowNanos: 2_001 * ms)
        let a2 = n2.onAdvert(ad1, from: 1, nowNanos: 2_001 * ms)
        let (won, lost) = winner == 1 ? (a1, a2) : (a2, a1)
        #expect(won == [.reassert(term: 1)])
        #expect(isBackup(lost) && lost.count == 1)
        #expect(n1.role == (winner == 1 ? .master : .backup) && n2.role == (winner == 2 ? .master : .backup))
        #expect(n1.masterID == winner && n2.masterID == winner)
        // Later adverts of the same conflict (still in flight) do not reassert again.
        if winner == 1 {
            #expect(n1.onAdvert(advert(term: 1, role: .master, priority: p2), from: 2, nowNanos: 2_050 * ms).isEmpty)
            #expect(n1.counters.reasserts == 1)
        } else {
            #expect(n2.onAdvert(advert(term: 1, role: .master, priority: p1), from: 1, nowNanos: 2_050 * ms).isEmpty)
            #expect(n2.counters.reasserts == 1 && n1.counters.racesLost == 1)
        }
    }

    @Test("a MASTER that meets a lower-term MASTER reasserts; the other is fenced by our term")
    func lowerTermMaster() {
        var a = loneMaster()
        _ = a.onPeerAlive(2, nowNanos: 1_100 * ms)
        _ = a.onAdvert(advert(term: 3), from: 2, nowNanos: 1_101 * ms)   // fenced to term 3
        #expect(a.onPeerDead(2, nowNanos: 1_500 * ms) == [.becomeMaster(term: 4)])
        #expect(a.onPeerAlive(2, nowNanos: 3_000 * ms).isEmpty)
        #expect(a.onAdvert(advert(term: 3, role: .master), from: 2, nowNanos: 3_001 * ms) == [.reassert(term: 4)])
        #expect(a.onAdvert(advert(term: 3, role: .master), from: 2, nowNanos: 3_051 * ms).isEmpty)
        #expect(a.onAdvert(advert(term: 4), from: 2, nowNanos: 3_101 * ms).isEmpty)
        #expect(a.role == .master && a.term == 4)
    }

    @Test("sync gating: out-of-sync nodes wait while an in-sync candidate is alive")
    func syncGating() {
        // Node 3 has the best priority but is out of sync; node 1 is in sync.
        var c = Election(selfID: 3, peers: [1], settings: settings(priority: 250), nowNanos: 0)
        _ = c.onLocalSync(false, nowNanos: 0)
        #expect(c.onAdvert(advert(term: 0, priority: 10, flags: [.inSync]), from: 1, nowNanos: 10 * ms).isEmpty)
        #expect(c.candidates == [1])
        // Even after many candidate timeouts: it is not a candidate at all.
        #expect(c.onTick(nowNanos: 5_000 * ms).isEmpty)
        // Node 1 out of sync too: priorities decide again.
        #expect(c.onAdvert(advert(term: 0, priority: 10, flags: []), from: 1, nowNanos: 5_010 * ms)
            == [.becomeMaster(term: 1)])
        // And the in-sync node alone with an out-of-sync better peer claims at once.
        var a = Election(selfID: 1, peers: [3], settings: settings(priority: 10), nowNanos: 0)
        _ = a.onLocalSync(true, nowNanos: 0)
        #expect(a.onAdvert(advert(term: 0, priority: 250, flags: []), from: 3, nowNanos: 10 * ms)
            == [.becomeMaster(term: 1)])
    }

    @Test("candidate timeout: the next candidate claims when the best stays silent")
    func candidateTimeout() {
        var e = Election(selfID: 1, peers: [2, 3], settings: settings(priority: 10), nowNanos: 0)
        _ = e.onLocalSync(true, nowNanos: 0)
        _ = e.onAdvert(advert(term: 5, priority: 200), from: 2, nowNanos: 10 * ms)
        _ = e.onAdvert(advert(term: 5, priority: 100), from: 3, nowNanos: 10 * ms)
        #expect(e.settled && e.candidates == [2, 3, 1])
        // Rank 2: two timeouts (800 ms) after settling.
        #expect(e.onTick(nowNanos: 809 * ms).isEmpty)
        #expect(e.onTick(nowNanos: 810 * ms) == [.becomeMaster(term: 6)])
        #expect(e.counters.claimsAfterTimeout == 1)
        // A MASTER advert from a better node with the same term wins the race.
        #expect(isBackup(e.onAdvert(advert(term: 6, role: .master, priority: 200), from: 2, nowNanos: 820 * ms)))
        #expect(e.masterID == 2)
    }

    @Test("the master's loss restarts the candidate timeouts")
    func masterLoss() {
        var e = Election(selfID: 1, peers: [2, 3], settings: settings(priority: 10), nowNanos: 0)
        _ = e.onLocalSync(true, nowNanos: 0)
        _ = e.onAdvert(advert(term: 1, role: .master, priority: 200), from: 2, nowNanos: 10 * ms)
        _ = e.onAdvert(advert(term: 1, priority: 100), from: 3, nowNanos: 10 * ms)
        #expect(e.onTick(nowNanos: 3_000 * ms).isEmpty && e.masterID == 2)
        #expect(e.onPeerDead(2, nowNanos: 3_000 * ms).isEmpty)
        #expect(e.masterID == nil && e.candidates == [3, 1])
        #expect(e.onTick(nowNanos: 3_399 * ms).isEmpty)
        #expect(e.onTick(nowNanos: 3_400 * ms) == [.becomeMaster(term: 2)])
    }

    @Test("a returning old master stays BACKUP; the MASTER reasserts only if it was MASTER lately")
    func returningPeer() {
        var e = Election(selfID: 1, peers: [2], settings: settings(priority: 10), nowNanos: 0)
        _ = e.onLocalSync(true, nowNanos: 0)
        _ = e.onAdvert(advert(term: 1, role: .master, priority: 200), from: 2, nowNanos: 10 * ms)
        #expect(e.onPeerDead(2, nowNanos: 100 * ms) == [.becomeMaster(term: 2)])
        #expect(e.peerAdverts.isEmpty && e.candidates.isEmpty)
        #expect(e.onPeerAlive(2, nowNanos: 200 * ms).isEmpty)
        #expect(e.candidates.isEmpty, "known again only through its advert")
        // It restarted (term 0, BACKUP, never MASTER in this life): it moved nothing, no cloud call.
        #expect(e.onAdvert(advert(term: 0, priority: 200), from: 2, nowNanos: 210 * ms).isEmpty)
        #expect(e.onAdvert(advert(term: 2, priority: 200), from: 2, nowNanos: 260 * ms).isEmpty)
        #expect(e.counters.reasserts == 0)
        // Held as dead again, it returns saying it was MASTER lately (apart, it may have moved the
        // IP, then been fenced by our term): reassert once.
        _ = e.onPeerDead(2, nowNanos: 300 * ms)
        _ = e.onPeerAlive(2, nowNanos: 400 * ms)
        #expect(e.onAdvert(advert(term: 2, priority: 200, flags: [.inSync, .recentMaster]), from: 2, nowNanos: 410 * ms)
            == [.reassert(term: 2)])
        #expect(e.onAdvert(advert(term: 2, priority: 200, flags: [.inSync, .recentMaster]), from: 2, nowNanos: 460 * ms).isEmpty)
        #expect(e.role == .master && e.term == 2 && e.candidates == [2])
        // The restarted node itself: sticky, whatever its priority.
        var r = Election(selfID: 2, peers: [1], settings: settings(priority: 200), nowNanos: 0)
        _ = r.onLocalSync(true, nowNanos: 0)
        #expect(r.onAdvert(e.advert, from: 1, nowNanos: 50 * ms).isEmpty)
        #expect(r.onTick(nowNanos: 5_000 * ms).isEmpty && r.role == .backup && r.masterID == 1 && r.term == 2)
    }

    @Test("FAULT after a failed takeover, BACKUP and eligible after the hold; stale results ignored")
    func fault() {
        var e = loneMaster()
        // A result for another term changes nothing.
        #expect(e.onTakeover(succeeded: false, term: 0, nowNanos: 1_010 * ms).isEmpty)
        #expect(e.role == .master && e.counters.staleTakeoverResults == 1)
        #expect(e.onTakeover(succeeded: true, term: 1, nowNanos: 1_020 * ms).isEmpty)
        #expect(e.onTakeover(succeeded: false, term: 1, nowNanos: 1_030 * ms)
            == [.becomeFault(reason: "takeover failed for term 1")])
        #expect(e.role == .fault && e.advert.role == .fault && e.masterID == nil && e.candidates.isEmpty)
        // While FAULT a late success of the same term is stale too.
        #expect(e.onTakeover(succeeded: true, term: 1, nowNanos: 1_040 * ms).isEmpty && e.role == .fault)
        #expect(e.onTick(nowNanos: 3_029 * ms).isEmpty)
        // Alone: back to BACKUP and, being the only candidate, claims a new term in the same call.
        #expect(e.onTick(nowNanos: 3_030 * ms)
            == [.becomeBackup(term: 1, reason: "fault cleared"), .becomeMaster(term: 2)])
        #expect(e.counters.faults == 1 && e.counters.faultsCleared == 1)

        // A node fenced while its takeover ran: the failure is for an old term and ignored.
        var f = loneMaster()
        _ = f.onPeerAlive(2, nowNanos: 1_100 * ms)
        _ = f.onAdvert(advert(term: 2, role: .master), from: 2, nowNanos: 1_101 * ms)
        #expect(f.onTakeover(succeeded: false, term: 1, nowNanos: 1_200 * ms).isEmpty)
        #expect(f.role == .backup && f.masterID == 2)
    }

    @Test("cistate MASTER claims over a live master; cistate BACKUP steps down and stays out")
    func external() {
        var e = Election(selfID: 1, peers: [2], settings: settings(priority: 10), nowNanos: 0)
        _ = e.onLocalSync(true, nowNanos: 0)
        _ = e.onAdvert(advert(term: 3, role: .master, priority: 200), from: 2, nowNanos: 10 * ms)
        #expect(e.onExternal(.master, nowNanos: 20 * ms) == [.becomeMaster(term: 4)])
        #expect(e.advert.flags == [.inSync, .external, .recentMaster] && e.externalMaster)
        // Repeated calls do not churn terms; the old master's adverts do not trigger a reassert
        // (the claim's own takeover moves the IP).
        #expect(e.onExternal(.master, nowNanos: 30 * ms).isEmpty && e.term == 4)
        #expect(e.onAdvert(advert(term: 3, role: .master, priority: 200), from: 2, nowNanos: 40 * ms).isEmpty)
        #expect(e.onAdvert(advert(term: 4, priority: 200), from: 2, nowNanos: 90 * ms).isEmpty)
        #expect(e.onExternal(.backup, nowNanos: 100 * ms)
            == [.becomeBackup(term: 4, reason: "set to BACKUP from outside")])
        #expect(e.advert.flags == [.inSync, .external, .recentMaster] && e.externalBackup, "stepped down just now")
        // Out of candidacy: the peer dies, nobody else is left, still no claim.
        _ = e.onPeerDead(2, nowNanos: 200 * ms)
        #expect(e.onTick(nowNanos: 5_000 * ms).isEmpty && e.role == .backup)
        // FAULT is not something an operator sets.
        #expect(e.onExternal(.fault, nowNanos: 5_001 * ms).isEmpty)
        #expect(e.onExternal(.master, nowNanos: 5_010 * ms) == [.becomeMaster(term: 5)])
        // A peer externally set to BACKUP is no candidate for others.
        var b = Election(selfID: 3, peers: [2], settings: settings(priority: 10), nowNanos: 0)
        _ = b.onLocalSync(true, nowNanos: 0)
        #expect(b.onAdvert(advert(term: 0, priority: 200, flags: [.inSync, .external]), from: 2, nowNanos: 10 * ms)
            == [.becomeMaster(term: 1)])
    }

    @Test("no trap on hostile or odd input")
    func robustness() {
        var e = Election(selfID: 1, peers: [0, 1, 2, 2], settings: ElectionSettings(
            instanceName: "", priority: 0, settleNanos: .max, candidateTimeoutNanos: 0, faultHoldNanos: .max),
            nowNanos: .max - 5)
        #expect(e.peers == [2])
        var top = InstanceAdvert(instance: HAInstance.instanceID(""), term: .max, role: .master, priority: 0,
                                 flags: InstanceAdvert.Flags(rawValue: 0xFF))
        _ = e.onAdvert(top, from: 2, nowNanos: 0)           // the clock going backwards is ignored
        #expect(e.term == .max)
        _ = e.onPeerDead(2, nowNanos: .max)
        _ = e.onTick(nowNanos: .max)
        #expect(e.role == .master && e.term == .max)
        #expect(e.onTakeover(succeeded: false, term: .max, nowNanos: .max).first
            == .becomeFault(reason: "takeover failed for term \(UInt64.max)"))
        _ = e.onTick(nowNanos: .max)   // the hold saturates at the end of time
        top.role = .fault
        _ = e.onPeerAlive(2, nowNanos: .max)
        _ = e.onAdvert(top, from: 2, nowNanos: .max)
        _ = e.onExternal(.master, nowNanos: .max)
        #expect(e.role == .master && e.term == .max)
    }

    @Test("recentMaster: set while MASTER and for recentMasterNanos after stepping down")
    func recentMasterFlag() {
        var e = loneMaster()
        #expect(e.advert.flags.contains(.recentMaster))
        _ = e.onPeerAlive(2, nowNanos: 1_100 * ms)
        #expect(isBackup(e.onAdvert(advert(term: 5, role: .master), from: 2, nowNanos: 1_200 * ms)))
        #expect(e.advert.flags.contains(.recentMaster), "just stepped down")
        _ = e.onTick(nowNanos: 1_200 * ms + 30_000 * ms)
        #expect(e.advert.flags.contains(.recentMaster))
        _ = e.onTick(nowNanos: 1_201 * ms + 30_000 * ms)
        #expect(!e.advert.flags.contains(.recentMaster))
        // A node that was never MASTER never says so.
        let fresh = Election(selfID: 3, peers: [1], settings: settings(), nowNanos: 0)
        #expect(!fresh.advert.flags.contains(.recentMaster))
    }

    @Test("resume: a gracefully restarted MASTER keeps its term and role with no claim or takeover")
    func resumeAsMaster() {
        var e = Election(selfID: 1, peers: [2], settings: settings(), nowNanos: 0)
        e.resume(term: 7, asMaster: true, nowNanos: 0)
        #expect(e.role == .master && e.term == 7 && e.masterID == 1 && e.settled)
        #expect(e.advert.role == .master && e.advert.term == 7)
        #expect(e.counters.claims == 0)
        #expect(e.lastTransition?.reason == "resumed after a graceful restart")
        // The peer held it as restarting and still advertises BACKUP at term 7: nothing happens.
        _ = e.onPeerAlive(2, nowNanos: ms)
        #expect(e.onAdvert(advert(term: 7), from: 2, nowNanos: 2 * ms).isEmpty)
        #expect(e.onTick(nowNanos: 5_000 * ms).isEmpty && e.role == .master)
        // Had the peer claimed meanwhile (the hold expired), its higher term fences at once.
        var late = Election(selfID: 1, peers: [2], settings: settings(), nowNanos: 0)
        late.resume(term: 7, asMaster: true, nowNanos: 0)
        _ = late.onPeerAlive(2, nowNanos: ms)
        #expect(isBackup(late.onAdvert(advert(term: 8, role: .master), from: 2, nowNanos: 2 * ms)))
        #expect(late.role == .backup && late.term == 8 && late.masterID == 2)
    }

    @Test("resume as BACKUP keeps the term only; the peer's MASTER advert is then sticky at once")
    func resumeAsBackup() {
        var e = Election(selfID: 2, peers: [1], settings: settings(priority: 250), nowNanos: 0)
        e.resume(term: 4, asMaster: false, nowNanos: 0)
        #expect(e.role == .backup && e.term == 4)
        _ = e.onLocalSync(true, nowNanos: ms)
        #expect(e.onAdvert(advert(term: 4, role: .master, priority: 10), from: 1, nowNanos: 2 * ms).isEmpty)
        #expect(e.onTick(nowNanos: 5_000 * ms).isEmpty && e.role == .backup && e.masterID == 1)
    }
}
