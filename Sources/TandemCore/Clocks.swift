#if canImport(Glibc)
import Glibc
#endif

/// Wall-clock time in microseconds (CLOCK_REALTIME): boot epochs and hybrid-logical-clock
/// versions, which compare across nodes. Never for timeouts: use a monotonic clock for those.
public func wallClockMicros() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec) / 1000
}

/// CLOCK_MONOTONIC in nanoseconds: the clock bpf_ktime_get_ns() reads, and NIO's deadlines. For
/// timeouts and ages; one definition for the datapath, the shells and the node.
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Lets a repeated warning through at most once per interval, so a flood of refused sends or of
/// forged packets cannot flood the log; what it held back is reported with the next one.
public struct WarningLimiter: Sendable {
    public let intervalMillis: UInt64
    private var lastMillis: UInt64?
    private var held: UInt64 = 0

    public init(intervalMillis: UInt64 = 10_000) { self.intervalMillis = intervalMillis }

    /// nil: stay quiet now. Otherwise log, with the number of warnings held back since the last.
    public mutating func admit(nowMillis: UInt64) -> UInt64? {
        if let last = lastMillis, nowMillis < last &+ intervalMillis {
            held &+= 1
            return nil
        }
        lastMillis = nowMillis
        defer { held = 0 }
        return held
    }
}
