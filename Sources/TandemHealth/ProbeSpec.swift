// Probe specifications: what to send to an endpoint, what counts as healthy, and how often.
// Pure values; no I/O.

/// How often an endpoint is probed and how many outcomes in a row change its state.
///
/// The defaults were chosen by measurement (docs/health.md, "Probe defaults"): a dead endpoint
/// is marked down in under 1 s on the LAN, and a healthy endpoint behind 20 % packet loss in
/// each direction does not flap.
public struct ProbeTiming: Hashable, Sendable, Codable {
    /// Time between the starts of two probes of one endpoint (before jitter).
    public var interval: Duration
    /// Time an attempt may take before it counts as failed. The default leaves room for one TCP
    /// data retransmission (Linux's minimum RTO is 200 ms), so a lost request or response
    /// segment does not fail an http(s) attempt.
    public var timeout: Duration
    /// Consecutive failed probes that mark an up (or unknown) endpoint down.
    public var failuresToDown: Int
    /// Consecutive successful probes that mark a down endpoint up again.
    public var successesToUp: Int
    /// Attempts sent at the same time for one probe; the probe succeeds if any does. With loss
    /// `p` per attempt a probe fails with `p^attempts`, which is what keeps a healthy endpoint
    /// behind a lossy path from flapping without slowing detection (see docs/health.md). A udp
    /// probe without an expected reply always sends one (loss only makes silence, a success).
    public var attempts: Int
    /// Spread of the interval: each probe is scheduled `interval * (1 ± jitter)` after the last,
    /// so probes to many endpoints do not arrive in bursts. 0...0.5.
    public var jitter: Double

    public static let `default` = ProbeTiming(interval: .milliseconds(150), timeout: .milliseconds(300),
                                              failuresToDown: 3, successesToUp: 2, attempts: 6, jitter: 0.1)

    /// The defaults of one probe kind: https gets more attempts, since a TLS exchange has more
    /// packets to lose (measured: at 20 % loss each way 61 % of https attempts fail against 36 %
    /// of tcp ones).
    public static func defaults(for kind: ProbeKind) -> ProbeTiming {
        var t = ProbeTiming.default
        if kind == .https { t.attempts = 10 }
        return t
    }

    public init(interval: Duration, timeout: Duration, failuresToDown: Int, successesToUp: Int,
                attempts: Int = 1, jitter: Double = 0.1) {
        self.interval = interval
        self.timeout = timeout
        self.failuresToDown = failuresToDown
        self.successesToUp = successesToUp
        self.attempts = attempts
        self.jitter = jitter
    }

    /// Refuses values the scheduler or state machine cannot work with.
    public func validate() throws(ProbeSpecError) {
        guard interval >= .milliseconds(10), interval <= .seconds(3600) else {
            throw ProbeSpecError("interval must be 10 ms to 1 h, got \(interval)")
        }
        guard timeout >= .milliseconds(1), timeout <= .seconds(60) else {
            throw ProbeSpecError("timeout must be 1 ms to 60 s, got \(timeout)")
        }
        guard (1...100).contains(failuresToDown) else {
            throw ProbeSpecError("failures to mark down must be 1-100, got \(failuresToDown)")
        }
        guard (1...100).contains(successesToUp) else {
            throw ProbeSpecError("successes to mark up must be 1-100, got \(successesToUp)")
        }
        guard (1...16).contains(attempts) else { throw ProbeSpecError("attempts must be 1-16, got \(attempts)") }
        guard jitter >= 0, jitter <= 0.5 else { throw ProbeSpecError("jitter must be 0-0.5, got \(jitter)") }
    }
}

/// What a probe sends and expects.
public enum ProbeKind: String, Hashable, Sendable, Codable, CaseIterable {
    /// Not probed: always up (an external verdict may still mark it down).
    case none
    /// TCP connect; up when the handshake completes.
    case tcp
    /// UDP: send the request payload; up on a reply (containing the expected text, if given) or,
    /// without an expected reply, on no ICMP port unreachable before the timeout (LoxiLB's rule).
    case udp
    /// HTTP/1.1 GET of the request path; up on the expected status and/or body text.
    case http
    /// As http, over TLS; the certificate is verified unless `tlsVerify` is false.
    case https
    /// ICMP echo; up on the matching echo reply.
    case ping
}

/// One endpoint's probe: kind, where, what and when.
public struct ProbeSpec: Hashable, Sendable, Codable {
    public var kind: ProbeKind
    /// Port to probe; nil: the endpoint's own port. Ignored by ping and none.
    public var port: UInt16?
    /// http/https: the request path (starts with "/"). udp: the payload sent.
    public var request: String
    /// http/https: the status code that counts as healthy; nil: any 2xx or 3xx.
    public var expectedStatus: Int?
    /// http/https: text the body must contain. udp: text the reply must contain; when set, a
    /// silent endpoint counts as failed (a reply is required).
    public var expectedBody: String?
    /// https: verify the certificate chain (the host name is not checked: endpoints are
    /// addressed by IP). false skips verification.
    public var tlsVerify: Bool
    public var timing: ProbeTiming

    public init(kind: ProbeKind, port: UInt16? = nil, request: String = "", expectedStatus: Int? = nil,
                expectedBody: String? = nil, tlsVerify: Bool = true, timing: ProbeTiming? = nil) {
        self.kind = kind
        self.port = port
        self.request = request
        self.expectedStatus = expectedStatus
        self.expectedBody = expectedBody
        self.tlsVerify = tlsVerify
        self.timing = timing ?? .defaults(for: kind)
    }

    /// The default payload of a UDP probe without a request.
    public static let defaultUDPPayload = "tandem-health"

    /// http/https request path, "/" when none was given.
    public var path: String { request.isEmpty ? "/" : request }

    public func validate() throws(ProbeSpecError) {
        try timing.validate()
        if let s = expectedStatus, !(100...599).contains(s) {
            throw ProbeSpecError("expected HTTP status must be 100-599, got \(s)")
        }
        if kind == .http || kind == .https {
            guard path.hasPrefix("/") else { throw ProbeSpecError("HTTP probe path must start with '/', got '\(path)'") }
            // The path goes into the request line as is: no spaces or line breaks.
            guard !path.contains(where: { $0 == " " || $0 == "\r" || $0 == "\n" }) else {
                throw ProbeSpecError("HTTP probe path must not contain spaces or line breaks")
            }
        }
        if port == 0 { throw ProbeSpecError("probe port must be 1-65535") }
    }
}

public struct ProbeSpecError: Error, Hashable, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

// MARK: - CLI syntax

extension ProbeSpec {
    /// Parses the CLI form of a probe (`--probe ...`). Grammar (fields separated by ':'):
    ///
    ///     probe      = "none" | "ping"
    ///                | "tcp" [":" port]
    ///                | "udp" [":" [port] [":" payload [":" expect]]]
    ///                | ("http" | "https") [":" path] *(":" httpOption)
    ///     httpOption = status | "any" | "port=" port | "body=" text | "insecure"
    ///     port       = 1-65535          (default: the endpoint's port)
    ///     path       = "/" *char        (no ':' or spaces; default "/")
    ///     status     = 100-599          (default, or "any": any 2xx or 3xx)
    ///     insecure   = https only: skip certificate verification
    ///
    /// A udp `expect` makes a reply containing it required; without it a udp probe succeeds
    /// unless an ICMP port unreachable comes back (LoxiLB's rule). Examples: `http:/healthz:200`,
    /// `https:/ready:200:insecure`, `http:/:port=8080:body=ok`, `tcp`, `tcp:8080`, `udp:53`,
    /// `udp:9000:hello:hello`, `ping`, `none`. Timing is not part of the syntax: it is `timing`.
    /// `timing` nil: the kind's defaults (`ProbeTiming.defaults(for:)`).
    public static func parse(_ text: String, timing: ProbeTiming? = nil) throws(ProbeSpecError) -> ProbeSpec {
        let fields = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard let head = fields.first, !head.isEmpty else {
            throw ProbeSpecError("empty probe; use none, ping, tcp[:PORT], udp[:PORT], http[:PATH[:STATUS]] or https[:PATH[:STATUS][:insecure]]")
        }
        guard let kind = ProbeKind(rawValue: head.lowercased()) else {
            if head.lowercased() == "sctp" { throw ProbeSpecError("sctp probes are not supported; use tcp, udp, http, https or ping") }
            throw ProbeSpecError("unknown probe kind '\(head)'; use none, ping, tcp, udp, http or https")
        }
        var spec = ProbeSpec(kind: kind, timing: timing)
        let rest = Array(fields.dropFirst())
        func port(_ s: String) throws(ProbeSpecError) -> UInt16 {
            guard let p = UInt16(s), p != 0 else { throw ProbeSpecError("'\(s)' is not a port (1-65535) in probe '\(text)'") }
            return p
        }
        switch kind {
        case .none, .ping:
            guard rest.isEmpty else { throw ProbeSpecError("\(kind.rawValue) takes no arguments, got '\(text)'") }
        case .tcp:
            guard rest.count <= 1 else { throw ProbeSpecError("tcp takes at most a port: tcp[:PORT], got '\(text)'") }
            if let p = rest.first { spec.port = try port(p) }
        case .udp:
            guard rest.count <= 3 else { throw ProbeSpecError("udp takes udp[:PORT[:PAYLOAD[:EXPECT]]], got '\(text)'") }
            if rest.count >= 1, !rest[0].isEmpty { spec.port = try port(rest[0]) }
            if rest.count >= 2 { spec.request = rest[1] }
            if rest.count >= 3, !rest[2].isEmpty { spec.expectedBody = rest[2] }
        case .http, .https:
            var i = 0
            if i < rest.count, rest[i].hasPrefix("/") {
                spec.request = rest[i]
                i += 1
            } else if i < rest.count, rest[i].isEmpty {
                i += 1
            }
            while i < rest.count {
                let f = rest[i]
                if f == "insecure" {
                    guard kind == .https else { throw ProbeSpecError("'insecure' applies to https only, got '\(text)'") }
                    spec.tlsVerify = false
                } else if f == "any" {
                    spec.expectedStatus = nil
                } else if let s = Int(f) {
                    guard (100...599).contains(s) else { throw ProbeSpecError("HTTP status must be 100-599, got '\(f)' in '\(text)'") }
                    spec.expectedStatus = s
                } else if f.hasPrefix("port=") {
                    spec.port = try port(String(f.dropFirst(5)))
                } else if f.hasPrefix("body=") {
                    let b = String(f.dropFirst(5))
                    guard !b.isEmpty else { throw ProbeSpecError("body= needs text in '\(text)'") }
                    spec.expectedBody = b
                } else if f.hasPrefix("/") {
                    throw ProbeSpecError("the path must come first in '\(text)'")
                } else {
                    throw ProbeSpecError("unexpected '\(f)' in probe '\(text)'; after the path: STATUS, port=N, body=TEXT or insecure")
                }
                i += 1
            }
        }
        try spec.validate()
        return spec
    }

    /// The CLI form of this spec (without timing), parseable by `parse`.
    public var cliDescription: String {
        switch kind {
        case .none, .ping: return kind.rawValue
        case .tcp: return port.map { "tcp:\($0)" } ?? "tcp"
        case .udp:
            var s = "udp"
            if port != nil || !request.isEmpty || expectedBody != nil { s += ":" + (port.map(String.init) ?? "") }
            if !request.isEmpty || expectedBody != nil { s += ":" + request }
            if let e = expectedBody { s += ":" + e }
            return s
        case .http, .https:
            var s = "\(kind.rawValue):\(path)"
            if let st = expectedStatus { s += ":\(st)" }
            if let p = port { s += ":port=\(p)" }
            if let b = expectedBody { s += ":body=\(b)" }
            if kind == .https, !tlsVerify { s += ":insecure" }
            return s
        }
    }
}

// MARK: - LoxiLB / kube-loxilb fields

extension ProbeSpec {
    /// Maps LoxiLB's per-service probe fields (`serviceArguments` of `POST /netlox/v1/config/
    /// loadbalancer`, which kube-loxilb fills from the `loxilb.io/probetype`, `probeport`,
    /// `probereq`, `proberesp`, `probetimeout`, `proberetries` annotations) to a spec, keeping
    /// LoxiLB's meanings (loxilb pkg/loxinet/rules.go, modNatEpHost and epCheckNow):
    ///
    /// - `probetype`: tcp, udp, http, https, ping, none; empty: derived from the service's
    ///   protocol as LoxiLB does (tcp → tcp connect, udp → udp, icmp → ping; sctp is refused).
    /// - `probeport`: port to probe; 0: the endpoint's port.
    /// - `probereq`: http(s): the URL path (LoxiLB requests `http://ip:port/<probereq>`, so a
    ///   missing leading "/" is added); udp: the payload.
    /// - `proberesp`: http(s): text the response body must contain; udp: text the reply must
    ///   contain. LoxiLB's http prober wants status 200; so does this mapping.
    /// - `probeTimeout`: LoxiLB's probe PERIOD in seconds (probeDuration; its default is 60).
    ///   0 keeps Tandem's measured defaults; a value > 0 becomes the interval, and the attempt
    ///   timeout is capped at it.
    /// - `probeRetries`: consecutive failures that mark an endpoint down (LoxiLB's inActTryThr,
    ///   default 2); 0 keeps Tandem's default.
    public static func fromLoxiLB(probetype: String?, probeport: Int?, probereq: String?, proberesp: String?,
                                  probeTimeout: Int?, probeRetries: Int?, serviceProtocol: String = "tcp",
                                  defaults: ProbeTiming? = nil) throws(ProbeSpecError) -> ProbeSpec {
        let type = (probetype ?? "").lowercased()
        let kind: ProbeKind
        switch type {
        case "":
            switch serviceProtocol.lowercased() {
            case "tcp": kind = .tcp
            case "udp": kind = .udp
            case "icmp": kind = .ping
            case "sctp": throw ProbeSpecError("sctp services need an explicit probetype (tcp, udp, http, https, ping or none): sctp probes are not supported")
            default: kind = .none
            }
        case "sctp": throw ProbeSpecError("probetype sctp is not supported; use tcp, udp, http, https, ping or none")
        default:
            guard let k = ProbeKind(rawValue: type) else {
                throw ProbeSpecError("probetype '\(probetype ?? "")' is not supported; use tcp, udp, http, https, ping or none")
            }
            kind = k
        }
        var timing = defaults ?? .defaults(for: kind)
        if let t = probeTimeout, t != 0 {
            guard (1...3600).contains(t) else { throw ProbeSpecError("probeTimeout must be 0-3600 seconds, got \(t)") }
            timing.interval = .seconds(t)
            timing.timeout = min(timing.timeout, timing.interval)
        }
        if let r = probeRetries, r != 0 {
            guard (1...100).contains(r) else { throw ProbeSpecError("probeRetries must be 0-100, got \(r)") }
            timing.failuresToDown = r
        }
        var spec = ProbeSpec(kind: kind, timing: timing)
        if let p = probeport, p != 0 {
            guard (1...65535).contains(p) else { throw ProbeSpecError("probeport must be 0-65535, got \(p)") }
            guard kind != .none, kind != .ping else { throw ProbeSpecError("probeport \(p) needs probetype tcp, udp, http or https") }
            spec.port = UInt16(p)
        }
        let req = probereq ?? ""
        let resp = proberesp ?? ""
        switch kind {
        case .http, .https:
            spec.request = req.hasPrefix("/") ? req : "/" + req
            spec.expectedStatus = 200
            spec.expectedBody = resp.isEmpty ? nil : resp
        case .udp:
            spec.request = req
            spec.expectedBody = resp.isEmpty ? nil : resp
        case .tcp, .ping, .none:
            break
        }
        try spec.validate()
        return spec
    }
}
