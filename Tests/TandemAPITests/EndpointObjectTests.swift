import Foundation
import Hummingbird
import Logging
import NIOCore
import NIOEmbedded
import Testing
import TandemCore
@testable import TandemAPI
import TandemAPIModels

/// LoxiLB's endpoint objects (`POST/DELETE config/endpoint`, `GET config/endpoint/all`): the
/// request and answer shapes LoxiLB's swagger model and loxicmd use, through the real router.
@Suite struct EndpointObjectTests {
    /// What loxicmd's `create endpoint 32.32.32.1 --desc=zone1host --probetype=connect-tcp
    /// --l4port=8080 --period=60 --retries=2` sends (its EndPointMod: hostName, description, ...).
    static let loxicmdBody = #"{"hostName":"32.32.32.1","description":"zone1host","inactiveReTries":2,"probeType":"connect-tcp","probeReq":"","probeResp":"","probeDuration":60,"probePort":8080}"#
    /// LoxiLB's own model (swagger EndPoint), with a name.
    static let loxilbBody = #"{"hostName":"10.0.10.21","name":"10.0.10.21_tcp_80","inactiveReTries":3,"probeType":"http","probeReq":"whoami","probeResp":"ep1","probeDuration":5,"probePort":80}"#

    func object(_ json: String) throws -> EndpointObject {
        try JSONDecoder().decode(EndpointObjectEntry.self, from: Data(json.utf8)).validated()
    }

    @Test func loxicmdsBodyGetsLoxiLBsKey() throws {
        let o = try object(Self.loxicmdBody)
        #expect(o.key == "32.32.32.1_tcp_8080", "connect-tcp folds into tcp, as current LoxiLB names it")
        #expect(o.probeType == "tcp" && o.probePort == 8080 && o.probeDuration == 60 && o.inactiveReTries == 2)
        #expect(o.description == "zone1host")
    }

    @Test func aNameIsTheKeyAndKeysMatchWithoutRegardToCase() throws {
        let o = try object(Self.loxilbBody)
        #expect(o.key == "10.0.10.21_tcp_80" && o.probeType == "http" && o.probeReq == "whoami")
        let go = try object(#"{"HostName":"10.0.10.22","ProbeType":"PING"}"#)
        #expect(go.key == "10.0.10.22_ping_0" && go.probeType == "ping")
        // What the state file keeps recreates the same object.
        let again = try JSONDecoder().decode(EndpointObjectEntry.self, from: JSONEncoder().encode(o.entry)).validated()
        #expect(again == o)
    }

    @Test func anObjectGovernsTheRuleEndpointsOfItsKey() {
        let ep = Endpoint(ip: IPv4Address(10, 0, 10, 21), port: 80)
        #expect(EndpointObject.ruleKey(ep, proto: .tcp) == "10.0.10.21_tcp_80")
        #expect(EndpointObject.ruleKey(ep, proto: .udp) == "10.0.10.21_udp_80")
        // An unnamed http object has its own key: it governs no rule (LoxiLB's rule).
        #expect(EndpointObject.key(host: ep.ip, probeType: "http", probePort: 80) != EndpointObject.ruleKey(ep, proto: .tcp))
    }

    @Test(arguments: [
        (#"{"probeType":"tcp","probePort":80}"#, "hostName"),
        (#"{"hostName":"10.0.10.300","probeType":"tcp","probePort":80}"#, "host-parse error"),
        (#"{"hostName":"10.0.10.21","probeType":"sctp","probePort":80}"#, "sctp"),
        (#"{"hostName":"10.0.10.21","probeType":"icmp"}"#, "host-args unknown probe type 'icmp'"),
        (#"{"hostName":"10.0.10.21"}"#, "host-args unknown probe type"),
        (#"{"hostName":"10.0.10.21","probeType":"tcp"}"#, "host-args unknown probe port"),
        (#"{"hostName":"10.0.10.21","probeType":"http","probePort":0}"#, "host-args unknown probe port"),
        (#"{"hostName":"10.0.10.21","probeType":"ping","probePort":80}"#, "probePort 80 needs"),
        (#"{"hostName":"10.0.10.21","probeType":"tcp","probePort":70000}"#, "probePort must be"),
        (#"{"hostName":"10.0.10.21","probeType":"tcp","probePort":80,"inactiveReTries":101}"#, "inactiveReTries"),
        (#"{"hostName":"10.0.10.21","probeType":"tcp","probePort":80,"probeDuration":90000}"#, "probeDuration"),
        (#"{"hostName":"10.0.10.21","probeType":"http","probePort":80,"probeReq":"/a b"}"#, "probeReq"),
        (#"{"hostName":"10.0.10.21","probeType":"tcp","probePort":80,"probeTimeout":5}"#, "probeTimeout is not a field"),
        (#"{"hostName":"10.0.10.21","probeType":"tcp","probePort":"80"}"#, "probePort"),
        ("not json", "not valid JSON"),
    ])
    func malformedBodiesAreRefusedWithAClearErrorAndNothingChanges(_ body: String, _ expected: String) async throws {
        let node = FakeNode()
        let (status, text) = try await call(node, .post, APIRoutes.endpoint, body: body)
        #expect(status == .badRequest, "\(text)")
        let answer = try JSONDecoder().decode(APIErrorBody.self, from: Data(text.utf8))
        #expect(answer.code == 400 && answer.result.contains(expected), "\(answer.result)")
        #expect(await node.objects.isEmpty)
    }

    @Test func postListDeleteAnswerAsLoxiLB() async throws {
        let node = FakeNode()
        var (status, text) = try await call(node, .post, APIRoutes.endpoint, body: Self.loxilbBody)
        #expect(status == .ok && text == #"{"result":"Success"}"#, "\(text)")
        // The same object again: a success that changes nothing.
        (status, text) = try await call(node, .post, APIRoutes.endpoint, body: Self.loxilbBody)
        #expect(status == .ok && text == #"{"result":"Success"}"#)
        (status, text) = try await call(node, .post, APIRoutes.endpoint, body: Self.loxicmdBody)
        #expect(status == .ok)
        (status, text) = try await call(node, .get, APIRoutes.endpointAll)
        let list = try JSONDecoder().decode(EndpointHostList.self, from: Data(text.utf8)).Attr
        #expect(list.map(\.name) == ["10.0.10.21_tcp_80", "32.32.32.1_tcp_8080"])
        // GET's fields are LoxiLB's EndPointGetEntry names.
        let raw = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        let first = try #require((raw["Attr"] as? [[String: Any]])?.first)
        for field in ["hostName", "name", "inactiveReTries", "probeType", "probeReq", "probeResp", "probeDuration", "probePort",
                      "minDelay", "avgDelay", "maxDelay", "currState"] {
            #expect(first[field] != nil, "\(field) missing from \(first)")
        }

        // loxicmd's delete: the host in the path, name, probe_type and probe_port in the query.
        (status, text) = try await call(node, .delete, APIRoutes.endpointDeletePath(host: "10.0.10.21", name: "10.0.10.21_tcp_80",
                                                                                   probeType: "http", probePort: 80))
        #expect(status == .ok && text == #"{"result":"Success"}"#, "\(text)")
        // Without a name: LoxiLB's key from host, type and port (Go accepts a float port).
        (status, text) = try await call(node, .delete, "/netlox/v1/config/endpoint/epipaddress/32.32.32.1?name=&probe_type=connect-tcp&probe_port=8080.0")
        #expect(status == .ok, "\(text)")
        #expect(await node.objects.isEmpty)
        // Gone: LoxiLB's "host-notfound error", as a 404.
        (status, text) = try await call(node, .delete, APIRoutes.endpointDeletePath(host: "10.0.10.21", probeType: "tcp", probePort: 80))
        #expect(status == .notFound && text.contains("host-notfound error"), "\(text)")
        // LoxiLB's older path form.
        _ = try await call(node, .post, APIRoutes.endpoint, body: #"{"hostName":"10.0.10.22","probeType":"ping"}"#)
        (status, text) = try await call(node, .delete, "/netlox/v1/config/endpoint/epipaddress/10.0.10.22/probetype/ping/probeport/0")
        #expect(status == .ok, "\(text)")
        // Malformed deletes change nothing.
        _ = try await call(node, .post, APIRoutes.endpoint, body: Self.loxicmdBody)
        for path in ["/netlox/v1/config/endpoint/epipaddress/32.32.32.1?probe_type=tcp&probe_port=http",
                     "/netlox/v1/config/endpoint/epipaddress/32.32.32.1?probe_type=tcp&probe_port=-1",
                     "/netlox/v1/config/endpoint/epipaddress/nohost?probe_type=tcp&probe_port=8080",
                     "/netlox/v1/config/endpoint/epipaddress/32.32.32.1"] {
            (status, text) = try await call(node, .delete, path)
            #expect(status == .badRequest, "\(path): \(text)")
        }
        #expect(await node.objects.keys.sorted() == ["32.32.32.1_tcp_8080"])
    }

    // MARK: Through the router

    actor FakeNode: LoadBalancerController {
        var objects: [String: EndpointObject] = [:]

        func apply(_ request: LoadBalancerRequest) async throws {}
        func delete(_ key: ServiceKey) async throws {}
        func loadBalancers() async -> [LoadBalancerEntry] { [] }
        func conntrack() async -> [ConntrackEntry] { [] }
        func status() async -> [String: UInt64] { [:] }
        func setEndpointObject(_ object: EndpointObject) async throws { objects[object.key] = object }
        func deleteEndpointObject(key: String) async throws {
            guard objects.removeValue(forKey: key) != nil else {
                throw APIError.notFound("host-notfound error: no endpoint object '\(key)'")
            }
        }
        func endpointHosts() async -> [EndpointHostEntry] {
            objects.keys.sorted().compactMap { k in
                objects[k].map { o in
                    EndpointHostEntry(hostName: o.host.description, name: o.key, inactiveReTries: Int(o.inactiveReTries),
                                      probeType: o.probeType, probeReq: o.probeReq, probeResp: o.probeResp,
                                      probeDuration: Int(o.probeDuration), probePort: Int(o.probePort), currState: "unknown")
                }
            }
        }
    }

    final class Collected: @unchecked Sendable {
        var buffer = ByteBuffer()
    }

    struct CollectingWriter: ResponseBodyWriter {
        let into: Collected
        mutating func write(_ buffer: ByteBuffer) async throws {
            var b = buffer
            into.buffer.writeBuffer(&b)
        }
        consuming func finish(_ trailingHeaders: HTTPFields?) async throws {}
    }

    func call(_ node: FakeNode, _ method: HTTPRequest.Method, _ path: String, body: String = "") async throws
        -> (HTTPResponse.Status, String)
    {
        let responder = APIServer.makeRouter(controller: node).buildResponder()
        let channel = EmbeddedChannel()
        let context = BasicRequestContext(source: .init(channel: channel, logger: Logger(label: "endpoint-test")))
        let request = Request(head: HTTPRequest(method: method, scheme: "http", authority: "localhost", path: path),
                              body: RequestBody(buffer: ByteBuffer(string: body)))
        let response = try await responder.respond(to: request, context: context)
        let collected = Collected()
        try await response.body.write(CollectingWriter(into: collected))
        return (response.status, String(buffer: collected.buffer))
    }
}
