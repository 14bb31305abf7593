import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import NIOCore
import TandemAPIModels
import TandemCore
import TandemHA
import TandemServiceSync
import TandemMetrics
import TandemSync
import TandemStatus

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
    /// Carries out a POST to config/loadbalancer: create; the same rule again (a success, changing
    /// nothing); a changed rule (replaced in place, flows kept); attach or detach endpoints.
    /// Throws APIError (400 invalid, 404 missing, 409 conflict) and changes nothing on error.
    func apply(_ request: LoadBalancerRequest) async throws
    /// Deletes a service. Deleting one that was already deleted is a success (kube-loxilb and
    /// peers replay deletes); one that never existed is a 404.
    func delete(_ key: ServiceKey) async throws
    /// Deletes every service of that name (LoxiLB's DELETE config/loadbalancer/name/{name}).
    func delete(named name: String) async throws
    func loadBalancers() async -> [LoadBalancerEntry]
    /// Every endpoint host with its probe settings and state (loxicmd's `get ep`).
    func endpointHosts() async -> [EndpointHostEntry]
    func conntrack() async -> [ConntrackEntry]
    /// Free-form status for /netlox/v1/status: datapath counters and the like.
    func status() async -> [String: UInt64]
    /// Connection-table replication: sync state, peers, counters; nil when not clustered.
    func sync() async -> ReplicationStatus?
    /// Kernel conntrack table replication (`conntrack:` in the config); nil when it is off.
    func kernelSync() async -> ReplicationStatus?
    /// Membership and elections; nil when not clustered.
    func cluster() async -> HAStatus?
    /// Service sharing: this node's service digest beside each peer's; nil when not shared.
    func serviceSync() async -> ServiceSyncStatus?
    /// An external verdict on an endpoint host (LoxiLB's endpointhoststate); throws APIError.
    func setEndpointHostState(_ entry: EndpointHostStateEntry) async throws
    /// LoxiLB's endpoint object (`POST config/endpoint`): created, or replaced when its key exists;
    /// throws APIError (400 a probe this node cannot run, 403 too many) and changes nothing then.
    func setEndpointObject(_ object: EndpointObject) async throws
    /// Deletes the endpoint object with this key; 404 (LoxiLB's "host-notfound") when none has it.
    func deleteEndpointObject(key: String) async throws
    /// kube-loxilb's cistate: each HA instance's role on this node; nil when not clustered.
    func ciStates() async -> [CIStateEntry]?
    /// Sets an instance's role from outside; throws APIError (400 bad state or instance, 404 not clustered).
    func setCIState(_ entry: CIStateEntry) async throws
    /// Stops the daemon after the answer: `release` detaches the datapath and leaves the cluster
    /// (peers elect at once); otherwise, with a pinned datapath, a graceful restart's exit.
    func stopNode(release: Bool) async throws
    /// The BGP speaker; nil when the node has no bgp section.
    func bgp() async -> BGPStatus?
    /// Withdraws (true) or restores (false) every BGP announcement; throws APIError.notFound
    /// without BGP.
    func drain(_ on: Bool) async throws -> BGPStatus
}

extension LoadBalancerController {
    public func stopNode(release: Bool) async throws {
        throw APIError.notFound("this server cannot stop its node")
    }
    public func delete(named name: String) async throws {
        let keys = await loadBalancers().filter { $0.serviceArguments.name == name }
        guard !keys.isEmpty else { throw APIError.notFound("no-rule error: no service is named '\(name)'") }
        for e in keys {
            guard let ip = IPv4Address(e.serviceArguments.externalIP), let proto = L4Protocol(name: e.serviceArguments.protocol_),
                  let port = UInt16(exactly: e.serviceArguments.port) else { continue }
            try await delete(ServiceKey(vip: ip, port: port, proto: proto))
        }
    }
    public func endpointHosts() async -> [EndpointHostEntry] { EndpointHostEntry.from(await loadBalancers()) }
    public func sync() async -> ReplicationStatus? { nil }
    public func kernelSync() async -> ReplicationStatus? { nil }
    public func cluster() async -> HAStatus? { nil }
    public func bgp() async -> BGPStatus? { nil }
    public func drain(_ on: Bool) async throws -> BGPStatus {
        throw APIError.notFound("this node does not speak BGP (no bgp section in its config)")
    }
    public func serviceSync() async -> ServiceSyncStatus? { nil }
    public func setEndpointHostState(_ entry: EndpointHostStateEntry) async throws {
        throw APIError.notFound("endpoint host states are not kept by this controller")
    }
    public func setEndpointObject(_ object: EndpointObject) async throws {
        throw APIError.notFound("endpoint objects are not kept by this controller")
    }
    public func deleteEndpointObject(key: String) async throws {
        throw APIError.notFound("host-notfound error: no endpoint object '\(key)'")
    }
    public func ciStates() async -> [CIStateEntry]? { nil }
    public func setCIState(_ entry: CIStateEntry) async throws {
        throw APIError.notFound("this node runs no election (no cluster peers, or cluster.election: false); replication is shown by tandem get sync")
    }
}

/// Builds the Hummingbird application serving the API. It is a swift-service-lifecycle Service.
public enum APIServer {
    public static let maxBodyBytes = 1 << 20

    public static func makeRouter(controller: some LoadBalancerController, token: APIToken? = nil,
                                  authCounters: APIAuthCounters = APIAuthCounters()) -> Router<BasicRequestContext> {
        let router = Router()
        // Before every route: middleware applies only to routes added after it.
        if let token { router.add(middleware: TokenMiddleware(token: token, counters: authCounters)) }
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
                let request: LoadBalancerRequest
                do throws(ServiceError) { request = try entry.toRequest() } catch { throw APIError(.badRequest, error.message) }
                try await controller.apply(request)
                return try json(APIErrorBody.success)
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
                return try json(APIErrorBody.success)
            }
        }
        router.delete("/netlox/v1/config/loadbalancer/name/:name") { _, context -> Response in
            await answer {
                let name = context.parameters.get("name") ?? ""
                guard !name.isEmpty else { throw APIError.badRequest("the rule name must not be empty") }
                try await controller.delete(named: name)
                return try json(APIErrorBody.success)
            }
        }
        router.get(RouterPath(APIRoutes.endpointAll)) { _, _ -> Response in
            await answer { try json(EndpointHostList(await controller.endpointHosts())) }
        }
        router.post(RouterPath(APIRoutes.endpoint)) { request, _ -> Response in
            await answer {
                let body = try await collect(request)
                let entry: EndpointObjectEntry
                do { entry = try JSONDecoder().decode(EndpointObjectEntry.self, from: body) } catch let e as DecodingError {
                    throw APIError.badRequest("malformed endpoint body: \(describe(e))")
                } catch {
                    throw APIError.badRequest("malformed endpoint body: \(error)")
                }
                let object: EndpointObject
                do throws(ServiceError) { object = try entry.validated() } catch { throw APIError.badRequest(error.message) }
                try await controller.setEndpointObject(object)
                return try json(APIErrorBody.success)
            }
        }
        // LoxiLB's delete: the host in the path, the rest of the key in the query.
        router.delete("/netlox/v1/config/endpoint/epipaddress/:ip") { request, context -> Response in
            await answer {
                let q = request.uri.queryParameters
                return try await deleteEndpointObject(controller, host: context.parameters.get("ip") ?? "",
                                                      name: q["name"].map(String.init), type: q["probe_type"].map(String.init),
                                                      port: q["probe_port"].map(String.init))
            }
        }
        // LoxiLB's older path form (loxicmd before the query parameters).
        router.delete("/netlox/v1/config/endpoint/epipaddress/:ip/probetype/:type/probeport/:port") { _, context -> Response in
            await answer {
                try await deleteEndpointObject(controller, host: context.parameters.get("ip") ?? "", name: nil,
                                               type: context.parameters.get("type"), port: context.parameters.get("port"))
            }
        }
        // kube-loxilb's liveness poll (every 2 s): any answer means the node is up.
        router.get(RouterPath(APIRoutes.base)) { _, _ -> Response in
            await answer { try json(APIErrorBody.success) }
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
                    throw APIError.notFound("the load balancer's connections are not replicated on this node (no cluster peers, or datapath: false; the kernel table's replication is GET \(APIRoutes.syncConntrack))")
                }
                return try json(s)
            }
        }
        router.get(RouterPath(APIRoutes.syncConntrack)) { _, _ -> Response in
            await answer {
                guard let s = await controller.kernelSync() else {
                    throw APIError.notFound("kernel conntrack sync is not configured on this node (no conntrack: section, or it is disabled)")
                }
                return try json(s)
            }
        }
        router.get(RouterPath(APIRoutes.cluster)) { _, _ -> Response in
            await answer {
                guard let s = await controller.cluster() else {
                    throw APIError.notFound("this node runs no election (no cluster peers, or cluster.election: false); replication is shown by tandem get sync")
                }
                return try json(s)
            }
        }
        router.get(RouterPath(APIRoutes.clusterServices)) { _, _ -> Response in
            await answer {
                guard let s = await controller.serviceSync() else {
                    throw APIError.notFound("services are not shared on this node (no cluster peers, or cluster.shareServices is false)")
                }
                return try json(s)
            }
        }
        router.get(RouterPath(APIRoutes.ciStateAll)) { _, _ -> Response in
            await answer {
                guard let s = await controller.ciStates() else {
                    throw APIError.notFound("this node runs no election (no cluster peers, or cluster.election: false); replication is shown by tandem get sync")
                }
                let flows = await controller.sync()?.inSync ?? true
                let kernel = await controller.kernelSync()?.inSync ?? true
                let inSync = flows && kernel
                return try json(CIStateList(s.map {
                    CIStateGetEntry(instance: $0.instance, state: $0.state, vip: $0.vip ?? "0.0.0.0", sync: inSync ? 1 : 0)
                }))
            }
        }
        router.post(RouterPath(APIRoutes.endpointHostState)) { request, _ -> Response in
            await answer {
                let body = try await collect(request)
                let entry: EndpointHostStateEntry
                do { entry = try JSONDecoder().decode(EndpointHostStateEntry.self, from: body) } catch let e as DecodingError {
                    throw APIError.badRequest("invalid endpointhoststate body: \(describe(e))")
                } catch {
                    throw APIError.badRequest("invalid endpointhoststate body: \(error)")
                }
                guard IPv4Address(entry.hostName) != nil else {
                    throw APIError.badRequest("hostName '\(entry.hostName)' is not an IPv4 address (an endpoint's endpointIP)")
                }
                guard EndpointHostStateEntry.states.contains(entry.state.lowercased()) else {
                    throw APIError.badRequest("state '\(entry.state)' is not green, yellow or red")
                }
                try await controller.setEndpointHostState(entry)
                return try json(APIErrorBody.success)
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
                return try json(APIErrorBody.success)
            }
        }
        router.post(RouterPath(APIRoutes.nodeStop)) { request, _ -> Response in
            await answer {
                let body = try await collect(request)
                var entry = NodeStopEntry(release: false)
                if !body.isEmpty {
                    do { entry = try JSONDecoder().decode(NodeStopEntry.self, from: body) } catch let e as DecodingError {
                        throw APIError.badRequest("invalid node stop body: \(describe(e))")
                    } catch {
                        throw APIError.badRequest("invalid node stop body: \(error)")
                    }
                }
                try await controller.stopNode(release: entry.release)
                return try json(APIErrorBody.success)
            }
        }
        router.post(RouterPath(APIRoutes.nodeDrain)) { request, _ -> Response in
            await answer {
                let body = try await collect(request)
                var entry = NodeDrainEntry(drain: true)
                if !body.isEmpty {
                    do { entry = try JSONDecoder().decode(NodeDrainEntry.self, from: body) } catch let e as DecodingError {
                        throw APIError.badRequest("invalid node drain body: \(describe(e))")
                    } catch {
                        throw APIError.badRequest("invalid node drain body: \(error)")
                    }
                }
                return try json(try await controller.drain(entry.drain))
            }
        }
        router.get(RouterPath(APIRoutes.bgp)) { _, _ -> Response in
            await answer {
                guard let s = await controller.bgp() else {
                    throw APIError.notFound("this node does not speak BGP (no bgp section in its config)")
                }
                return try json(s)
            }
        }
        // Prometheus text: what swift-metrics recorded (HA role changes, takeovers) plus the node's
        // JSON-shaped state (status, services, sync, cluster) copied into the registry first.
        router.get(RouterPath(APIRoutes.metrics)) { _, _ -> Response in
            let text = await TandemMetrics.scrape(
                datapath: { await controller.status() },
                services: { await controller.loadBalancers().map(metricsSample) },
                replication: { await controller.sync() },
                kernelReplication: { await controller.kernelSync() },
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

    /// The key LoxiLB deletes by: `name` when given, else `host_probeType_probePort` (a missing
    /// port is 0, as Go's zero value).
    static func deleteEndpointObject(_ controller: some LoadBalancerController, host: String, name: String?, type: String?,
                                     port: String?) async throws -> Response {
        guard let ip = IPv4Address(host) else { throw APIError.badRequest("host-parse error: '\(host)' is not an IPv4 address") }
        let key: String
        if let name, !name.isEmpty {
            key = name
        } else {
            let t = EndpointObject.normalize(type: type ?? "")
            guard !t.isEmpty else {
                throw APIError.badRequest("name, or probe_type and probe_port, must say which endpoint object of \(ip) to delete")
            }
            // Go parses probe_port as a float64 and truncates it; "8080.0" works there too.
            let text = port ?? "0"
            guard let value = Double(text), value.isFinite, value >= 0, value <= 65535, value == value.rounded(.down) else {
                throw APIError.badRequest("probe_port '\(text)' is not a port (0-65535)")
            }
            key = EndpointObject.key(host: ip, probeType: t, probePort: UInt16(value))
        }
        try await controller.deleteEndpointObject(key: key)
        return try json(APIErrorBody.success)
    }

    /// A service's counters as the metrics scrape takes them; an endpoint's `counter` is
    /// "packets:bytes:active" (LoxiLB's form).
    static func metricsSample(_ e: LoadBalancerEntry) -> ServiceSample {
        let a = e.serviceArguments
        let endpoints = e.endpoints.compactMap { ep -> ServiceSample.Endpoint? in
            let parts = (ep.counter ?? "").split(separator: ":")
            guard parts.count == 3, let packets = UInt64(parts[0]), let bytes = UInt64(parts[1]),
                  let active = Int(parts[2]) else { return nil }
            return .init(address: "\(ep.endpointIP):\(ep.targetPort)", packets: packets, bytes: bytes, activeConnections: active,
                         inRotation: ep.state.map { $0 == "active" }, healthTransitions: ep.healthTransitions)
        }
        var sample = ServiceSample(name: a.name ?? "", vip: a.externalIP, port: a.port, proto: a.protocol_,
                                   packets: e.counters?.packets ?? 0, bytes: e.counters?.bytes ?? 0,
                                   newConnections: e.counters?.newConnections ?? 0,
                                   activeConnections: e.counters?.activeConnections ?? 0, endpoints: endpoints)
        sample.deniedSources = e.counters?.deniedSources ?? 0
        sample.noEndpoint = e.counters?.noEndpoint ?? 0
        return sample
    }

    /// The API server: plain HTTP, or HTTPS when `tls` is given; with a token, every route but
    /// the liveness GET requires it.
    public static func makeApplication(controller: some LoadBalancerController, host: String, port: Int,
                                       security: APISecurity = APISecurity(), logger: Logger) throws -> some ApplicationProtocol {
        let router = makeRouter(controller: controller, token: security.token, authCounters: security.counters)
        let configuration = ApplicationConfiguration(address: .hostname(host, port: port), serverName: "tandem")
        let server: HTTPServerBuilder
        if let tls = security.tls {
            server = try .tls(.http1(), tlsConfiguration: tls.serverConfiguration())
        } else {
            server = .http1()
        }
        return Application(router: router, server: server, configuration: configuration, logger: logger)
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
            return errorResponse(status: e.status, reason: e.message)
        } catch let e as ServiceError {
            return errorResponse(status: .badRequest, reason: e.message)
        } catch {
            return errorResponse(status: .internalServerError, reason: "\(error)")
        }
    }

    /// LoxiLB's error answer: its status code and `{"result": reason, "code", "message"}`.
    static func errorResponse(status: HTTPResponse.Status, reason: String) -> Response {
        (try? json(APIErrorBody(code: Int(status.code), message: reason), status: status)) ?? Response(status: status)
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
