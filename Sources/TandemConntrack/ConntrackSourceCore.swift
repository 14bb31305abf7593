import TandemCore

/// The kernel conntrack source's logic, pure: what the reader thread should do on each event,
/// buffer overrun, finished dump and tick. Keeps the last known set of (filtered) entries so a
/// dump can be diffed against it. Time is passed in (monotonic nanoseconds); nothing here does
/// I/O. The shell (`ConntrackSource`) carries out the actions and feeds the results back.
public struct ConntrackSourceCore: Sendable {
    public struct Settings: Hashable, Sendable {
        /// Receive buffer of the event socket at start, bytes (what the kernel will account).
        public var bufferSize: Int
        /// Cap for doubling the buffer on overruns, bytes.
        public var maxBufferSize: Int
        /// Seconds between reconcile dumps (0: none). The dump catches what no event reports:
        /// entries created before the listener existed (`nf_conntrack_events=2` gives those no
        /// event extension, so their destroy is never announced) and anything lost in between,
        /// and it is how timeouts are read (refreshes for the peers' copies).
        /// With `reconcileMaxInterval` above it, this is the shortest time between them: a dump
        /// then comes when `onTick`'s `dueNanos` (what the replication needs) says, at the latest
        /// `reconcileMaxInterval` after the last one.
        public var reconcileInterval: Double
        public var reconcileMaxInterval: Double

        public init(bufferSize: Int = 4 << 20, maxBufferSize: Int = 64 << 20, reconcileInterval: Double = 60,
                    reconcileMaxInterval: Double = 0) {
            self.bufferSize = bufferSize
            self.maxBufferSize = max(bufferSize, maxBufferSize)
            self.reconcileInterval = reconcileInterval
            self.reconcileMaxInterval = reconcileMaxInterval
        }

        var adaptive: Bool { reconcileInterval > 0 && reconcileMaxInterval > reconcileInterval }
    }

    public enum DumpReason: String, Hashable, Sendable {
        /// The first dump after subscribing: the table as it stands.
        case initial
        /// After an overrun (ENOBUFS): events were lost.
        case resync
        /// Periodic check.
        case reconcile
    }

    public enum Action: Hashable, Sendable {
        /// Hand these to the consumer (in order).
        case deliver([Change])
        /// Set the event socket's receive buffer to this many bytes.
        case setBuffer(Int)
        /// Dump the table (after reading what is already queued on the event socket) and call
        /// `onDump` or `onDumpFailed` with the reason.
        case startDump(DumpReason)
    }

    public struct Change: Hashable, Sendable {
        public var connection: KernelConnection
        public var deleted: Bool
        public init(_ connection: KernelConnection, deleted: Bool) {
            self.connection = connection
            self.deleted = deleted
        }
    }

    public struct Counters: Hashable, Sendable {
        public var newEvents = 0
        public var updateEvents = 0
        public var destroyEvents = 0
        /// Events and dump entries the filter dropped (including entries that stopped matching:
        /// those are delivered as deletes, once).
        public var filteredOut = 0
        /// Destroy events for entries this source did not hold (filtered, or gone already).
        public var unknownDestroys = 0
        /// Events of the node's own sink (entries learned from peers): tracked, not delivered.
        public var sinkEvents = 0
        /// Learned entries the kernel destroyed before any traffic touched them here: not delivered.
        public var learnedExpired = 0
        /// ENOBUFS on the event socket.
        public var overruns = 0
        /// Times the buffer was grown, and times it could not grow past the cap.
        public var bufferGrowths = 0
        public var bufferAtCap = 0
        public var resyncs = 0
        public var reconciles = 0
        public var dumpFailures = 0
        /// Changes a resync or reconcile dump had to deliver: entries missing from the known set,
        /// entries whose state differed, and known entries the table no longer has.
        public var resyncFixes = 0
        public var reconcileFixes = 0
        /// Messages that could not be parsed (counted by the shell, reported here).
        public var malformed = 0
        /// Messages of other families (IPv6) or types, skipped.
        public var skipped = 0
        public var delivered = 0
        public var bufferSize = 0
        public var entries = 0
        public init() {}
    }

    public let settings: Settings
    public var filter: ConntrackFilter
    public private(set) var counters = Counters()
    public private(set) var known: [KernelConnection.Key: KernelConnection] = [:]
    /// Known entries the sink wrote (learned from peers) and the kernel has not changed since.
    public private(set) var learned: Set<KernelConnection.Key> = []
    public private(set) var bufferSize: Int
    /// The dump in progress, if any, and one more wanted after it.
    public private(set) var dumping: DumpReason?
    private var pendingDump: DumpReason?
    /// Keys an event touched while a dump ran: the event is at least as new as the dump's view.
    private var touchedDuringDump: Set<KernelConnection.Key> = []
    private var nextReconcile: UInt64 = .max
    /// With an adaptive interval: the latest the next reconcile may come.
    private var latestReconcile: UInt64 = .max
    private var started = false

    public init(settings: Settings = Settings(), filter: ConntrackFilter = .all) {
        self.settings = settings
        self.filter = filter
        bufferSize = settings.bufferSize
        counters.bufferSize = bufferSize
    }

    /// Subscribed: size the buffer and read the table.
    public mutating func onStart(now: UInt64) -> [Action] {
        started = true
        scheduleReconcile(now: now)
        return [.setBuffer(bufferSize)] + requestDump(.initial)
    }

    /// The buffer size the kernel actually granted (it may clamp, or double what was asked).
    public mutating func onBufferSet(actual: Int) {
        bufferSize = actual
        counters.bufferSize = actual
    }

    /// One event. `fromSink` marks a change the node's own sink made (an entry learned from a
    /// peer, injected or removed): it is tracked, so dumps do not mistake it for a local change
    /// the events missed, but not delivered, so it does not echo back to the peers.
    public mutating func onEvent(_ kind: ConntrackEventKind, _ c: KernelConnection, fromSink: Bool = false) -> [Action] {
        switch kind {
        case .new: counters.newEvents += 1
        case .update: counters.updateEvents += 1
        case .destroy: counters.destroyEvents += 1
        }
        let key = c.key
        if dumping != nil { touchedDuringDump.insert(key) }
        if fromSink {
            counters.sinkEvents += 1
            if kind == .destroy {
                known.removeValue(forKey: key)
                learned.remove(key)
            } else if filter.matches(c) {
                known[key] = c
                learned.insert(key)
            }
            counters.entries = known.count
            return []
        }
        // The kernel's own change: traffic passes here, the entry is this node's now; or the
        // kernel timed out a learned copy that saw no traffic, which is not this node's to announce.
        let wasLearned = learned.remove(key) != nil
        if kind == .destroy {
            guard let old = known.removeValue(forKey: key) else {
                counters.unknownDestroys += 1
                return []
            }
            counters.entries = known.count
            if wasLearned {
                counters.learnedExpired += 1
                return []
            }
            // The destroy message carries the final tuples/state; keep what we knew where it has none.
            var gone = c
            if gone.tcp == nil { gone.tcp = old.tcp }
            return deliver([Change(gone, deleted: true)])
        }
        guard filter.matches(c) else {
            counters.filteredOut += 1
            // It matched before (mark or NAT changed): retract it.
            guard let old = known.removeValue(forKey: key) else { return [] }
            counters.entries = known.count
            return deliver([Change(old, deleted: true)])
        }
        known[key] = c
        counters.entries = known.count
        return deliver([Change(c, deleted: false)])
    }

    /// The event socket reported ENOBUFS: grow the buffer (up to the cap) and resynchronise.
    public mutating func onOverrun() -> [Action] {
        counters.overruns += 1
        var actions: [Action] = []
        if bufferSize < settings.maxBufferSize {
            bufferSize = min(settings.maxBufferSize, bufferSize * 2)
            counters.bufferGrowths += 1
            actions.append(.setBuffer(bufferSize))
        } else {
            counters.bufferAtCap += 1
        }
        return actions + requestDump(.resync)
    }

    /// A dump finished with these entries (unfiltered). Delivers what differs from the known set.
    public mutating func onDump(_ entries: [KernelConnection], reason: DumpReason, now: UInt64) -> [Action] {
        dumping = nil
        var seen = Set<KernelConnection.Key>()
        seen.reserveCapacity(entries.count)
        var changes: [Change] = []
        for c in entries {
            let key = c.key
            guard !touchedDuringDump.contains(key) else { seen.insert(key); continue }
            guard filter.matches(c) else {
                counters.filteredOut += 1
                if let old = known.removeValue(forKey: key) { changes.append(Change(old, deleted: true)) }
                continue
            }
            seen.insert(key)
            if let old = known[key], old.sameState(as: c) {
                known[key] = c   // fresher timeout, no change to announce
                continue
            }
            known[key] = c
            learned.remove(key)   // the kernel changed it since the sink wrote it
            changes.append(Change(c, deleted: false))
        }
        // Known entries the dump did not list are gone, unless an event during the dump (newer
        // than the dump's view) created or updated them.
        let gone = known.keys.filter { !seen.contains($0) && !touchedDuringDump.contains($0) }
        for key in gone {
            guard let old = known.removeValue(forKey: key) else { continue }
            // A learned copy that timed out here is not this node's change to announce.
            if learned.remove(key) == nil { changes.append(Change(old, deleted: true)) }
        }
        touchedDuringDump.removeAll()
        counters.entries = known.count
        switch reason {
        case .initial: break
        case .resync:
            counters.resyncs += 1
            counters.resyncFixes += changes.count
        case .reconcile:
            counters.reconciles += 1
            counters.reconcileFixes += changes.count
        }
        scheduleReconcile(now: now)
        var actions = deliver(changes)
        if let next = pendingDump {
            pendingDump = nil
            actions += requestDump(next)
        }
        return actions
    }

    /// The dump could not be completed: try again on the next tick (a resync stays a resync).
    public mutating func onDumpFailed(reason: DumpReason, now: UInt64) -> [Action] {
        dumping = nil
        touchedDuringDump.removeAll()
        counters.dumpFailures += 1
        if reason != .reconcile { pendingDump = pendingDump ?? reason }
        nextReconcile = now   // retry at the next tick
        latestReconcile = now
        return []
    }

    /// - Parameter dueNanos: with an adaptive interval, when the replication next needs the
    ///   table read (monotonic ns; nil or .max: nothing needs it before the latest reconcile).
    public mutating func onTick(now: UInt64, dueNanos: UInt64? = nil) -> [Action] {
        guard started, dumping == nil else { return [] }
        if let next = pendingDump {
            pendingDump = nil
            return requestDump(next)
        }
        guard settings.reconcileInterval > 0 else { return [] }
        let due = settings.adaptive ? max(nextReconcile, min(dueNanos ?? .max, latestReconcile)) : nextReconcile
        guard now >= due else { return [] }
        return requestDump(.reconcile)
    }

    /// When the next reconcile comes if nothing asks for one sooner (monotonic ns).
    public var latestReconcileNanos: UInt64 { settings.adaptive ? latestReconcile : nextReconcile }

    /// Whether the entry under `key` is one the sink wrote and the kernel has not changed since.
    public func isLearned(_ key: KernelConnection.Key) -> Bool { learned.contains(key) }

    public mutating func countMalformed(_ n: Int = 1) { counters.malformed += n }
    public mutating func countSkipped(_ n: Int = 1) { counters.skipped += n }

    /// Replaces the filter; the next dump applies it to entries already known.
    public mutating func setFilter(_ f: ConntrackFilter) -> [Action] {
        filter = f
        return requestDump(.reconcile)
    }

    private mutating func requestDump(_ reason: DumpReason) -> [Action] {
        if dumping != nil {
            // A reconcile behind a running dump is redundant. A resync is not: the running dump
            // may have passed entries before the events about them were lost.
            if reason != .reconcile { pendingDump = .resync }
            return []
        }
        dumping = reason
        touchedDuringDump.removeAll()
        return [.startDump(reason)]
    }

    private mutating func scheduleReconcile(now: UInt64) {
        guard settings.reconcileInterval > 0 else { nextReconcile = .max; latestReconcile = .max; return }
        nextReconcile = now &+ UInt64(settings.reconcileInterval * 1e9)
        latestReconcile = settings.adaptive ? now &+ UInt64(settings.reconcileMaxInterval * 1e9) : nextReconcile
    }

    private mutating func deliver(_ changes: [Change]) -> [Action] {
        guard !changes.isEmpty else { return [] }
        counters.delivered += changes.count
        return [.deliver(changes)]
    }
}
