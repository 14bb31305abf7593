// The shell: runs the scheduler and per-endpoint state machines on one SwiftNIO event loop, starts
// probes as non-blocking NIO channels (no thread per endpoint), and publishes transitions.

import Logging
import TandemCore
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// An endpoint to probe.
public struct ProbeTarget: Hashable, Sendable {
    public var id: EndpointID
    /// IPv4 or IPv6 literal (no names: a probe must not wait for DNS).
    public var address: String
    /// The endpoint's own port; `spec.port` overrides it for the probe.
    public var port: UInt16
    public var spec: ProbeSpec

    public init(id: EndpointID, address: String, port: UInt16, spec: ProbeSpec) {
        self.id = id
        self.address = address
        self.port = port
        self.spec = spec
    }

    /// The port probed.
    public var probePort: UInt16 { spec.port ?? port }
}

/// What `HealthMonitor.snapshot()` reports per endpoint, for `get ep` and metrics.
public struct EndpointSnapshot: Hashable, Sendable {
    public var target: ProbeTarget
    /// Effective state (probes combined with the external verdict).
    public var state: HealthState
    /// What the probes alone say.
    public var probeState: HealthState
    public var verdict: ExternalVerdict?
    public var lastResult: ProbeResult?
    public var lastProbeAt: ContinuousClock.Instant?
    public var lastChangeAt: ContinuousClock.Instant?
    /// Time since the last probe finished, at the snapshot.
    public var sinceLastProbe: Duration?
    /// Time since the state last changed (nil: never changed since added).
    public var sinceChange: Duration?
    public var consecutiveFailures: Int
    public var consecutiveSuccesses: Int
    /// State changes since the endpoint was added.
    public var transitions: Int
    public var probesSent: UInt64
    /// Probes that failed (every attempt failed), since the endpoint was added.
    public var probesFailed: UInt64
}

/// Probes many endpoints and keeps their health.
///
/// Threading: the core (scheduler, state machines) lives on one event loop of `group`; probes run
/// on the group's loops as NIO channels, and every socket is made on a loop thread. Public methods
/// may be called from any thread.
///
/// Usage:
///
///     let monitor = HealthMonitor(group: group, logger: logger) { t in ... }   // or monitor.transitions
///     try monitor.add(ProbeTarget(id: EndpointID("svc/10.0.10.21:80"), address: "10.0.10.21", port: 80,
///                                 spec: try ProbeSpec.parse("http:/healthz:200")))
///     monitor.setVerdict(.red, for: id)       // LoxiLB endpointhoststate
///     monitor.snapshot()                      // per endpoint: state, last result, times
///     monitor.remove(id)
///     await monitor.shutdown()
public final class HealthMonitor: Sendable {
    private struct Core: Sendable {
        var scheduler: ProbeScheduler<SplitMix64>
        var targets: [EndpointID: (target: ProbeTarget, address: SocketAddress, generation: UInt64)] = [:]
        var health: [EndpointID: EndpointHealth] = [:]
        var probesSent: [EndpointID: UInt64] = [:]
        var probesFailed: [EndpointID: UInt64] = [:]
        /// udp probes without an expected reply (see UnreachableMemory).
        var unreachable: [EndpointID: UnreachableMemory] = [:]
        var generation: UInt64 = 0
        var timer: RepeatedTask?
        var stopped = false
    }

    private let group: EventLoopGroup
    private let loop: EventLoop
    private let logger: Logger
    private let prober: Prober
    private let core: NIOLockedValueBox<Core>
    private let onTransition: (@Sendable (HealthTransition) -> Void)?
    private let continuation: AsyncStream<HealthTransition>.Continuation
    /// Every transition, in order. One consumer; finishes on `shutdown()`.
    public let transitions: AsyncStream<HealthTransition>
    /// Scheduler resolution: how often due probes are looked for.
    public let tick: Duration

    /// - Parameters:
    ///   - group: loops to run on (the first `next()` holds the core; probes use all of them).
    ///   - seed: seeds the jitter (and ICMP ids); tests pass a fixed one.
    ///   - tick: how often due probes are looked for; bounds the added delay.
    ///   - onTransition: called for every transition, before it is yielded to `transitions`: on
    ///     the core loop for probe results, on the caller's thread for `setVerdict`; must not block.
    public init(group: EventLoopGroup, logger: Logger = Logger(label: "tandem.health"),
                seed: UInt64 = UInt64.random(in: .min ... .max), tick: Duration = .milliseconds(5),
                onTransition: (@Sendable (HealthTransition) -> Void)? = nil) {
        self.group = group
        self.loop = group.next()
        self.logger = logger
        self.tick = tick
        self.prober = Prober(icmpIDBase: UInt16(truncatingIfNeeded: seed >> 48))
        self.core = NIOLockedValueBox(Core(scheduler: ProbeScheduler(rng: SplitMix64(seed: seed))))
        self.onTransition = onTransition
        (transitions, continuation) = AsyncStream.makeStream(of: HealthTransition.self, bufferingPolicy: .unbounded)
        let ns = Int64(tick.components.seconds) * 1_000_000_000 + tick.components.attoseconds / 1_000_000_000
        let task = loop.scheduleRepeatedTask(initialDelay: .zero, delay: .nanoseconds(max(ns, 1_000_000))) { [weak self] _ in
            self?.onTick()
        }
        core.withLockedValue { $0.timer = task }
    }

    /// Adds an endpoint, or replaces its target (spec or address); a replaced endpoint starts
    /// again from unknown, or with `startingDown` from down (see `EndpointHealth.assumeDown`).
    /// Throws on an address that is not an IP literal or an invalid spec.
    public func add(_ target: ProbeTarget, startingDown: Bool = false) throws {
        try target.spec.validate()
        let address: SocketAddress
        do {
            address = try SocketAddress(ipAddress: target.address, port: Int(target.probePort))
        } catch {
            throw ProbeSpecError("endpoint address '\(target.address)' is not an IP address")
        }
        let now = ContinuousClock.now
        core.withLockedValue { c in
            if let existing = c.targets[target.id], existing.target == target { return }
            c.generation += 1
            c.targets[target.id] = (target, address, c.generation)
            var h = EndpointHealth(id: target.id, spec: target.spec)
            if startingDown { h.assumeDown() }
            c.health[target.id] = h
            c.probesSent[target.id] = 0
            c.probesFailed[target.id] = 0
            c.unreachable[target.id] = target.spec.kind == .udp && target.spec.expectedBody == nil ? UnreachableMemory() : nil
            if target.spec.kind == .none {
                c.scheduler.remove(target.id)
            } else {
                c.scheduler.add(target.id, interval: target.spec.timing.interval, jitter: target.spec.timing.jitter, now: now)
            }
        }
        logger.debug("health: probing \(target.id) \(target.address):\(target.probePort) \(target.spec.cliDescription)")
    }

    /// Stops probing an endpoint and forgets it. Probes in flight are dropped when they finish.
    public func remove(_ id: EndpointID) {
        core.withLockedValue { c in
            c.targets[id] = nil
            c.health[id] = nil
            c.probesSent[id] = nil
            c.probesFailed[id] = nil
            c.unreachable[id] = nil
            c.scheduler.remove(id)
        }
    }

    /// The endpoints being monitored.
    public var endpoints: [EndpointID] { core.withLockedValue { $0.targets.keys.sorted() } }

    /// Sets (or clears, nil) the external verdict of an endpoint; see `ExternalVerdict` for how it
    /// combines with probes. Returns false if the endpoint is unknown.
    @discardableResult
    public func setVerdict(_ verdict: ExternalVerdict?, for id: EndpointID) -> Bool {
        let now = ContinuousClock.now
        let out: [HealthTransition]? = core.withLockedValue { c in
            guard var h = c.health[id] else { return nil }
            let t = h.setVerdict(verdict, at: now)
            c.health[id] = h
            return t
        }
        guard let out else { return false }
        publish(out)
        return true
    }

    public func snapshot() -> [EndpointSnapshot] {
        let now = ContinuousClock.now
        return core.withLockedValue { c in
            c.targets.keys.sorted().compactMap { id in Self.snapshot(c, id, now) }
        }
    }

    public func snapshot(of id: EndpointID) -> EndpointSnapshot? {
        let now = ContinuousClock.now
        return core.withLockedValue { c in Self.snapshot(c, id, now) }
    }

    /// Stops probing and finishes `transitions`. Probes in flight finish on their own (each is
    /// bounded by its timeout); their results are dropped.
    public func shutdown() {
        let timer: RepeatedTask? = core.withLockedValue { c in
            c.stopped = true
            defer { c.timer = nil }
            return c.timer
        }
        timer?.cancel()
        continuation.finish()
    }

    deinit { continuation.finish() }

    // MARK: - Internals

    private static func snapshot(_ c: Core, _ id: EndpointID, _ now: ContinuousClock.Instant) -> EndpointSnapshot? {
        guard let t = c.targets[id], let h = c.health[id] else { return nil }
        return EndpointSnapshot(target: t.target, state: h.state, probeState: h.probeState, verdict: h.verdict,
                                lastResult: h.lastResult, lastProbeAt: h.lastProbeAt, lastChangeAt: h.lastChangeAt,
                                sinceLastProbe: h.lastProbeAt.map { now - $0 }, sinceChange: h.lastChangeAt.map { now - $0 },
                                consecutiveFailures: h.consecutiveFailures, consecutiveSuccesses: h.consecutiveSuccesses,
                                transitions: h.transitions, probesSent: c.probesSent[id] ?? 0,
                                probesFailed: c.probesFailed[id] ?? 0)
    }

    private func onTick() {
        let now = ContinuousClock.now
        let due: [(ProbeRequest, ProbeSpec, SocketAddress, UInt64)] = core.withLockedValue { c in
            guard !c.stopped else { return [] }
            return c.scheduler.onTick(now: now).compactMap { r in
                guard let t = c.targets[r.endpoint] else { return nil }
                c.probesSent[r.endpoint, default: 0] += 1
                return (r, t.target.spec, t.address, t.generation)
            }
        }
        for (req, spec, address, generation) in due {
            // Spread the probes over the group's loops; each makes its sockets on its own thread.
            let probeLoop = group.next()
            prober.probe(spec, address: address, on: probeLoop).hop(to: loop).whenSuccess { [weak self] result in
                self?.onResult(req.endpoint, generation: generation, result)
            }
        }
    }

    private func onResult(_ id: EndpointID, generation: UInt64, _ result: ProbeResult) {
        let now = ContinuousClock.now
        let out: [HealthTransition] = core.withLockedValue { c in
            // A result for an endpoint removed or replaced since the probe started is stale.
            guard !c.stopped, let t = c.targets[id], t.generation == generation, var h = c.health[id] else { return [] }
            var result = result
            if var memory = c.unreachable[id] {
                result = memory.filter(result, at: now)
                c.unreachable[id] = memory
            }
            if !result.success { c.probesFailed[id, default: 0] += 1 }
            let out = h.onProbeResult(result, at: now)
            c.health[id] = h
            return out
        }
        publish(out)
    }

    private func publish(_ transitions: [HealthTransition]) {
        for t in transitions {
            logger.notice("health: \(t.endpoint) \(t.from.rawValue) -> \(t.to.rawValue) (\(t.reason))")
            onTransition?(t)
            continuation.yield(t)
        }
    }
}
