import Foundation
import Testing
@testable import TandemAPI
import TandemAPIModels
@testable import TandemCore

extension Privileged {
    /// External endpoint verdicts (LoxiLB's POST config/endpointhoststate) against the real daemon.
    @Suite(.timeLimit(.minutes(3))) struct HostState {
        func hits(_ bed: TestBed, port: Int = 56002, count: Int = 20) throws -> [String: Int] {
            let urls = [String](repeating: "http://10.0.10.143:\(port)/whoami", count: count)
            let r = try bed.exec("client", ["curl", "-sS", "-m", "3", "-H", "Connection: close"] + urls, timeout: 60)
            var out: [String: Int] = [:]
            for ep in ["ep1", "ep2"] { out[ep] = r.stdout.components(separatedBy: ep).count - 1 }
            return out
        }

        func states(_ node: NodeDaemon) throws -> [String: String] {
            var out: [String: String] = [:]
            for e in try ControlPlane().rules(node) where e.serviceArguments.port == 56002 {
                for ep in e.endpoints { out[ep.endpointIP] = ep.state ?? "" }
            }
            return out
        }

        @Test func aRedHostLeavesTheRotationAcrossARestartAndGreenBringsItBack() throws {
            let bed = try TestBed()
            defer { bed.down() }
            let statePath = FileManager.default.temporaryDirectory.appendingPathComponent("\(bed.name)-hosts.jsonl").path
            defer { try? FileManager.default.removeItem(atPath: statePath) }
            let cp = ControlPlane()
            var node: NodeDaemon? = try NodeDaemon(bed: bed, config: nodeConfig(), statePath: statePath)
            defer { node?.stop() }
            guard let first = node else { return }
            let before = try hits(bed)
            #expect((before["ep1"] ?? 0) > 0 && (before["ep2"] ?? 0) > 0, "\(before)")

            // Refused, and nothing changes: a bad state, a bad address, a host no rule has.
            for (body, status) in [(#"{"hostName":"10.0.10.21","state":"purple"}"#, "400"),
                                   (#"{"hostName":"ten","state":"red"}"#, "400"),
                                   (#"{"hostName":"10.0.10.99","state":"red"}"#, "404"),
                                   (#"{"state":"red"}"#, "400")] {
                let a = try cp.call(first, "POST", APIRoutes.endpointHostState, body: body)
                #expect(a.status == status && a.result != "Success", "\(body): \(a.status) \(a.body)")
            }
            #expect(try states(first) == ["10.0.10.21": "active", "10.0.10.22": "active"])

            let red = try cp.call(first, "POST", APIRoutes.endpointHostState, body: #"{"hostName":"10.0.10.21","state":"red"}"#)
            #expect(red.result == "Success" && red.status == "200", "\(red.body)")
            #expect(try states(first) == ["10.0.10.21": "inactive", "10.0.10.22": "active"])
            let during = try hits(bed)
            #expect(during["ep1"] == 0 && during["ep2"] == 20, "\(during)")

            // The verdict is kept in the state file: after a restart ep1 is still out.
            first.stop()
            node = nil
            let again = try NodeDaemon(bed: bed, config: nodeConfig(), statePath: statePath)
            node = again
            #expect(try states(again)["10.0.10.21"] == "inactive")
            let afterRestart = try hits(bed)
            #expect(afterRestart["ep1"] == 0 && afterRestart["ep2"] == 20, "\(afterRestart)")

            // yellow (degraded) and green both serve.
            let yellow = try cp.call(again, "POST", APIRoutes.endpointHostState, body: #"{"hostName":"10.0.10.21","state":"yellow"}"#)
            #expect(yellow.result == "Success")
            #expect((try hits(bed)["ep1"] ?? 0) > 0)
            let green = try cp.call(again, "POST", APIRoutes.endpointHostState, body: #"{"hostName":"10.0.10.21","state":"GREEN"}"#)
            #expect(green.result == "Success")
            let back = try hits(bed)
            #expect((back["ep1"] ?? 0) > 0 && (back["ep2"] ?? 0) > 0, "\(back)")
            #expect(try states(again) == ["10.0.10.21": "active", "10.0.10.22": "active"])
        }

        @Test func resetOnEndpointDownIsStoredAndListedBack() throws {
            let bed = try TestBed()
            defer { bed.down() }
            let cp = ControlPlane()
            let node = try NodeDaemon(bed: bed, config: nodeConfig())
            defer { node.stop() }
            let created = try node.cli(["create", "lb", "10.0.10.143", "--tcp", "57300:80", "--endpoints", "10.0.10.21:1",
                                        "--mode", "fullnat", "--reset-on-down"])
            #expect(created.ok, "\(created.stderr)")
            let listed = try cp.call(node, "GET", APIRoutes.loadBalancerAll)
            let rule = try JSONDecoder().decode(LoadBalancerList.self, from: Data(listed.body.utf8)).lbAttr
                .first { $0.serviceArguments.port == 57300 }
            #expect(rule?.serviceArguments.resetOnEndpointDown == true, "\(listed.body)")
            let plain = try JSONDecoder().decode(LoadBalancerList.self, from: Data(listed.body.utf8)).lbAttr
                .first { $0.serviceArguments.port == 56002 }
            #expect(plain?.serviceArguments.resetOnEndpointDown == nil)
        }
    }
}
