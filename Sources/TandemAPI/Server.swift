import Foundation
import Hummingbird
import Logging
import NIOCore
import TandemCore
import TandemHA
import TandemMetrics
import TandemSync

/// An error the API answers with a status code and a JSON body, having changed nothing.
public struct APIError: Error, Sendable {
    public var status: HTTPResponse.Status
    public var message: String
    public init(_ status: HTTPResponse.Status, _ message: String) {
        self.status = status
        self.message = message
    }

    public static func badRequest(_ m: String) -> APIError { APIError(.badRequest, m) }
    public static func conflict(_ m: String) -> APIError { APIError(.conflict, m) }
    public static func notFound(_ m: String) -> APIError { APIError(.notFound, m) }
    public static func internalError(_ m: String) -> APIError { APIError(.internalServerError, m) }
}

/// What the API needs from the node. The daemon implements it; tests can too.
public protocol LoadBalancerController: Sendable {
    /// Creates a service; throws APIError (400 invalid, 409 duplicate) and changes nothing on error.
    func create(_ service: Service) async throws
    func delete(_ key: ServiceKey) async throws
    func loadBalancers() async -> [LoadBalancerEntry]
    func conntrack() async -> [ConntrackEntry]
    /// Free-form status for /netlox/v1/status: datapath counters and the like.
    func status() async -> [String: UInt64]
    /// Connection-table replication: sync state, peers, counters; nil when not clustered.
    func sync() async -> ReplicationStatus?
    /// Membership and elections; nil when not clustered.
    func cluster() async -> HAStatus?
    /// kube-loxilb's cistate: each HA instance's role on this node; nil when not clustered.
    func ciStates() async -> [CIStateEntry]?
    /// Sets an instance's role from outside; throws APIError (400 bad state or instance, 404 not clustered).
    func setCIState(_ entry: CIStateEntry) async throws
}

extension LoadBalancerController {
    public func sync() async -> ReplicationStatus? { nil }
    public func cluster() async -> HAStatus? { nil }
    public func ciStates() async -> [CIStateEntry]? { nil }
    public func setCIState(_ entry: CIStateEntry) async throws {
        throw APIError.notFound("this node is not clustered (no cluster peers)")
    }
}

/// `GET /netlox/v1/config/cistate/all`, shaped like LoxiLB's answer.
public struct CIStateList: Codable, Sendable, Equatable {
    public var Attr: [CIStateEntry]
    public init(_ attr: [CIStateEntry]) { Attr = attr }
}

public enum APIRoutes {
    public static let base = "/netlox/v1"
    public static let loadBalancer = "/netlox/v1/config/loadbalancer"
    public static let loadBalancerAll = "/netlox/v1/config/loadbalancer/all"
    public static let conntrackAll = "/netlox/v1/config/conntrack/all"
    public static let openAPI = "/netlox/v1/openapi.json"
    public static let status = "/netlox/v1/status"
    public static let sync = "/netlox/v1/sync"
    public static let cluster = "/netlox/v1/cluster"
    public static let ciState = "/netlox/v1/config/cistate"
    public static let ciStateAll = "/netlox/v1/config/cistate/all"
    public static let metrics = "/netlox/v1/metrics"

    public static func deletePath(_ k: ServiceKey) -> String {
        "\(loadBalancer)/externalipaddress/\(k.vip)/port/\(k.port)/protocol/\(k.proto)"
    }
}

/// Builds the Hummingbird application serving the API. It is a swift-service-lifecycle Service.
public enum APIServer {
    public static let maxBodyBytes = 1 << 20

    public static func makeRouter(controller: some LoadBalancerController) -> Router<BasicRequestContext> {
        let router = Router()
        router.post(RouterPath(APIRoutes.loadBalancer)) { request, _ -> Response in
            await answer {
                let body = try await collect(request)
                let entry: LoadBalancerEntry
                do {
                    entry = try JSONDecoder().decode(LoadBalancerEntry.self, from: body)
                } catch let e as DecodingError {
                    throw APIError(.badRequest, "malformed request body: \(describe(e))")
                } catch {
                    throw APIError(.badRequest, "malformed request body: \(error)")
                }
                let service: Service
                do throws(ServiceError) { service = try entry.toService() } catch { throw APIError(.badRequest, error.message) }
                try await controller.create(service)
                return try json(APIErrorBody(code: 200, message: "ok"), status: .ok)
            }
        }
        router.get(RouterPath(APIRoutes.loadBalancerAll)) { _, _ -> Response in
            await answer { try json(LoadBalancerList(lbAttr: await controller.loadBalancers())) }
        }
        router.delete("/netlox/v1/config/loadbalancer/externalipaddress/:ip/port/:port/protocol/:proto") { _, context -> Response in
            await answer {
                let ipText = context.parameters.get("ip") ?? ""
                let portText = context.parameters.get("port") ?? ""
                let protoText = context.parameters.get("proto") ?? ""
                guard let ip = IPv4Address(ipText) else { throw APIError(.badRequest, "'\(ipText)' is not an IPv4 address") }
                guard let port = UInt16(portText), port > 0 else {
                    throw APIError(.badRequest, "port must be 1-65535, got '\(portText)'")
                }
                guard let proto = L4Protocol(name: protoText) else {
                    throw APIError(.badRequest, "protocol '\(protoText)' is not supported; use tcp or udp")
                }
                try await controller.delete(ServiceKey(vip: ip, port: port, proto: proto))
                return try json(APIErrorBody(code: 200, message: "ok"))
            }
        }
        router.get(RouterPath(APIRoutes.conntrackAll)) { _, _ -> Response in
            await answer { try json(ConntrackList(ctAttr: await controller.conntrack())) }
        }
        router.get(RouterPath(APIRoutes.status)) { _, _ -> Response in
            await answer { try json(await controller.status()) }
        }
        router.get(RouterPath(APIRoutes.sync)) { _, _ -> Response in
            await answer {
                guard let s = await controller.sync() else {
                    throw APIError.notFound("replication is not configured on this node (no cluster peers)")
                }
                return try json(s)
            }
        }
        router.get(RouterPath(APIRoutes.cluster)) { _, _ -> Response in
            await answer {
                guard let s = await controller.cluster() else {
                    throw APIError.notFound("this node is not clustered (no cluster peers)")
                }
                return try json(s)
            }
        }
        router.get(RouterPath(APIRoutes.ciStateAll)) { _, _ -> Response in
            await answer {
                guard let s = await controller.ciStates() else {
                    throw APIError.notFound("this node is not clustered (no cluster peers)")
                }
                return try json(CIStateList(s))
            }
        }
        router.post(RouterPath(APIRoutes.ciState)) { request, _ -> Response in
            await answer {
                let body = try await collect(request)
                let entry: CIStateEntry
                do { entry = try JSONDecoder().decode(CIStateEntry.self, from: body) } catch let e as DecodingError {
                    throw APIError.badRequest("invalid cistate body: \(describe(e))")
                } catch {
                    throw APIError.badRequest("invalid cistate body: \(error)")
                }
                guard !entry.instance.isEmpty else { throw APIError.badRequest("instance must not be empty") }
                guard ["MASTER", "BACKUP"].contains(entry.state.uppercased()) else {
                    throw APIError.badRequest("state '\(entry.state)' is not MASTER or BACKUP")
                }
                if let vip = entry.vip, IPv4Address(vip) == nil {
                    throw APIError.badRequest("vip '\(vip)' is not an IPv4 address")
                }
                try await controller.setCIState(entry)
                return try json(["result": "Success"])
            }
        }
        // Prometheus text: what swift-metrics recorded (HA role changes, takeovers) plus the node's
        // JSON-shaped state (status, services, sync, cluster) copied into the registry first.
        router.get(RouterPath(APIRoutes.metrics)) { _, _ -> Response in
            let text = await TandemMetrics.scrape(
                datapath: { await controller.status() },
                services: { await controller.loadBalancers().map(metricsSample) },
                replication: { await controller.sync() },
                cluster: { await controller.cluster() })
            return Response(status: .ok, headers: [.contentType: TandemMetrics.contentType],
                            body: .init(byteBuffer: ByteBuffer(string: text)))
        }
        router.get(RouterPath(APIRoutes.openAPI)) { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "application/json"],
                     body: .init(byteBuffer: ByteBuffer(string: OpenAPIDocument.json)))
        }
        return router
    }

    /// A service's counters as the metrics scrape takes them; an endpoint's `counter` is
    /// "packets:bytes:active" (LoxiLB's form).
    static func metricsSample(_ e: LoadBalancerEntry) -> ServiceSample {
        let a = e.serviceArguments
        let endpoints = e.endpoints.compactMap { ep -> ServiceSample.Endpoint? in
            let parts = (ep.counter ?? "").split(separator: ":")
            guard parts.count == 3, let packets = UInt64(parts[0]), let bytes = UInt64(parts[1]),
                  let active = Int(parts[2]) else { return nil }
            return .init(address: "\(ep.endpointIP):\(ep.targetPort)", packets: packets, bytes: bytes, activeConnections: active)
        }
        return ServiceSample(name: a.name ?? "", vip: a.externalIP, port: a.port, proto: a.protocol_,
                             packets: e.counters?.packets ?? 0, bytes: e.counters?.bytes ?? 0,
                             newConnections: e.counters?.newConnections ?? 0,
                             activeConnections: e.counters?.activeConnections ?? 0, endpoints: endpoints)
    }

    public static func makeApplication(controller: some LoadBalancerController, host: String, port: Int,
                                       logger: Logger) -> some ApplicationProtocol {
        Application(router: makeRouter(controller: controller),
                    configuration: .init(address: .hostname(host, port: port), serverName: "tandem"),
                    logger: logger)
    }

    static func collect(_ request: Request) async throws -> Data {
        do {
            var buf = try await request.body.collect(upTo: maxBodyBytes)
            return Data(buf.readBytes(length: buf.readableBytes) ?? [])
        } catch {
            throw APIError(.contentTooLarge, "request body is larger than \(maxBodyBytes) bytes")
        }
    }

    static func answer(_ body: () async throws -> Response) async -> Response {
        do {
            return try await body()
        } catch let e as APIError {
            return (try? json(APIErrorBody(code: Int(e.status.code), message: e.message), status: e.status))
                ?? Response(status: e.status)
        } catch let e as ServiceError {
            return (try? json(APIErrorBody(code: 400, message: e.message), status: .badRequest))
                ?? Response(status: .badRequest)
        } catch {
            return (try? json(APIErrorBody(code: 500, message: "\(error)"), status: .internalServerError))
                ?? Response(status: .internalServerError)
        }
    }

    static func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) throws -> Response {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        let data = try enc.encode(value)
        return Response(status: status, headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func describe(_ e: DecodingError) -> String {
        switch e {
        case .keyNotFound(let k, _): return "missing field '\(k.stringValue)'"
        case .typeMismatch(_, let c), .valueNotFound(_, let c):
            return "wrong type at '\(c.codingPath.map(\.stringValue).joined(separator: "."))': \(c.debugDescription)"
        case .dataCorrupted(let c):
            let path = c.codingPath.map(\.stringValue).joined(separator: ".")
            return path.isEmpty ? "not valid JSON" : "bad value at '\(path)': \(c.debugDescription)"
        @unknown default: return "\(e)"
        }
    }
}
