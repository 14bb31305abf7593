import Foundation
import Hummingbird
import Synchronization
import TandemAPIModels

/// The API's bearer token, read from a file only root may read. kube-loxilb sends the token as
/// the whole value of the Authorization header (its ACCESS_TOKEN_<host> variable); curl and most
/// tools send `Bearer <token>`: both are accepted.
public struct APIToken: Sendable, Equatable {
    public let value: String

    public init(value: String) throws(APITokenError) {
        let t = value.trimmingCharacters(in: .whitespacesAndNewlines)
        guard t.utf8.count >= 16 else { throw APITokenError("the API token must be at least 16 characters") }
        guard t.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else {
            throw APITokenError("the API token must be printable ASCII without spaces")
        }
        self.value = t
    }

    /// Loads a token file; refuses one that group or others may read.
    public static func load(path: String) throws(APITokenError) -> APIToken {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw APITokenError("token file \(path): \(String(cString: strerror(errno)))")
        }
        guard st.st_mode & 0o077 == 0 else {
            throw APITokenError("token file \(path) is readable by group or others (mode \(String(st.st_mode & 0o777, radix: 8))); chmod 600 it")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw APITokenError("token file \(path) cannot be read")
        }
        do { return try APIToken(value: String(decoding: data, as: UTF8.self)) } catch {
            throw APITokenError("token file \(path): \(error.message)")
        }
    }

    /// Whether an Authorization header value carries this token. Compares in constant time.
    public func accepts(authorization header: String?) -> Bool {
        guard var presented = header?.trimmingCharacters(in: .whitespaces) else { return false }
        if presented.count > 7, presented.prefix(7).lowercased() == "bearer " {
            presented = String(presented.dropFirst(7)).trimmingCharacters(in: .whitespaces)
        }
        let a = Array(presented.utf8), b = Array(value.utf8)
        var diff = UInt8(a.count == b.count ? 0 : 1)
        for i in 0..<b.count { diff |= b[i] ^ (i < a.count ? a[i] : 0) }
        return diff == 0
    }
}

public struct APITokenError: Error, Equatable, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Refused requests, for /netlox/v1/status and the metrics.
public final class APIAuthCounters: Sendable {
    private let refused = Atomic<UInt64>(0)
    public init() {}
    public var refusedRequests: UInt64 { refused.load(ordering: .relaxed) }
    func countRefused() { refused.add(1, ordering: .relaxed) }
}

/// Requires the token on every route except the liveness GET of the API root, which kube-loxilb
/// polls to learn that a node is up (it carries the token too, but an unauthenticated liveness
/// probe reveals nothing and lets load balancers and systemd watchdogs check the node).
struct TokenMiddleware<Context: RequestContext>: RouterMiddleware {
    let token: APIToken
    let counters: APIAuthCounters

    func handle(_ request: Request, context: Context,
                next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        if request.method == .get, path == APIRoutes.base || path == APIRoutes.base + "/" {
            return try await next(request, context)
        }
        guard token.accepts(authorization: request.headers[.authorization]) else {
            counters.countRefused()
            let reason = request.headers[.authorization] == nil ? "missing Authorization token" : "wrong Authorization token"
            var response = APIServer.errorResponse(status: .unauthorized, reason: reason)
            response.headers[.wwwAuthenticate] = "Bearer"
            return response
        }
        return try await next(request, context)
    }
}
