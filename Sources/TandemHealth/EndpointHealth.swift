// Per-endpoint health state machine: consecutive-outcome hysteresis plus an external verdict.
// Pure; the caller passes the time in.

/// Names an endpoint to the monitor. The caller chooses the text (for example
/// "10.0.10.143:80/tcp -> 10.0.10.21:8080"); two services probing the same endpoint with
/// different specs use two ids.
public struct EndpointID: Hashable, Sendable, Codable, CustomStringConvertible, Comparable {
    public var rawValue: String
    public init(_ rawValue: String) { self.rawValue = rawValue }
    public var description: String { rawValue }
    public static func < (a: EndpointID, b: EndpointID) -> Bool { a.rawValue < b.rawValue }
}

public enum HealthState: String, Hashable, Sendable, Codable {
    /// Not probed yet (or no probe answered yet). The datapath decides whether unknown counts
    /// as active; Tandem keeps such endpoints in rotation so a restart is not an outage.
    case unknown
    case up
    case down
}

/// An outside opinion on an endpoint, as LoxiLB's `POST /netlox/v1/config/endpointhoststate`
/// carries it.
///
/// The rule (`EndpointHealth.state`):
/// - `red` marks the endpoint down whatever the probes say (an operator or an external checker
///   knows better than a port that still answers).
/// - `green` and `yellow` leave the decision to the probes: an outside "healthy" cannot put an
///   endpoint that our own probes find dead back into rotation, since the probes test the path
///   the load balancer actually uses. `yellow` (degraded) is kept and shown, with no effect on
///   rotation.
/// - With probe kind `none` there are no probes: green and yellow mean up, red down.
/// - No verdict (nil) is the same as green.
public enum ExternalVerdict: String, Hashable, Sendable, Codable, CaseIterable {
    case green, yellow, red
}

/// One probe's outcome, as the shell reports it.
public struct ProbeResult: Hashable, Sendable, Codable {
    public var success: Bool
    /// Short reason for display ("connected", "refused", "timeout", "status 503", ...).
    public var detail: String
    /// Time the probe took, if known.
    public var latency: Duration?

    public init(success: Bool, detail: String, latency: Duration? = nil) {
        self.success = success
        self.detail = detail
        self.latency = latency
    }
    public static func ok(_ detail: String = "ok", latency: Duration? = nil) -> ProbeResult {
        ProbeResult(success: true, detail: detail, latency: latency)
    }
    public static func failed(_ detail: String, latency: Duration? = nil) -> ProbeResult {
        ProbeResult(success: false, detail: detail, latency: latency)
    }
    /// The detail of a udp probe answered by an ICMP port unreachable.
    public static let portUnreachable = "port unreachable"
    /// The detail of a udp probe without an expected reply that met silence (LoxiLB: healthy).
    public static let noUnreachable = "no ICMP unreachable"
}

/// Memory of ICMP port unreachables for udp probes without an expected reply.
///
/// The endpoint's kernel rate-limits ICMP port unreachables (Linux: a burst of 6, then one per
/// second per source, `net.ipv4.icmp_ratelimit`), so at sub-second probe rates most probes of a
/// closed UDP port meet silence, which LoxiLB's rule counts as health, and the endpoint would
/// never reach the failure count. An unreachable cannot be an artefact of loss (loss can only
/// hide one), so it is remembered for `hold`: silence within that time after an unreachable
/// counts as a failure too.
public struct UnreachableMemory: Hashable, Sendable {
    public var hold: Duration
    public private(set) var last: ContinuousClock.Instant?

    public init(hold: Duration = .milliseconds(1500)) { self.hold = hold }

    public mutating func filter(_ r: ProbeResult, at now: ContinuousClock.Instant) -> ProbeResult {
        if !r.success, r.detail == ProbeResult.portUnreachable {
            last = now
            return r
        }
        // Only silence is suspect; a reply proves the port open again.
        if r.success, r.detail == ProbeResult.noUnreachable, let last, now - last < hold {
            return ProbeResult(success: false, detail: ProbeResult.portUnreachable + " (recent)", latency: r.latency)
        }
        return r
    }
}

/// A change of an endpoint's effective state.
public struct HealthTransition: Hashable, Sendable {
    public var endpoint: EndpointID
    public var from: HealthState
    public var to: HealthState
    /// Monotonic time of the change (the clock the caller passes in).
    public var at: ContinuousClock.Instant
    /// Why: the last probe result's detail, or the verdict that caused it.
    public var reason: String

    public init(endpoint: EndpointID, from: HealthState, to: HealthState, at: ContinuousClock.Instant, reason: String) {
        self.endpoint = endpoint
        self.from = from
        self.to = to
        self.at = at
        self.reason = reason
    }
}

/// Health of one endpoint.
///
/// Hysteresis: `failuresToDown` CONSECUTIVE failed probes mark it down, `successesToUp`
/// consecutive successes mark it up; each outcome resets the other's counter. (LoxiLB counted
/// failures cumulatively until PR #1087, so rare losses added up and healthy endpoints
/// flapped.) From unknown, the first success marks it up and `failuresToDown` failures down.
public struct EndpointHealth: Hashable, Sendable {
    public let id: EndpointID
    public var failuresToDown: Int
    public var successesToUp: Int
    /// Whether probes run; false for kind `none` (then only the verdict matters).
    public let probed: Bool

    /// What the probes alone say.
    public private(set) var probeState: HealthState = .unknown
    public private(set) var verdict: ExternalVerdict?
    public private(set) var consecutiveFailures = 0
    public private(set) var consecutiveSuccesses = 0
    public private(set) var lastResult: ProbeResult?
    public private(set) var lastProbeAt: ContinuousClock.Instant?
    /// When the effective state last changed (nil: never).
    public private(set) var lastChangeAt: ContinuousClock.Instant?
    public private(set) var transitions = 0

    public init(id: EndpointID, failuresToDown: Int, successesToUp: Int, probed: Bool = true) {
        self.id = id
        self.failuresToDown = max(1, failuresToDown)
        self.successesToUp = max(1, successesToUp)
        self.probed = probed
        if !probed { probeState = .up }
    }

    public init(id: EndpointID, spec: ProbeSpec) {
        self.init(id: id, failuresToDown: spec.timing.failuresToDown, successesToUp: spec.timing.successesToUp,
                  probed: spec.kind != .none)
    }

    /// Starts the probes from down rather than unknown: an endpoint the previous run of the daemon
    /// held down (read back from the adopted datapath) stays out of rotation until
    /// `successesToUp` probes succeed, instead of getting traffic until probes fail it again.
    public mutating func assumeDown() {
        guard probed, probeState == .unknown else { return }
        probeState = .down
    }

    /// The effective state: the probes' state combined with the external verdict (see
    /// `ExternalVerdict` for the rule).
    public var state: HealthState { Self.combine(probeState, verdict) }

    public static func combine(_ probe: HealthState, _ verdict: ExternalVerdict?) -> HealthState {
        verdict == .red ? .down : probe
    }

    /// Feeds one probe outcome; returns the transition if the effective state changed.
    public mutating func onProbeResult(_ result: ProbeResult, at now: ContinuousClock.Instant) -> [HealthTransition] {
        lastResult = result
        lastProbeAt = now
        guard probed else { return [] }
        let before = state
        if result.success {
            consecutiveFailures = 0
            consecutiveSuccesses += 1
            switch probeState {
            case .unknown: probeState = .up
            case .down where consecutiveSuccesses >= successesToUp: probeState = .up
            default: break
            }
        } else {
            consecutiveSuccesses = 0
            consecutiveFailures += 1
            if probeState != .down, consecutiveFailures >= failuresToDown { probeState = .down }
        }
        return emit(from: before, at: now, reason: result.detail)
    }

    /// Sets or clears (nil) the external verdict; returns the transition if the effective
    /// state changed.
    public mutating func setVerdict(_ v: ExternalVerdict?, at now: ContinuousClock.Instant) -> [HealthTransition] {
        let before = state
        verdict = v
        return emit(from: before, at: now, reason: "external verdict \(v?.rawValue ?? "cleared")")
    }

    private mutating func emit(from before: HealthState, at now: ContinuousClock.Instant, reason: String) -> [HealthTransition] {
        let after = state
        guard after != before else { return [] }
        lastChangeAt = now
        transitions += 1
        return [HealthTransition(endpoint: id, from: before, to: after, at: now, reason: reason)]
    }
}
