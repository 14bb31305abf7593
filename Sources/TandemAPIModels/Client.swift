import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The CLI's side of the API: plain HTTP/JSON against a node's /netlox/v1.
public struct APIClient: Sendable {
    public var baseURL: URL
    public var timeout: TimeInterval
    /// Sent as `Authorization: Bearer <token>`.
    public var token: String?

    public init(baseURL: URL, timeout: TimeInterval = 10, token: String? = nil) {
        self.baseURL = baseURL
        self.timeout = timeout
        self.token = token
    }

    public struct Failure: Error, CustomStringConvertible {
        public var status: Int
        public var message: String
        public var description: String { status == 0 ? message : "error \(status): \(message)" }
    }

    public func send(_ method: String, _ path: String, body: Data? = nil) async throws -> Data {
        guard let url = URL(string: path, relativeTo: baseURL) else {
            throw Failure(status: 0, message: "bad URL \(baseURL)\(path)")
        }
        var req = URLRequest(url: url, timeoutInterval: timeout)
        req.httpMethod = method
        if let token, !token.isEmpty { req.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        if let body {
            req.httpBody = body
            req.setValue("application/json", forHTTPHeaderField: "Content-Type")
        }
        let (data, response): (Data, URLResponse)
        do {
            (data, response) = try await URLSession.shared.data(for: req)
        } catch {
            throw Failure(status: 0, message: "cannot reach the Tandem API at \(baseURL): \(error.localizedDescription)")
        }
        let status = (response as? HTTPURLResponse)?.statusCode ?? 0
        guard (200..<300).contains(status) else {
            let msg = (try? JSONDecoder().decode(APIErrorBody.self, from: data))?.reason
                ?? String(decoding: data, as: UTF8.self)
            throw Failure(status: status, message: msg)
        }
        // LoxiLB's convention, which kube-loxilb enforces: a change answered 200 must say Success.
        if method != "GET", let body = try? JSONDecoder().decode(APIErrorBody.self, from: data), body.result != "Success" {
            throw Failure(status: status, message: body.reason)
        }
        return data
    }

    public func get<T: Decodable>(_ path: String, as: T.Type) async throws -> T {
        try JSONDecoder().decode(T.self, from: try await send("GET", path))
    }

    public func createLoadBalancer(_ entry: LoadBalancerEntry) async throws {
        _ = try await send("POST", APIRoutes.loadBalancer, body: try JSONEncoder().encode(entry))
    }
}
