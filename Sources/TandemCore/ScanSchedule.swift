/// How often the table scanner runs its passes. A reap pass walks every bucket of the BPF hash
/// map in the kernel, where (on PREEMPT_NONE kernels) nothing preempts the walk: about 2.5 ns a
/// bucket, so a table sized for 3M entries (4M buckets) holds a CPU for ~10 ms per pass, however
/// few flows it has. Passes are spaced so that this stays near 0.2% of a CPU, but never so far
/// apart that a flow outlives its timeout by more than half of the shortest one (unless the
/// passes themselves cost more: see `ScanPlanner`).
public struct ScanSchedule: Equatable, Sendable {
    /// Seconds between passes, at least.
    public var passInterval: Double

    public static let secondsPerBucket = 1.25e-6
    /// Replication's pass (missed events, evictions, refreshes of quiet flows) at most this often.
    public static let replicationPeriod = 10.0
    /// Reply halves whose original was evicted are looked for at most this often.
    public static let orphanPeriod = 30.0
    /// The share of one CPU the passes may take. Past a few hundred thousand flows a pass costs
    /// more than its bucket walk, since it reads every entry (measured at 280k connections: a reap
    /// pass 200-450 ms of CPU, a replication pass 920 ms on the scanner plus 198 ms on the
    /// replication loop). Such passes are spaced by what they cost.
    public static let cpuBudget = 0.02

    public init(tableSize: UInt32, timeouts: Timeouts, minimumInterval: Double = 2) {
        var buckets = 1
        while buckets < Int(tableSize) { buckets <<= 1 }
        let ceiling = max(minimumInterval, Double(timeouts.shortest) / 2)
        passInterval = min(ceiling, max(minimumInterval, Double(buckets) * Self.secondsPerBucket))
    }
}

/// The scanner thread's decisions, kept pure: what each pass does and how long to wait after it.
/// Times are seconds on any monotonic clock, passed in.
///
/// A pass that runs late only delays reports: the datapath treats a connection idle past its
/// timeout as gone when its next packet comes, the LRU map reclaims idle entries first, and busy
/// flows are re-announced to peers by the datapath itself (TDM_EV_REFRESH), not by this scan.
public struct ScanPlanner: Sendable {
    public struct Pass: Equatable, Sendable {
        /// Hand the table to replication (refreshes of quiet flows, missed events, evictions).
        public var replicate: Bool
        /// Also look for reply halves whose original is gone.
        public var checkOrphans: Bool
    }

    public let schedule: ScanSchedule
    private var lastReplication: Double
    private var lastOrphanCheck: Double
    /// What the last replication pass cost the scanner, in seconds.
    private var replicationCost = 0.0
    private var eventsLostSeen: UInt64

    /// `eventsLost`: the datapath's count of events the ring buffer had no room for, so far.
    public init(schedule: ScanSchedule, now: Double, eventsLost: UInt64) {
        self.schedule = schedule
        lastReplication = now
        lastOrphanCheck = now
        eventsLostSeen = eventsLost
    }

    /// The pass to run now. Events lost since the last pass call for a replication pass at once
    /// (the scan is what recovers them); otherwise one is due every `replicationPeriod`, or less
    /// often when the last one cost more than the budget allows. Its cost counts twice: the
    /// replication loop's share (a fifth of the scanner's, measured) with a wide margin, as that
    /// work is on the loop deltas wait for.
    public mutating func nextPass(now: Double, eventsLost: UInt64) -> Pass {
        let lost = eventsLost != eventsLostSeen
        eventsLostSeen = eventsLost
        let replicationSpacing = max(ScanSchedule.replicationPeriod, 2 * replicationCost / ScanSchedule.cpuBudget)
        let pass = Pass(replicate: lost || now - lastReplication >= replicationSpacing,
                        checkOrphans: now - lastOrphanCheck >= ScanSchedule.orphanPeriod)
        if pass.replicate { lastReplication = now }
        if pass.checkOrphans { lastOrphanCheck = now }
        return pass
    }

    /// Seconds to wait after `pass`, which took `seconds`.
    public mutating func pause(after pass: Pass, took seconds: Double) -> Double {
        if pass.replicate { replicationCost = seconds }
        return max(schedule.passInterval, seconds / ScanSchedule.cpuBudget)
    }
}
