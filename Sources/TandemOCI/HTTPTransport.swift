import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

public struct HTTPResponse: Sendable {
    public var status: Int
    /// Header names lower-cased.
    public var headers: [String: String]
    public var body: [UInt8]

    public init(status: Int, headers: [String: String], body: [UInt8]) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    public func header(_ name: String) -> String? { headers[name.lowercased()] }
}

public enum HTTPTransportError: Error, Sendable, Equatable, CustomStringConvertible {
    case timedOut
    case failed(String)
    case invalidURL(String)

    public var description: String {
        switch self {
        case .timedOut: return "timed out"
        case .failed(let reason): return reason
        case .invalidURL(let url): return "invalid URL \(url)"
        }
    }
}

/// Sends one HTTP request. Implementations must send the given headers as they are and must
/// put the URL's authority in the Host header (what the signer signs as `host`).
public protocol HTTPTransport: Sendable {
    func send(method: String, url: URL, headers: [(String, String)], body: [UInt8], timeout: Duration) async throws -> HTTPResponse
}

/// URLSession (libcurl on Linux), which gives TLS for the real API without extra dependencies.
public final class URLSessionTransport: HTTPTransport, @unchecked Sendable {
    // URLSession is thread-safe; it is only created in init.
    let session: URLSession

    public init() {
        let configuration = URLSessionConfiguration.ephemeral
        configuration.httpCookieStorage = nil
        configuration.urlCache = nil
        configuration.requestCachePolicy = .reloadIgnoringLocalCacheData
        session = URLSession(configuration: configuration)
    }

    deinit { session.invalidateAndCancel() }

    public func send(method: String, url: URL, headers: [(String, String)], body: [UInt8], timeout: Duration) async throws -> HTTPResponse {
        let session = self.session
        // URLSession's timeout is an idle timeout; the task group bounds the whole exchange.
        return try await withThrowingTaskGroup(of: HTTPResponse?.self) { group in
            group.addTask {
                do {
                    var request = URLRequest(url: url)
                    request.httpMethod = method
                    // Whole seconds only: corelibs turns sub-second values into an immediate timeout.
                    // The task group below enforces the precise limit.
                    request.timeoutInterval = max(timeout.seconds.rounded(.up), 1) + 1
                    for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
                    if !body.isEmpty || method == "PUT" || method == "POST" { request.httpBody = Data(body) }
                    let (data, response) = try await session.data(for: request)
                    guard let http = response as? HTTPURLResponse else { throw HTTPTransportError.failed("not an HTTP response") }
                    var headers: [String: String] = [:]
                    for (key, value) in http.allHeaderFields {
                        if let key = key as? String, let value = value as? String { headers[key.lowercased()] = value }
                    }
                    return HTTPResponse(status: http.statusCode, headers: headers, body: [UInt8](data))
                } catch let error as URLError where error.code == .timedOut {
                    throw HTTPTransportError.timedOut
                } catch let error as HTTPTransportError {
                    throw error
                } catch is CancellationError {
                    throw CancellationError()
                } catch {
                    throw HTTPTransportError.failed("\(error.localizedDescription)")
                }
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let response = first else { throw HTTPTransportError.timedOut }
            return response
        }
    }
}

/// A base URL such as `https://iaas.us-ashburn-1.oraclecloud.com` or `http://127.0.0.1:8080`.
public struct OCIEndpoint: Sendable, Equatable, CustomStringConvertible {
    public var scheme: String
    public var host: String
    public var port: Int?
    /// A path prefix before the API path (normally empty).
    public var pathPrefix: String

    public init?(_ text: String) {
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased(),
              scheme == "http" || scheme == "https", let host = components.host, !host.isEmpty else { return nil }
        self.scheme = scheme
        self.host = host
        // A default port must not appear in the signed host (§6.2): drop it.
        let defaultPort = scheme == "https" ? 443 : 80
        self.port = components.port == defaultPort ? nil : components.port
        var prefix = components.percentEncodedPath
        while prefix.hasSuffix("/") { prefix.removeLast() }
        self.pathPrefix = prefix
    }

    /// What goes in the Host header and in the signed `host`.
    public var authority: String { port.map { "\(host):\($0)" } ?? host }
    public var description: String { "\(scheme)://\(authority)\(pathPrefix)" }

    public func url(target: String) -> URL? { URL(string: "\(scheme)://\(authority)\(pathPrefix)\(target)") }

    public static func api(region: String, realmDomain: String?) -> OCIEndpoint? {
        OCIEndpoint("https://" + OCIRegion.apiHost(region: region, realmDomain: realmDomain))
    }
}
