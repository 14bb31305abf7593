import Foundation
import Testing
@testable import TandemAPI
import TandemAPIModels
@testable import TandemCore

extension Privileged {
    /// LoxiLB's endpoint objects in a real daemon: an object under a monitored rule endpoint's
    /// key supplies that endpoint's probe (LoxiLB's key rule), survives a restart, and its delete
    /// gives the rule its own probe back; an object with another key is probed on its own.
    @Suite(.timeLimit(.minutes(3))) struct EndpointObjects {
        func entries(_ node: NodeDaemon) throws -> [EndpointHostEntry] {
            let a = try ControlPlane().call(node, "GET", APIRoutes.endpointAll)
            return try JSONDecoder().decode(EndpointHostList.self, from: Data(a.body.utf8)).Attr
        }

        /// The rule's entry for a host (service 56002), or an object's entry by name.
        func rule(_ node: NodeDaemon, _ host: String) throws -> EndpointHostEntry? {
            try entries(node).first { $0.hostName == host && $0.name.hasSuffix(":56002/tcp") }
        }

        func object(_ node: NodeDaemon, _ name: String) throws -> EndpointHostEntry? {
            try entries(node).first { $0.name == name }
        }

        func waitFor(_ seconds: Double, _ check: () throws -> Bool) -> Bool {
            let start = Date()
            while Date().timeIntervalSince(start) < seconds {
                if (try? check()) == true { return true }
                Thread.sleep(forTimeInterval: 0.05)
            }
            return false
        }

        @Test func anObjectUnderARuleEndpointsKeySetsItsProbe() throws {
            let bed = try TestBed()
            defer { bed.down() }
            let cp = ControlPlane()
            // The rule probes with tcp connects: both endpoints are up.
            let config = nodeConfig().replacingOccurrences(of: "    name: svc\n", with: "    name: svc\n    probe: tcp\n")
            var node = try NodeDaemon(bed: bed, config: config)
            defer { node.stop() }
            #expect(waitFor(5) { try rule(node, "10.0.10.21")?.currState == "up" && rule(node, "10.0.10.22")?.currState == "up" })

            // An http probe of a path nginx answers 404 under ep1's rule key: ep1 goes down.
            let bad = #"{"hostName":"10.0.10.21","name":"10.0.10.21_tcp_80","probeType":"http","probePort":80,"probeReq":"nope","probeResp":"","probeDuration":0,"inactiveReTries":0}"#
            let posted = try cp.call(node, "POST", APIRoutes.endpoint, body: bad)
            #expect(posted.status == "200" && posted.result == "Success", "\(posted.body)")
            #expect(waitFor(5) { try rule(node, "10.0.10.21")?.currState == "down" }, "\(String(describing: try? rule(node, "10.0.10.21")))")
            let governed = try #require(try rule(node, "10.0.10.21"))
            #expect(governed.probeObject == "10.0.10.21_tcp_80" && governed.probeType == "http" && governed.probeReq == "nope")
            #expect(try rule(node, "10.0.10.22")?.currState == "up", "ep2 keeps the rule's own probe")
            #expect(try ControlPlane().rules(node).first?.endpoints.first { $0.endpointIP == "10.0.10.21" }?.state == "inactive")
            // Listed on its own too, probed with the same settings.
            #expect(waitFor(5) { try object(node, "10.0.10.21_tcp_80")?.currState == "down" })

            // An unnamed http object gets LoxiLB's key 10.0.10.22_http_80: it governs no rule.
            let other = #"{"hostName":"10.0.10.22","probeType":"http","probePort":80,"probeReq":"nope"}"#
            #expect(try cp.call(node, "POST", APIRoutes.endpoint, body: other).status == "200")
            #expect(waitFor(5) { try object(node, "10.0.10.22_http_80")?.currState == "down" })
            #expect(try rule(node, "10.0.10.22")?.currState == "up" && rule(node, "10.0.10.22")?.probeObject == nil)

            // A malformed object is refused and changes nothing.
            let refused = try cp.call(node, "POST", APIRoutes.endpoint, body: #"{"hostName":"10.0.10.21","name":"10.0.10.21_tcp_80","probeType":"sctp","probePort":80}"#)
            #expect(refused.status == "400" && (refused.result ?? "").contains("sctp"), "\(refused.body)")
            #expect(try rule(node, "10.0.10.21")?.probeType == "http")

            // Kept across a restart.
            let statePath = node.statePath
            #expect(node.stop() == 0)
            node = try NodeDaemon(bed: bed, config: config, statePath: statePath)
            defer { node.removeState() }
            #expect(waitFor(5) { try rule(node, "10.0.10.21")?.currState == "down" && rule(node, "10.0.10.21")?.probeObject == "10.0.10.21_tcp_80" })

            // Replaced (LoxiLB: a POST to an existing key replaces it): a path nginx serves.
            let good = bad.replacingOccurrences(of: #""probeReq":"nope""#, with: #""probeReq":"whoami""#)
            #expect(try cp.call(node, "POST", APIRoutes.endpoint, body: good).status == "200")
            #expect(waitFor(5) { try rule(node, "10.0.10.21")?.currState == "up" })

            // loxicmd's delete: the rule's own tcp probe again.
            let gone = try cp.call(node, "DELETE", APIRoutes.endpointDeletePath(host: "10.0.10.21", name: "10.0.10.21_tcp_80",
                                                                              probeType: "http", probePort: 80))
            #expect(gone.status == "200" && gone.result == "Success", "\(gone.body)")
            #expect(waitFor(5) { try rule(node, "10.0.10.21")?.probeObject == nil && rule(node, "10.0.10.21")?.currState == "up" })
            #expect(try object(node, "10.0.10.21_tcp_80") == nil)
            let again = try cp.call(node, "DELETE", APIRoutes.endpointDeletePath(host: "10.0.10.21", name: "10.0.10.21_tcp_80"))
            #expect(again.status == "404" && (again.result ?? "").contains("host-notfound"), "\(again.body)")
        }
    }
}
