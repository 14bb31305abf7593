// When to probe which endpoint: one timer per endpoint, jittered so probes spread out.
// Pure: the caller passes the time in and owns the random number generator.

import TandemCore  // SplitMix64

/// A probe the shell should start now.
public struct ProbeRequest: Hashable, Sendable {
    public var endpoint: EndpointID
    /// Per-endpoint probe number, from 1.
    public var sequence: UInt64
    /// When the probe was due (the tick may come a little later).
    public var due: ContinuousClock.Instant
}

/// Probe timers for many endpoints. Each endpoint is probed every `interval * (1 ± jitter)`,
/// the factor drawn anew for every probe; the first probe of an endpoint comes at a random
/// point within its first interval, so endpoints added together do not probe in step.
public struct ProbeScheduler<RNG: RandomNumberGenerator & Sendable>: Sendable {
    struct Entry: Sendable {
        var interval: Duration
        var jitter: Double
        var next: ContinuousClock.Instant
        var sequence: UInt64 = 0
    }

    private var entries: [EndpointID: Entry] = [:]
    private var rng: RNG

    public init(rng: RNG) { self.rng = rng }

    public var count: Int { entries.count }
    public func contains(_ id: EndpointID) -> Bool { entries[id] != nil }

    /// Adds (or re-times) an endpoint. Jitter is clamped to 0...0.5.
    public mutating func add(_ id: EndpointID, interval: Duration, jitter: Double, now: ContinuousClock.Instant) {
        let j = min(max(jitter, 0), 0.5)
        let first = now + interval * unit()
        entries[id] = Entry(interval: interval, jitter: j, next: first)
    }

    public mutating func remove(_ id: EndpointID) { entries[id] = nil }

    /// When the next probe is due, for a timer that sleeps until then.
    public var nextDeadline: ContinuousClock.Instant? { entries.values.map(\.next).min() }

    /// The probes due at `now`, each endpoint's next probe scheduled one jittered interval after
    /// this one was due. After a stall (the tick much later than due) the next probe is counted
    /// from now instead, so a late tick does not fire a burst of catch-up probes.
    public mutating func onTick(now: ContinuousClock.Instant) -> [ProbeRequest] {
        var out: [ProbeRequest] = []
        // Sorted for determinism: dictionary order differs between runs.
        for id in entries.keys.sorted() {
            guard var e = entries[id], e.next <= now else { continue }
            e.sequence += 1
            out.append(ProbeRequest(endpoint: id, sequence: e.sequence, due: e.next))
            let step = e.interval * factor(e.jitter)
            var next = e.next + step
            if next <= now { next = now + step }
            e.next = next
            entries[id] = e
        }
        return out
    }

    /// Uniform in [0, 1).
    private mutating func unit() -> Double { Double(rng.next() >> 11) / Double(1 << 53) }

    /// Uniform in [1 - jitter, 1 + jitter).
    private mutating func factor(_ jitter: Double) -> Double { 1 - jitter + 2 * jitter * unit() }
}
