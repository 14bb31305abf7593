import Foundation

/// One measurement of the replication benchmark drivers (tandem-syncbench, tandem-ctbench): both
/// print it as the same JSON line, so bench/replication-report.py reads the two systems alike.
public struct BenchResult: Sendable {
    public var injected = 0
    public var injectFailed = 0
    public var replicated = 0
    public var injectSeconds = 0.0
    public var lastArrivalSeconds = 0.0
    public var lagsMicros: [UInt64] = []

    public init() {}

    /// Lag quantile in milliseconds (-1 when nothing arrived).
    public func percentile(_ q: Double) -> Double {
        guard !lagsMicros.isEmpty else { return -1 }
        let sorted = lagsMicros.sorted()
        let i = min(sorted.count - 1, Int((Double(sorted.count) * q).rounded(.up)) - 1)
        return Double(sorted[max(0, i)]) / 1000
    }

    public func json(extra: [String: String]) -> String {
        var fields = extra
        fields["injected"] = "\(injected)"
        fields["inject_failed"] = "\(injectFailed)"
        fields["replicated"] = "\(replicated)"
        fields["inject_seconds"] = String(format: "%.3f", injectSeconds)
        fields["all_arrived_seconds"] = String(format: "%.3f", lastArrivalSeconds)
        fields["entries_per_second"] = String(format: "%.0f", lastArrivalSeconds > 0 ? Double(replicated) / lastArrivalSeconds : 0)
        fields["lag_p50_ms"] = String(format: "%.2f", percentile(0.5))
        fields["lag_p99_ms"] = String(format: "%.2f", percentile(0.99))
        fields["lag_max_ms"] = String(format: "%.2f", percentile(1.0))
        return "{" + fields.sorted { $0.key < $1.key }.map { "\"\($0.key)\":\($0.value)" }.joined(separator: ",") + "}"
    }
}

/// CLOCK_MONOTONIC in nanoseconds.
public func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Dotted quad -> host-order address.
public func ipv4(_ s: String) -> UInt32? {
    let parts = s.split(separator: ".").compactMap { UInt32($0) }
    guard parts.count == 4, parts.allSatisfy({ $0 < 256 }) else { return nil }
    return parts[0] << 24 | parts[1] << 16 | parts[2] << 8 | parts[3]
}
