import Foundation
import Logging

/// Signs and sends Core API requests. Every call is signed anew (fresh `date`).
public struct OCIAPIClient: Sendable {
    public let endpoint: OCIEndpoint
    public let signer: OCIRequestSigner
    public let transport: any HTTPTransport
    public let logger: Logger
    /// Wall clock for the `date` header; injectable for skew tests.
    public let now: @Sendable () -> Date

    public init(endpoint: OCIEndpoint, signer: OCIRequestSigner, transport: any HTTPTransport, logger: Logger,
                now: @escaping @Sendable () -> Date = { Date() }) {
        self.endpoint = endpoint
        self.signer = signer
        self.transport = transport
        self.logger = logger
        self.now = now
    }

    /// 32 upper-case hex digits, like the SDKs.
    static func newRequestId() -> String {
        var rng = SystemRandomNumberGenerator()
        return (0..<16).map { _ in
            let byte = UInt8.random(in: 0...255, using: &rng)
            let hex = String(byte, radix: 16, uppercase: true)
            return byte < 16 ? "0" + hex : hex
        }.joined()
    }

    /// One signed exchange. Throws only for local problems (bad URL, signing); transport failures
    /// and HTTP errors come back as values.
    public func call(method: String, target: String, body: [UInt8] = [], extraHeaders: [(String, String)] = [],
                     timeout: Duration) async throws -> Result<HTTPResponse, HTTPTransportError> {
        let wireTarget = endpoint.pathPrefix + target
        guard let url = endpoint.url(target: target) else { throw HTTPTransportError.invalidURL(endpoint.description + target) }
        let signed = try signer.sign(method: method, host: endpoint.authority, target: wireTarget, body: body,
                                     date: HTTPDate.format(now()))
        let requestId = Self.newRequestId()
        var headers: [(String, String)] = [("accept", "application/json"), ("opc-request-id", requestId)]
        if method == "GET" || method == "DELETE" { headers.append(("content-type", "application/json")) }
        // `host` is written by the transport from the URL; everything else that was signed is sent as is.
        headers += signed.headers.filter { $0.name != "host" }.map { ($0.name, $0.value) }
        headers += extraHeaders
        do {
            let response = try await transport.send(method: method, url: url, headers: headers, body: body, timeout: timeout)
            return .success(response)
        } catch let error as HTTPTransportError {
            return .failure(error)
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            return .failure(.failed("\(error)"))
        }
    }

    /// Carries out one takeover request and turns the answer into a machine event.
    public func perform(_ request: OCIRequest, timeout: Duration) async throws -> OCIResponseEvent {
        let started = ContinuousClock.now
        let result = try await call(method: request.method, target: request.target, body: request.body,
                                    extraHeaders: request.extraHeaders, timeout: timeout)
        let elapsed = ContinuousClock.now - started
        switch result {
        case .success(let response):
            let requestId = response.header("opc-request-id")
            logger.info("OCI \(request.operation) -> \(response.status)", metadata: [
                "opc-request-id": "\(requestId ?? "none")", "ms": "\(Int(elapsed.seconds * 1000))",
            ])
            if response.status == 401 {
                // Most 401s are clock skew or a wrong key: show both clocks.
                logger.warning("OCI \(request.operation) not authenticated", metadata: [
                    "local-date": "\(HTTPDate.format(now()))", "server-date": "\(response.header("date") ?? "none")",
                    "keyId": "\(signer.keyId)",
                ])
            }
            let retryAfter = response.header("retry-after").flatMap(Double.init).map { Duration.seconds($0) }
            return .http(status: response.status, body: response.body, opcRequestId: requestId, retryAfter: retryAfter)
        case .failure(let error):
            logger.warning("OCI \(request.operation) failed: \(error)", metadata: ["ms": "\(Int(elapsed.seconds * 1000))"])
            return .transportFailure(error.description)
        }
    }
}

public enum IMDSError: Error, Sendable, Equatable, CustomStringConvertible {
    case unavailable(String)
    case malformed(String)

    public var description: String {
        switch self {
        case .unavailable(let reason): return "instance metadata service unavailable: \(reason)"
        case .malformed(let reason): return "instance metadata service answered something unexpected: \(reason)"
        }
    }
}

/// Instance Metadata Service v2 client.
public struct IMDSClient: Sendable {
    /// The real IMDS. Tests always pass a loopback endpoint instead.
    public static let defaultEndpoint = "http://169.254.169.254"

    public let endpoint: OCIEndpoint
    public let transport: any HTTPTransport
    public var timeout: Duration = .seconds(3)
    public var attempts = 3

    public init(endpoint: OCIEndpoint, transport: any HTTPTransport) {
        self.endpoint = endpoint
        self.transport = transport
    }

    /// GET with `Authorization: Bearer Oracle`, retried on 404/429/5xx and transport errors as the doc advises.
    func get(_ path: String) async throws -> [UInt8] {
        guard let url = endpoint.url(target: path) else { throw IMDSError.unavailable("invalid URL \(endpoint)\(path)") }
        var last = "no attempt"
        for attempt in 0..<attempts {
            if attempt > 0 { try await Task.sleep(for: .milliseconds(200 << (attempt - 1))) }
            do {
                let response = try await transport.send(method: "GET", url: url,
                                                        headers: [("Authorization", "Bearer Oracle"), ("Accept", "application/json")],
                                                        body: [], timeout: timeout)
                if response.status == 200 { return response.body }
                last = "\(path): HTTP \(response.status)"
                if !(response.status == 404 || response.status == 429 || response.status >= 500) { break }
            } catch let error as HTTPTransportError {
                last = "\(path): \(error)"
            }
        }
        throw IMDSError.unavailable(last)
    }

    public func instance() async throws -> IMDSInstance {
        let body = try await get("/opc/v2/instance/")
        do { return try JSONDecoder().decode(IMDSInstance.self, from: Data(body)) } catch {
            throw IMDSError.malformed("/opc/v2/instance/: \(error)")
        }
    }

    public func vnics() async throws -> [IMDSVnic] {
        let body = try await get("/opc/v2/vnics/")
        do { return try JSONDecoder().decode([IMDSVnic].self, from: Data(body)) } catch {
            throw IMDSError.malformed("/opc/v2/vnics/: \(error)")
        }
    }

    /// The VNIC whose subnet contains the VIP (the first, if several do).
    public static func vnic(containing vip: IPv4, in vnics: [IMDSVnic]) -> IMDSVnic? {
        vnics.first { IPv4CIDR($0.subnetCidrBlock)?.contains(vip) == true }
    }
}
