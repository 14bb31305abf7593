import TandemCore
import Testing
@testable import TandemConntrack

typealias Core = ConntrackSourceCore

func delivered(_ actions: [Core.Action]) -> [Core.Change] {
    actions.flatMap { if case .deliver(let l) = $0 { l } else { [Core.Change]() } }
}

func dumps(_ actions: [Core.Action]) -> [Core.DumpReason] {
    actions.compactMap { if case .startDump(let r) = $0 { r } else { nil } }
}

let sec: UInt64 = 1_000_000_000

@Suite struct ConntrackSourceCoreTests {
    func started(_ s: Core.Settings = .init(bufferSize: 1 << 20, maxBufferSize: 4 << 20, reconcileInterval: 10),
                 filter: ConntrackFilter = .all, initial: [KernelConnection] = []) -> Core {
        var core = Core(settings: s, filter: filter)
        let a = core.onStart(now: 0)
        #expect(a.first == .setBuffer(1 << 20))
        #expect(dumps(a) == [.initial])
        _ = core.onDump(initial, reason: .initial, now: 0)
        return core
    }

    @Test func initialDumpDeliversTheTable() {
        var core = Core()
        _ = core.onStart(now: 0)
        let a = core.onDump([natTCP(), plainUDP()], reason: .initial, now: 0)
        #expect(Set(delivered(a).map(\.connection)) == [natTCP(), plainUDP()])
        #expect(core.counters.entries == 2)
        #expect(core.counters.resyncs == 0)
    }

    @Test func eventsUpsertAndDelete() {
        var core = started()
        #expect(delivered(core.onEvent(.new, natTCP(state: .synSent))) == [.init(natTCP(state: .synSent), deleted: false)])
        #expect(delivered(core.onEvent(.update, natTCP())) == [.init(natTCP(), deleted: false)])
        var gone = natTCP()
        gone.tcp = nil
        gone.timeout = nil
        let d = delivered(core.onEvent(.destroy, gone))
        #expect(d.count == 1 && d[0].deleted)
        #expect(d.first?.connection.tcp?.state == .established)   // kept from what was known
        #expect(core.known.isEmpty)
        // A destroy for something never seen is counted, not delivered.
        #expect(delivered(core.onEvent(.destroy, plainUDP())).isEmpty)
        #expect(core.counters.newEvents == 1 && core.counters.updateEvents == 1 && core.counters.destroyEvents == 2)
        #expect(core.counters.unknownDestroys == 1)
    }

    @Test func filterDropsAndRetracts() throws {
        let f = try ConntrackFilter(config: .init(marks: ["0x42"]))
        var core = started(filter: f)
        #expect(delivered(core.onEvent(.new, plainUDP())).isEmpty)
        #expect(core.counters.filteredOut == 1)
        #expect(delivered(core.onEvent(.new, natTCP())).count == 1)
        var unmarked = natTCP()
        unmarked.mark = 0
        // It stops matching: retracted once, then just filtered.
        #expect(delivered(core.onEvent(.update, unmarked)) == [.init(natTCP(), deleted: true)])
        #expect(delivered(core.onEvent(.update, unmarked)).isEmpty)
        #expect(core.counters.filteredOut == 3)
    }

    @Test func overrunGrowsUpToTheCapAndResyncs() {
        var core = started()
        let a = core.onOverrun()
        #expect(a == [.setBuffer(2 << 20), .startDump(.resync)])
        core.onBufferSet(actual: 2 << 20)
        _ = core.onDump([], reason: .resync, now: 1)
        #expect(core.onOverrun() == [.setBuffer(4 << 20), .startDump(.resync)])
        _ = core.onDump([], reason: .resync, now: 2)
        #expect(core.onOverrun() == [.startDump(.resync)])   // at the cap
        #expect(core.counters.overruns == 3 && core.counters.bufferGrowths == 2 && core.counters.bufferAtCap == 1)
    }

    @Test func resyncDiffsAgainstTheKnownSet() {
        let a = plainUDP(1), b = plainUDP(2), c = plainUDP(3)
        var core = started(initial: [a, b])
        _ = core.onOverrun()
        // Lost while overrun: b destroyed, c created, a changed (mark); a's timeout alone would not count.
        var a2 = a
        a2.mark = 9
        let changes = delivered(core.onDump([a2, c], reason: .resync, now: 5 * sec))
        #expect(Set(changes) == [.init(a2, deleted: false), .init(c, deleted: false), .init(b, deleted: true)])
        #expect(core.counters.resyncs == 1 && core.counters.resyncFixes == 3)
        var a3 = a2
        a3.timeout = 1
        _ = core.onOverrun()
        #expect(delivered(core.onDump([a3, c], reason: .resync, now: 6 * sec)).isEmpty)
        #expect(core.known[a.key]?.timeout == 1)   // the fresher timeout is kept
    }

    @Test func periodicReconcile() {
        var core = started()   // 10 s interval, initial dump at t=0
        let stale = plainUDP(7)
        _ = core.onEvent(.new, stale)
        #expect(core.onTick(now: 9 * sec).isEmpty)
        #expect(core.onTick(now: 10 * sec) == [.startDump(.reconcile)])
        #expect(core.onTick(now: 11 * sec).isEmpty)   // one at a time
        // Its destroy was never announced (created before the listener, or lost): reconcile removes it.
        #expect(delivered(core.onDump([], reason: .reconcile, now: 12 * sec)) == [.init(stale, deleted: true)])
        #expect(core.counters.reconciles == 1 && core.counters.reconcileFixes == 1)
        #expect(core.onTick(now: 21 * sec).isEmpty)
        #expect(core.onTick(now: 22 * sec) == [.startDump(.reconcile)])
    }

    /// With a max above the min, a reconcile comes when the replication says it needs the
    /// table read, never sooner than the min after the last dump and never later than the max.
    @Test func adaptiveReconcileFollowsTheReplicationsDueTime() {
        var core = started(.init(bufferSize: 1 << 20, maxBufferSize: 1 << 20, reconcileInterval: 10,
                                 reconcileMaxInterval: 100))
        // Nothing needs it: no dump until the max.
        #expect(core.onTick(now: 10 * sec, dueNanos: nil).isEmpty)
        #expect(core.onTick(now: 99 * sec, dueNanos: nil).isEmpty)
        #expect(core.latestReconcileNanos == 100 * sec)
        #expect(core.onTick(now: 100 * sec, dueNanos: nil) == [.startDump(.reconcile)])
        _ = core.onDump([], reason: .reconcile, now: 101 * sec)
        // Due at once: still not before the min after the last dump.
        #expect(core.onTick(now: 105 * sec, dueNanos: 0).isEmpty)
        #expect(core.onTick(now: 111 * sec, dueNanos: 0) == [.startDump(.reconcile)])
        _ = core.onDump([], reason: .reconcile, now: 111 * sec)
        // Due in between: then.
        #expect(core.onTick(now: 140 * sec, dueNanos: 150 * sec).isEmpty)
        #expect(core.onTick(now: 150 * sec, dueNanos: 150 * sec) == [.startDump(.reconcile)])
        // A failed dump is retried at the next tick whatever the due time.
        _ = core.onDumpFailed(reason: .reconcile, now: 151 * sec)
        #expect(core.onTick(now: 151 * sec, dueNanos: .max) == [.startDump(.reconcile)])
        // Without a max above the min the due time is not asked: the fixed interval.
        var fixed = started()
        #expect(fixed.onTick(now: 5 * sec, dueNanos: 0).isEmpty)
        #expect(fixed.onTick(now: 10 * sec, dueNanos: .max) == [.startDump(.reconcile)])
    }

    @Test func reconcileDisabled() {
        var core = started(.init(bufferSize: 1 << 20, maxBufferSize: 1 << 20, reconcileInterval: 0))
        #expect(core.onTick(now: 1_000_000 * sec).isEmpty)
    }

    @Test func eventsDuringADumpWin() {
        let a = plainUDP(1), b = plainUDP(2)
        var core = started(initial: [a])
        #expect(core.onTick(now: 10 * sec) == [.startDump(.reconcile)])
        // While the dump runs: b is created (the dump passed its slot before), a is destroyed
        // (the dump saw it before).
        _ = core.onEvent(.new, b)
        _ = core.onEvent(.destroy, a)
        let changes = delivered(core.onDump([a], reason: .reconcile, now: 11 * sec))
        #expect(changes.isEmpty)
        #expect(Set(core.known.keys) == [b.key])
    }

    @Test func overrunDuringADumpQueuesAResync() {
        var core = started()
        #expect(core.onTick(now: 10 * sec) == [.startDump(.reconcile)])
        #expect(core.onOverrun() == [.setBuffer(2 << 20)])   // the dump is running
        let after = core.onDump([], reason: .reconcile, now: 11 * sec)
        #expect(dumps(after) == [.resync])
    }

    @Test func failedDumpIsRetried() {
        var core = started()
        _ = core.onOverrun()
        #expect(core.onDumpFailed(reason: .resync, now: 3 * sec).isEmpty)
        #expect(core.onTick(now: 3 * sec) == [.startDump(.resync)])
        #expect(core.counters.dumpFailures == 1)
    }

    @Test func filterChangeAppliesOnNextDump() throws {
        var core = started(initial: [natTCP(), plainUDP()])
        let a = core.setFilter(try ConntrackFilter(config: .init(protocols: ["tcp"])))
        #expect(dumps(a) == [.reconcile])
        let changes = delivered(core.onDump([natTCP(), plainUDP()], reason: .reconcile, now: 1))
        #expect(changes == [.init(plainUDP(), deleted: true)])
    }
}

/// Entries the node's own sink wrote (learned from peers) are tracked but never sent back.
@Suite struct ConntrackSourceLearnedTests {
    func started() -> Core {
        var core = Core(settings: .init(bufferSize: 1 << 20, maxBufferSize: 4 << 20, reconcileInterval: 10))
        _ = core.onStart(now: 0)
        _ = core.onDump([], reason: .initial, now: 0)
        return core
    }

    @Test func theSinksEventsAreTrackedNotDelivered() {
        var core = started()
        #expect(core.onEvent(.new, natTCP(), fromSink: true).isEmpty)
        #expect(core.isLearned(natTCP().key) && core.known.count == 1)
        #expect(core.counters.sinkEvents == 1)
        // A reconcile dump finds it, with a fresher timeout: still not this node's change.
        var later = natTCP()
        later.timeout = 400_000
        #expect(delivered(core.onDump([later], reason: .reconcile, now: 11 * sec)).isEmpty)
        // The sink deletes it (the peer's delete): tracked, not delivered.
        #expect(core.onEvent(.destroy, natTCP(), fromSink: true).isEmpty)
        #expect(!core.isLearned(natTCP().key) && core.known.isEmpty)
    }

    @Test func theKernelTimingOutALearnedCopyIsNotDelivered() {
        var core = started()
        _ = core.onEvent(.new, plainUDP(), fromSink: true)
        #expect(delivered(core.onEvent(.destroy, plainUDP())).isEmpty)
        #expect(core.counters.learnedExpired == 1 && core.known.isEmpty)
        // Gone from a dump, likewise.
        _ = core.onEvent(.new, plainUDP(2), fromSink: true)
        #expect(delivered(core.onDump([], reason: .reconcile, now: 11 * sec)).isEmpty)
        #expect(core.known.isEmpty)
    }

    @Test func trafficChangingALearnedEntryMakesItLocal() {
        var core = started()
        _ = core.onEvent(.new, natTCP(state: .established), fromSink: true)
        // The kernel moves it on (a FIN passed through this node): delivered, and local from now on.
        #expect(delivered(core.onEvent(.update, natTCP(state: .finWait))).count == 1)
        #expect(!core.isLearned(natTCP().key))
        #expect(delivered(core.onEvent(.destroy, natTCP(state: .finWait))).count == 1)
        // A dump that finds a learned entry changed (its event lost) delivers it too.
        _ = core.onEvent(.new, plainUDP(3), fromSink: true)
        var assured = plainUDP(3)
        assured.status.insert(.assured)
        #expect(delivered(core.onDump([assured], reason: .reconcile, now: 11 * sec)).map(\.connection) == [assured])
        #expect(!core.isLearned(assured.key))
    }
}
