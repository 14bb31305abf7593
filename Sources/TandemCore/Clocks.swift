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
