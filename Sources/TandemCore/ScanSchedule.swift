/// How often the table scanner runs its passes. A reap pass walks every bucket of the BPF hash
/// map in the kernel, where (on PREEMPT_NONE kernels) nothing preempts the walk: about 2.5 ns a
/// bucket, so a table sized for 3M entries (4M buckets) holds a CPU for ~10 ms per pass, however
/// few flows it has. Passes are spaced so that this stays near 0.2% of a CPU, but never so far
/// apart that a flow outlives its timeout by more than half of the shortest one.
public struct ScanSchedule: Equatable, Sendable {
    /// Seconds between passes.
    public var passInterval: Double
    /// Every Nth pass also hands the table to replication (refreshes, missed events).
    public var replicationEvery: Int
    /// Every Nth pass also looks for reply halves whose original was evicted.
    public var orphansEvery: Int

    public static let secondsPerBucket = 1.25e-6
    public static let replicationPeriod = 10.0
    public static let orphanPeriod = 30.0

    public init(tableSize: UInt32, timeouts: Timeouts, minimumInterval: Double = 2) {
        var buckets = 1
        while buckets < Int(tableSize) { buckets <<= 1 }
        let ceiling = max(minimumInterval, Double(timeouts.shortest) / 2)
        passInterval = min(ceiling, max(minimumInterval, Double(buckets) * Self.secondsPerBucket))
        replicationEvery = max(1, Int(Self.replicationPeriod / passInterval))
        orphansEvery = max(1, Int(Self.orphanPeriod / passInterval))
    }
}
