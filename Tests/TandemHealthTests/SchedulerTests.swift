import Testing
import TandemCore
@testable import TandemHealth

@Suite struct Scheduling {
    let t0 = ContinuousClock.now

    /// Runs a scheduler with 1 ms ticks; returns every probe's (endpoint, time since t0 in ms).
    func run(seed: UInt64, endpoints: Int, interval: Duration, jitter: Double, for total: Duration)
        -> [(EndpointID, Int)] {
        var s = ProbeScheduler(rng: SplitMix64(seed: seed))
        for i in 0..<endpoints { s.add(EndpointID("ep\(i)"), interval: interval, jitter: jitter, now: t0) }
        var out: [(EndpointID, Int)] = []
        var now = t0
        while now - t0 < total {
            for r in s.onTick(now: now) {
                out.append((r.endpoint, Int((now - t0) / .milliseconds(1))))
            }
            now += .milliseconds(1)
        }
        return out
    }

    @Test func sameSeedSameSchedule() {
        let a = run(seed: 42, endpoints: 20, interval: .milliseconds(150), jitter: 0.1, for: .seconds(5))
        let b = run(seed: 42, endpoints: 20, interval: .milliseconds(150), jitter: 0.1, for: .seconds(5))
        #expect(a.map(\.0) == b.map(\.0))
        #expect(a.map(\.1) == b.map(\.1))
        let c = run(seed: 43, endpoints: 20, interval: .milliseconds(150), jitter: 0.1, for: .seconds(5))
        #expect(a.map(\.1) != c.map(\.1))
    }

    @Test func gapsStayWithinTheJitterAndSpread() {
        let probes = run(seed: 7, endpoints: 1, interval: .milliseconds(200), jitter: 0.2, for: .seconds(60))
        let times = probes.map(\.1)
        let gaps = zip(times.dropFirst(), times).map { $0 - $1 }
        #expect(gaps.count > 250)
        // 1 ms ticks round each due time up by < 1 ms.
        #expect(gaps.allSatisfy { (159...241).contains($0) }, "\(gaps.min() ?? 0)...\(gaps.max() ?? 0)")
        // Spread: the gaps use the range, not one value.
        #expect(gaps.min()! < 170 && gaps.max()! > 230)
        let mean = Double(gaps.reduce(0, +)) / Double(gaps.count)
        #expect(abs(mean - 200) < 5, "mean gap \(mean)")
    }

    @Test func zeroJitterIsExact() {
        let times = run(seed: 1, endpoints: 1, interval: .milliseconds(100), jitter: 0, for: .seconds(2)).map(\.1)
        let gaps = zip(times.dropFirst(), times).map { $0 - $1 }
        #expect(Set(gaps) == [100])
    }

    @Test func endpointsAddedTogetherDoNotProbeInStep() {
        // 50 endpoints added at once: the first probes spread over the first interval instead of
        // one burst, and no millisecond carries more than a few.
        let probes = run(seed: 9, endpoints: 50, interval: .milliseconds(100), jitter: 0.1, for: .seconds(3))
        var perMs: [Int: Int] = [:]
        for (_, t) in probes { perMs[t, default: 0] += 1 }
        #expect(perMs.values.max()! <= 5, "burst of \(perMs.values.max()!)")
        let first = Dictionary(probes.map { ($0.0, $0.1) }, uniquingKeysWith: min)
        #expect(first.count == 50)
        #expect(first.values.max()! - first.values.min()! > 60)
        // Every endpoint is probed about total/interval times.
        var count: [EndpointID: Int] = [:]
        for (e, _) in probes { count[e, default: 0] += 1 }
        #expect(count.values.allSatisfy { (26...33).contains($0) }, "\(count.values.sorted())")
    }

    @Test func removeStopsAndLateTickDoesNotBurst() {
        var s = ProbeScheduler(rng: SplitMix64(seed: 3))
        let a = EndpointID("a"), b = EndpointID("b")
        s.add(a, interval: .milliseconds(100), jitter: 0.1, now: t0)
        s.add(b, interval: .milliseconds(100), jitter: 0.1, now: t0)
        #expect(s.count == 2)
        s.remove(b)
        #expect(!s.contains(b))
        // A 1 s stall: one probe for a, not ten.
        let late = s.onTick(now: t0 + .seconds(1))
        #expect(late.map(\.endpoint) == [a])
        #expect(s.onTick(now: t0 + .seconds(1) + .milliseconds(1)).isEmpty)
        let next = s.nextDeadline!
        #expect(next > t0 + .seconds(1) + .milliseconds(80) && next < t0 + .seconds(1) + .milliseconds(120))
        let again = s.onTick(now: next)
        #expect(again.map(\.sequence) == [2])
    }
}
