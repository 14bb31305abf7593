@_exported import struct TandemCore.SplitMix64
import Foundation

/// A Core API call the takeover makes. The shell turns it into a signed HTTP request.
public enum OCIRequest: Sendable, Equatable {
    case getVnic(vnicId: String)
    case listPrivateIps(ipAddress: String, subnetId: String)
    case updatePrivateIp(privateIpId: String, vnicId: String)
    case createPrivateIp(vnicId: String, ipAddress: String, retryToken: String)

    public static let basePath = "/20160918"

    public var operation: String {
        switch self {
        case .getVnic: return "GetVnic"
        case .listPrivateIps: return "ListPrivateIps"
        case .updatePrivateIp: return "UpdatePrivateIp"
        case .createPrivateIp: return "CreatePrivateIp"
        }
    }

    public var method: String {
        switch self {
        case .getVnic, .listPrivateIps: return "GET"
        case .updatePrivateIp: return "PUT"
        case .createPrivateIp: return "POST"
        }
    }

    /// Path and query exactly as sent (and signed). Query parameters in a fixed order.
    public var target: String {
        switch self {
        case .getVnic(let id): return "\(Self.basePath)/vnics/\(percentEncode(id))"
        case .listPrivateIps(let ip, let subnet):
            return "\(Self.basePath)/privateIps?ipAddress=\(percentEncode(ip))&subnetId=\(percentEncode(subnet))"
        case .updatePrivateIp(let id, _): return "\(Self.basePath)/privateIps/\(percentEncode(id))"
        case .createPrivateIp: return "\(Self.basePath)/privateIps"
        }
    }

    /// JSON body for PUT/POST, empty otherwise.
    public var body: [UInt8] {
        switch self {
        case .getVnic, .listPrivateIps: return []
        case .updatePrivateIp(_, let vnicId): return Array(jsonObject([("vnicId", vnicId)]).utf8)
        case .createPrivateIp(let vnicId, let ip, _):
            return Array(jsonObject([("vnicId", vnicId), ("ipAddress", ip)]).utf8)
        }
    }

    /// Extra unsigned headers.
    public var extraHeaders: [(String, String)] {
        if case .createPrivateIp(_, _, let token) = self { return [("opc-retry-token", token)] }
        return []
    }
}

/// RFC 3986: only unreserved characters stay as they are; hex upper-case.
public func percentEncode(_ text: String) -> String {
    var out = ""
    for byte in text.utf8 {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."),
             UInt8(ascii: "_"), UInt8(ascii: "~"):
            out.unicodeScalars.append(Unicode.Scalar(byte))
        default:
            let hex = String(byte, radix: 16, uppercase: true)
            out += "%" + (byte < 16 ? "0" + hex : hex)
        }
    }
    return out
}

/// A flat JSON object of strings, with a stable key order.
func jsonObject(_ pairs: [(String, String)]) -> String {
    func quote(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    out += String(format: "\\u%04x", scalar.value)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
    return "{" + pairs.map { "\(quote($0.0)):\(quote($0.1))" }.joined(separator: ",") + "}"
}

/// What came back for a request.
public enum OCIResponseEvent: Sendable, Equatable {
    case http(status: Int, body: [UInt8], opcRequestId: String?, retryAfter: Duration?)
    /// No HTTP answer: refused, reset, dropped or timed out. Whether the server acted is unknown.
    case transportFailure(String)
}

public struct TakeoverPolicy: Sendable, Equatable {
    /// Whole takeover, from start to the final answer.
    public var deadline: Duration
    /// One HTTP exchange (capped by what remains of the deadline).
    public var requestTimeout: Duration
    /// Failed calls allowed per takeover (transient errors, transport failures, re-lookups).
    public var maxFailures: Int
    public var baseDelay: Duration
    public var maxDelay: Duration

    public init(deadline: Duration = .seconds(30), requestTimeout: Duration = .seconds(10), maxFailures: Int = 6,
                baseDelay: Duration = .milliseconds(500), maxDelay: Duration = .seconds(4)) {
        self.deadline = deadline
        self.requestTimeout = requestTimeout
        self.maxFailures = maxFailures
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
    }

    /// Delay before retry n (1-based): min(base·2^(n-1) + U(0,1)·base, max). `unit` is U(0,1).
    public func backoff(failure n: Int, unit: Double) -> Duration {
        let exponent = Double(1 << min(max(n - 1, 0), 20))
        let seconds = baseDelay.seconds * exponent + unit * baseDelay.seconds
        return .seconds(min(seconds, maxDelay.seconds))
    }
}

extension Duration {
    var seconds: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) / 1e18
    }
}

public enum TakeoverOutcome: Sendable, Equatable {
    case alreadyAssigned
    case moved(fromVnicId: String?)
    case created
}

/// One HTTP attempt, for logs and the report.
public struct TakeoverAttempt: Sendable, Equatable {
    public var operation: String
    public var startedAt: Duration
    public var status: Int?
    public var code: String?
    public var opcRequestId: String?
    public var error: String?
}

public struct TakeoverResult: Sendable, Equatable {
    public var vip: String
    public var vnicId: String
    public var privateIpId: String
    public var outcome: TakeoverOutcome
    public var attempts: [TakeoverAttempt]
}

public enum TakeoverError: Error, Sendable, Equatable, CustomStringConvertible {
    case invalidVIP(String)
    /// 401: bad key, fingerprint, user/tenancy, or clock skew. Retrying can't help.
    case notAuthenticated(OCIServiceError)
    case rejected(OCIServiceError)
    case vnicNotFound(OCIServiceError)
    case ipListedMoreThanOnce(count: Int)
    case primaryIP(privateIpId: String, vnicId: String?)
    case malformedResponse(operation: String, detail: String)
    case deadlineExceeded(lastError: String)
    case tooManyFailures(lastError: String)

    public var description: String {
        switch self {
        case .invalidVIP(let vip): return "\(vip) is not an IPv4 address"
        case .notAuthenticated(let e):
            return "OCI refused the signature (401 NotAuthenticated): check user, tenancy, fingerprint, key and the clock. \(e)"
        case .rejected(let e): return "OCI rejected the request: \(e)"
        case .vnicNotFound(let e): return "my VNIC is unknown or not visible to this user: \(e)"
        case .ipListedMoreThanOnce(let n): return "the IP appears \(n) times in the subnet"
        case .primaryIP(let id, let vnic):
            return "the IP is the primary private IP \(id) of VNIC \(vnic ?? "?"); a primary IP can't be moved"
        case .malformedResponse(let op, let detail): return "\(op): unexpected response: \(detail)"
        case .deadlineExceeded(let last): return "takeover deadline exceeded; last error: \(last)"
        case .tooManyFailures(let last): return "too many failed calls; last error: \(last)"
        }
    }
}

public enum TakeoverAction: Sendable, Equatable {
    /// Sign and send, then call `onResponse`.
    case send(OCIRequest, timeout: Duration)
    /// Sleep, then call `onTimer`.
    case sleep(Duration)
    case succeeded(TakeoverResult)
    case failed(TakeoverError)
}

/// The takeover of a floating private IP as a pure state machine: events in, actions out.
/// Time (`now`, elapsed since the takeover began) and randomness are injected.
public struct TakeoverMachine: Sendable {
    enum Step: Equatable {
        case resolveSubnet
        case lookup
        case move(privateIpId: String, fromVnicId: String?)
        case create
    }

    public let vip: String
    public let vnicId: String
    public private(set) var subnetId: String?
    public let policy: TakeoverPolicy
    public let retryToken: String
    public private(set) var attempts: [TakeoverAttempt] = []
    public private(set) var failures = 0
    var rng: SplitMix64
    var step: Step
    var pending: OCIRequest?
    var finished = false
    var lastError = "none"

    /// `subnetId` may be known already (cached); otherwise the machine asks GetVnic first.
    public init(vip: String, vnicId: String, subnetId: String?, policy: TakeoverPolicy = TakeoverPolicy(), seed: UInt64) {
        self.vip = vip
        self.vnicId = vnicId
        self.subnetId = subnetId
        self.policy = policy
        self.rng = SplitMix64(seed: seed)
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
        var token = ""
        for _ in 0..<30 { token.append(alphabet[Int(rng.next() % UInt64(alphabet.count))]) }
        self.retryToken = token
        self.step = subnetId == nil ? .resolveSubnet : .lookup
    }

    public mutating func start(now: Duration) -> TakeoverAction {
        guard IPv4(vip) != nil else { return finish(.failed(.invalidVIP(vip))) }
        return issue(now: now)
    }

    public mutating func onTimer(now: Duration) -> TakeoverAction {
        guard !finished else { return .failed(.deadlineExceeded(lastError: lastError)) }
        return issue(now: now)
    }

    public mutating func onResponse(_ event: OCIResponseEvent, now: Duration) -> TakeoverAction {
        guard !finished, let request = pending else {
            return .failed(.malformedResponse(operation: "-", detail: "response without a request"))
        }
        pending = nil
        switch event {
        case .transportFailure(let reason):
            record(request, now: now, status: nil, code: nil, requestId: nil, error: reason)
            lastError = "\(request.operation): \(reason)"
            // The server may have acted on a PUT/POST: look again before deciding.
            if request.method != "GET" { step = .lookup }
            return retry(now: now, retryAfter: nil)

        case .http(let status, let body, let requestId, let retryAfter):
            if (200..<300).contains(status) {
                record(request, now: now, status: status, code: nil, requestId: requestId, error: nil)
                return onSuccess(request, body: body, now: now)
            }
            let error = OCIServiceError(operation: request.operation, status: status, body: body, opcRequestId: requestId)
            record(request, now: now, status: status, code: error.code, requestId: requestId, error: error.message)
            lastError = error.description
            if status == 401 { return finish(.failed(.notAuthenticated(error))) }
            if error.isRetryable { return retry(now: now, retryAfter: retryAfter) }
            switch (request, status) {
            case (.getVnic, 404):
                return finish(.failed(.vnicNotFound(error)))
            case (.updatePrivateIp, 404), (.updatePrivateIp, 412), (.createPrivateIp, 409):
                // The IP changed under us (deleted, modified, or created by a racing node): look again.
                step = .lookup
                return retryNow(now: now)
            default:
                return finish(.failed(.rejected(error)))
            }
        }
    }

    // MARK: - internals

    mutating func onSuccess(_ request: OCIRequest, body: [UInt8], now: Duration) -> TakeoverAction {
        let decoder = JSONDecoder()
        switch request {
        case .getVnic:
            guard let vnic = try? decoder.decode(OCIVnic.self, from: Data(body)) else {
                return finish(.failed(.malformedResponse(operation: request.operation, detail: "not a Vnic")))
            }
            subnetId = vnic.subnetId
            step = .lookup
            return issue(now: now)

        case .listPrivateIps:
            guard let list = try? decoder.decode([OCIPrivateIP].self, from: Data(body)) else {
                return finish(.failed(.malformedResponse(operation: request.operation, detail: "not a PrivateIp array")))
            }
            let matches = list.filter { $0.ipAddress == nil || $0.ipAddress == vip }
            if matches.count > 1 { return finish(.failed(.ipListedMoreThanOnce(count: matches.count))) }
            guard let ip = matches.first else {
                step = .create
                return issue(now: now)
            }
            if ip.vnicId == vnicId { return succeed(privateIpId: ip.id, outcome: .alreadyAssigned) }
            if ip.isPrimary == true { return finish(.failed(.primaryIP(privateIpId: ip.id, vnicId: ip.vnicId))) }
            // Keep the first observed owner across re-lookups for the report.
            if case .move(_, let from) = step {
                step = .move(privateIpId: ip.id, fromVnicId: from ?? ip.vnicId)
            } else {
                step = .move(privateIpId: ip.id, fromVnicId: ip.vnicId)
            }
            return issue(now: now)

        case .updatePrivateIp(let id, _):
            guard let ip = try? decoder.decode(OCIPrivateIP.self, from: Data(body)) else {
                return finish(.failed(.malformedResponse(operation: request.operation, detail: "not a PrivateIp")))
            }
            guard ip.vnicId == vnicId else {
                lastError = "UpdatePrivateIp answered vnicId \(ip.vnicId ?? "null")"
                step = .lookup
                return retryNow(now: now)
            }
            var from: String? = nil
            if case .move(_, let f) = step { from = f }
            return succeed(privateIpId: ip.id.isEmpty ? id : ip.id, outcome: .moved(fromVnicId: from))

        case .createPrivateIp:
            guard let ip = try? decoder.decode(OCIPrivateIP.self, from: Data(body)) else {
                return finish(.failed(.malformedResponse(operation: request.operation, detail: "not a PrivateIp")))
            }
            guard ip.vnicId == vnicId else {
                lastError = "CreatePrivateIp answered vnicId \(ip.vnicId ?? "null")"
                step = .lookup
                return retryNow(now: now)
            }
            return succeed(privateIpId: ip.id, outcome: .created)
        }
    }

    mutating func request(for step: Step) -> OCIRequest {
        switch step {
        case .resolveSubnet: return .getVnic(vnicId: vnicId)
        case .lookup: return .listPrivateIps(ipAddress: vip, subnetId: subnetId ?? "")
        case .move(let id, _): return .updatePrivateIp(privateIpId: id, vnicId: vnicId)
        case .create: return .createPrivateIp(vnicId: vnicId, ipAddress: vip, retryToken: retryToken)
        }
    }

    mutating func issue(now: Duration) -> TakeoverAction {
        let remaining = policy.deadline - now
        guard remaining > .zero else { return finish(.failed(.deadlineExceeded(lastError: lastError))) }
        if step == .lookup && subnetId == nil { step = .resolveSubnet }
        let request = request(for: step)
        pending = request
        return .send(request, timeout: min(policy.requestTimeout, remaining))
    }

    /// Counts a failure and sleeps with jittered exponential backoff (or Retry-After, if longer).
    mutating func retry(now: Duration, retryAfter: Duration?) -> TakeoverAction {
        failures += 1
        if failures >= policy.maxFailures { return finish(.failed(.tooManyFailures(lastError: lastError))) }
        var delay = policy.backoff(failure: failures, unit: rng.unit())
        if let retryAfter, retryAfter > delay { delay = retryAfter }
        if now + delay >= policy.deadline { return finish(.failed(.deadlineExceeded(lastError: lastError))) }
        return .sleep(delay)
    }

    /// Counts a failure and goes on at once (the state changed; no reason to wait).
    mutating func retryNow(now: Duration) -> TakeoverAction {
        failures += 1
        if failures >= policy.maxFailures { return finish(.failed(.tooManyFailures(lastError: lastError))) }
        return issue(now: now)
    }

    mutating func record(_ request: OCIRequest, now: Duration, status: Int?, code: String?, requestId: String?, error: String?) {
        attempts.append(TakeoverAttempt(operation: request.operation, startedAt: now, status: status, code: code,
                                        opcRequestId: requestId, error: error))
    }

    mutating func succeed(privateIpId: String, outcome: TakeoverOutcome) -> TakeoverAction {
        finish(.succeeded(TakeoverResult(vip: vip, vnicId: vnicId, privateIpId: privateIpId, outcome: outcome,
                                         attempts: attempts)))
    }

    mutating func finish(_ action: TakeoverAction) -> TakeoverAction {
        finished = true
        pending = nil
        return action
    }
}
