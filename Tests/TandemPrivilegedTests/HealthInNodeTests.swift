import Foundation
import Testing
@testable import TandemAPI
import TandemAPIModels
@testable import TandemCore

extension Privileged {
    /// Probes run by the real daemon: a dead nginx leaves the rotation within a second and comes
    /// back when it is started again.
    @Suite(.timeLimit(.minutes(3))) struct HealthInNode {
        func rule(port: Int, probetype: String, extra: String = "") -> String {
            #"{"serviceArguments":{"externalIP":"10.0.10.143","port":\#(port),"protocol":"tcp","sel":0,"mode":2,"Monitor":true,"probetype":"\#(probetype)","probeport":0,"probereq":"/whoami","proberesp":""\#(extra)},"endpoints":[{"endpointIP":"10.0.10.21","targetPort":80,"weight":1},{"endpointIP":"10.0.10.22","targetPort":80,"weight":1}]}"#
        }

        func endpointStates(_ node: NodeDaemon, port: Int) throws -> [String: String] {
            let a = try ControlPlane().call(node, "GET", APIRoutes.endpointAll)
            let list = try JSONDecoder().decode(EndpointHostList.self, from: Data(a.body.utf8)).Attr
            var out: [String: String] = [:]
            for e in list where e.name.hasSuffix(":\(port)/tcp") { out[e.hostName] = e.currState }
            return out
        }

        func hits(_ bed: TestBed, port: Int, count: Int = 20) throws -> (ep1: Int, ep2: Int, failed: Int) {
            let urls = [String](repeating: "http://10.0.10.143:\(port)/whoami", count: count)
            let r = try bed.exec("client", ["curl", "-sS", "-m", "2", "-H", "Connection: close", "-w", "\n"] + urls, timeout: 60)
            let ep1 = r.stdout.components(separatedBy: "ep1").count - 1
            let ep2 = r.stdout.components(separatedBy: "ep2").count - 1
            return (ep1, ep2, count - ep1 - ep2)
        }

        @Test func aStoppedNginxLeavesTheRotationInUnderASecondAndReturns() throws {
            let bed = try TestBed()
            defer { bed.down() }
            let cp = ControlPlane()
            let node = try NodeDaemon(bed: bed, config: nodeConfig())
            defer { node.stop() }
            // A probe Tandem cannot run is refused up front, naming it.
            let sctp = try cp.call(node, "POST", APIRoutes.loadBalancer, body: rule(port: 57401, probetype: "sctp"))
            #expect(sctp.status == "400" && (sctp.result ?? "").contains("sctp"), "\(sctp.body)")

            let made = try cp.call(node, "POST", APIRoutes.loadBalancer, body: rule(port: 57400, probetype: "http"))
            #expect(made.result == "Success", "\(made.body)")
            let start = Date()
            while Date().timeIntervalSince(start) < 5, try endpointStates(node, port: 57400) != ["10.0.10.21": "up", "10.0.10.22": "up"] {
                Thread.sleep(forTimeInterval: 0.05)
            }
            #expect(try endpointStates(node, port: 57400) == ["10.0.10.21": "up", "10.0.10.22": "up"])
            let steady = try hits(bed, port: 57400)
            #expect(steady.ep1 > 0 && steady.ep2 > 0 && steady.failed == 0, "\(steady)")

            // ep1's nginx stops: refused connections, marked down, no request sent to it after.
            let dir = "/run/tandem-testbed/\(bed.name)/ep1"
            let stopped = try run(["bash", "-c", "kill -TERM $(cat \(dir)/nginx.pid); for i in $(seq 100); do [ -e \(dir)/nginx.pid ] || exit 0; sleep 0.01; done; exit 1"])
            #expect(stopped.ok, "\(stopped.stderr)")
            let killedAt = Date()
            var downAfter: Double?
            while Date().timeIntervalSince(killedAt) < 5 {
                if try endpointStates(node, port: 57400)["10.0.10.21"] == "down" {
                    downAfter = Date().timeIntervalSince(killedAt)
                    break
                }
                Thread.sleep(forTimeInterval: 0.02)
            }
            print("health in node: ep1 marked down \(downAfter.map { String(format: "%.3f s", $0) } ?? "never") after nginx stopped")
            let statesNow = (try? endpointStates(node, port: 57400)) ?? [:]
            #expect(downAfter.map { $0 < 1.0 } == true, "\(statesNow)\n\(node.log.suffix(2000))")
            let during = try hits(bed, port: 57400)
            #expect(during.ep1 == 0 && during.ep2 == 20 && during.failed == 0, "\(during)")
            let listed = try ControlPlane().rules(node).first { $0.serviceArguments.port == 57400 }
            #expect(listed?.endpoints.first { $0.endpointIP == "10.0.10.21" }?.state == "inactive")

            // Started again: back in rotation.
            let started = try run(["ip", "netns", "exec", bed.ns("ep1"), "nginx", "-e", "\(dir)/logs/error.log", "-p", "\(dir)/",
                                   "-c", "\(dir)/nginx.conf"])
            #expect(started.ok, "\(started.stderr)")
            let upAt = Date()
            while Date().timeIntervalSince(upAt) < 5, try endpointStates(node, port: 57400)["10.0.10.21"] != "up" {
                Thread.sleep(forTimeInterval: 0.02)
            }
            #expect(try endpointStates(node, port: 57400)["10.0.10.21"] == "up")
            let back = try hits(bed, port: 57400)
            #expect(back.ep1 > 0 && back.ep2 > 0 && back.failed == 0, "\(back)")
            // get ep shows the probe's outcome and times.
            let table = try node.cli(["get", "ep"])
            #expect(table.stdout.contains("LAST PROBE") && table.stdout.contains("ok: "), "\(table.stdout)")
        }

        /// A graceful restart onto the pinned datapath keeps an endpoint that was down out of
        /// rotation: the new daemon reads the held-down set back from the maps and starts those
        /// probes from down, so no request reaches the dead endpoint while the probes catch up.
        @Test func aRestartKeepsADownEndpointOutOfRotationUntilItsProbesPass() throws {
            let bed = try TestBed()
            defer { bed.down() }
            let fs = try Pinning.BPFFS()
            defer { withExtendedLifetime(fs) {} } // mounted until both daemons are gone
            let cp = ControlPlane()
            let config = nodeConfig(extra: "persistDatapath: true\npinDirectory: \(fs.path)")
            // Two daemons, one after the other, on one state file and log (the first owns both and
            // removes them when the test ends).
            let first = try NodeDaemon(bed: bed, config: config)
            defer { first.stop() }
            let made = try cp.call(first, "POST", APIRoutes.loadBalancer, body: rule(port: 57410, probetype: "http"))
            #expect(made.result == "Success", "\(made.body)")
            let dir = "/run/tandem-testbed/\(bed.name)/ep1"
            let stopped = try run(["bash", "-c", "kill -TERM $(cat \(dir)/nginx.pid); for i in $(seq 100); do [ -e \(dir)/nginx.pid ] || exit 0; sleep 0.01; done; exit 1"])
            #expect(stopped.ok, "\(stopped.stderr)")
            let deadline = Date().addingTimeInterval(5)
            while Date() < deadline, try endpointStates(first, port: 57410)["10.0.10.21"] != "down" {
                Thread.sleep(forTimeInterval: 0.02)
            }
            try #require(try endpointStates(first, port: 57410)["10.0.10.21"] == "down", "ep1 never marked down")

            // SIGTERM with persistDatapath: a graceful restart; the next daemon adopts the maps.
            #expect(first.stop() == 0)
            let node = try NodeDaemon(bed: bed, config: config, statePath: first.statePath)
            defer { node.stop() }
            #expect(node.log.contains("datapath adopted"), "\(node.log.suffix(2000))")
            #expect(node.log.contains("stay down until their probes pass"), "\(node.log.suffix(2000))")
            // At once, before any probe could have failed it again: still down, and no request fails.
            #expect(try endpointStates(node, port: 57410)["10.0.10.21"] == "down")
            let after = try hits(bed, port: 57410)
            #expect(after.ep1 == 0 && after.ep2 == 20 && after.failed == 0, "\(after)")

            // Its nginx back: the probes bring it up as for any down endpoint.
            let started = try run(["ip", "netns", "exec", bed.ns("ep1"), "nginx", "-e", "\(dir)/logs/error.log", "-p", "\(dir)/",
                                   "-c", "\(dir)/nginx.conf"])
            #expect(started.ok, "\(started.stderr)")
            let upBy = Date().addingTimeInterval(5)
            while Date() < upBy, try endpointStates(node, port: 57410)["10.0.10.21"] != "up" {
                Thread.sleep(forTimeInterval: 0.02)
            }
            #expect(try endpointStates(node, port: 57410)["10.0.10.21"] == "up")
            let back = try hits(bed, port: 57410)
            #expect(back.ep1 > 0 && back.ep2 > 0 && back.failed == 0, "\(back)")
        }

        @Test func theCLIsProbeSyntaxReachesTheDaemon() throws {
            let bed = try TestBed()
            defer { bed.down() }
            // The config file's service asks for a probe too.
            let config = nodeConfig().replacingOccurrences(of: "    name: svc\n", with: "    name: svc\n    probe: http:/whoami:200\n")
            #expect(config.contains("probe: http:/whoami:200"))
            let node = try NodeDaemon(bed: bed, config: config)
            defer { node.stop() }
            let fromFile = Date()
            while Date().timeIntervalSince(fromFile) < 5, try endpointStates(node, port: 56002) != ["10.0.10.21": "up", "10.0.10.22": "up"] {
                Thread.sleep(forTimeInterval: 0.05)
            }
            #expect(try endpointStates(node, port: 56002) == ["10.0.10.21": "up", "10.0.10.22": "up"])
            let bad = try node.cli(["create", "lb", "10.0.10.143", "--tcp", "57403:80", "--endpoints", "10.0.10.21:1",
                                    "--mode", "fullnat", "--probe", "http:/whoami:999"])
            #expect(!bad.ok && bad.stderr.contains("999"), "\(bad.stdout) \(bad.stderr)")
            let made = try node.cli(["create", "lb", "10.0.10.143", "--tcp", "57402:80", "--endpoints", "10.0.10.21:1,10.0.10.22:1",
                                     "--mode", "fullnat", "--probe", "http:/whoami:200"])
            #expect(made.ok, "\(made.stderr)")
            let start = Date()
            while Date().timeIntervalSince(start) < 5, try endpointStates(node, port: 57402) != ["10.0.10.21": "up", "10.0.10.22": "up"] {
                Thread.sleep(forTimeInterval: 0.05)
            }
            #expect(try endpointStates(node, port: 57402) == ["10.0.10.21": "up", "10.0.10.22": "up"])
            let listed = try ControlPlane().rules(node).first { $0.serviceArguments.port == 57402 }
            #expect(listed?.serviceArguments.probe == "http:/whoami:200" && listed?.serviceArguments.monitor == true)
        }
    }
}
