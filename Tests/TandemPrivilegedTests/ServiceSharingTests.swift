import Foundation
import Testing
@testable import TandemAPI
import TandemAPIModels
@testable import TandemCore
import TandemServiceSync
import TandemStatus

extension Privileged {
    /// Service sharing between two real daemons (proto/SPEC.md §14): one write, both nodes.
    @Suite(.timeLimit(.minutes(4))) struct ServiceSharing {
        static let addresses = ["llb1": "10.0.10.141", "llb2": "10.0.10.88"]


        func config(_ role: String, key: String, share: Bool = true) -> String {
            let peer = role == "llb1" ? "llb2" : "llb1"
            return nodeConfig(extra: """
            cluster:
              peers: [\(Self.addresses[peer] ?? "")]
              keyFile: \(key)
              election: false
              shareServices: \(share)
            """)
        }

        func ports(_ node: NodeDaemon) throws -> Set<Int> {
            Set(try ControlPlane().rules(node).map(\.serviceArguments.port))
        }

        func endpoints(_ node: NodeDaemon, port: Int) throws -> [String] {
            try ControlPlane().rules(node).first { $0.serviceArguments.port == port }?.endpoints.map(\.endpointIP).sorted() ?? []
        }

        func status(_ node: NodeDaemon) throws -> ServiceSyncStatus {
            let a = try ControlPlane().call(node, "GET", APIRoutes.clusterServices)
            guard a.status == "200" else { throw TestFailure("cluster/services: \(a.status) \(a.body)") }
            return try JSONDecoder().decode(ServiceSyncStatus.self, from: Data(a.body.utf8))
        }

        func show(_ node: NodeDaemon) -> String {
            (try? status(node)).map { "\($0)" } ?? "no status"
        }

        @Test func aServiceWrittenOnOneNodeReachesTheOtherAndDriftIsShown() throws {
            let bed = try TestBed(nodes: 2)
            defer { bed.down() }
            let key = try clusterKeyFile(bed, tag: "share")
            defer { try? FileManager.default.removeItem(atPath: key) }
            let cp = ControlPlane()
            let n1 = try NodeDaemon(bed: bed, role: "llb1", config: config("llb1", key: key))
            defer { n1.stop() }
            var n2: NodeDaemon? = try NodeDaemon(bed: bed, role: "llb2", config: config("llb2", key: key))
            defer { n2?.stop() }
            guard let second = n2 else { return }
            // Same config file on both: they agree without copying anything.
            #expect(waitFor(10) { try status(n1).allAgree && status(second).allAgree } != nil,
                    "\(show(n1)) \(n1.log.suffix(2000))")

            // Created through the CLI on node 1: served by node 2 too.
            let created = try n1.cli(["create", "lb", "10.0.10.143", "--tcp", "57100:80", "--endpoints", "10.0.10.21:1,10.0.10.22:1",
                                      "--mode", "fullnat"])
            #expect(created.ok, "\(created.stdout) \(created.stderr)")
            let reached = waitFor(10) { try ports(second).contains(57100) }
            #expect(reached != nil, "\(second.log.suffix(3000))")
            print("service sharing: create on llb1 served by llb2 after \(reached.map { String(format: "%.3f s", $0) } ?? "-")")

            // Changed on node 2 (kube-loxilb's attach): node 1 follows.
            let detach = try cp.call(second, "POST", APIRoutes.loadBalancer,
                                     body: cp.rule(port: 57100, endpoints: ["10.0.10.22"], oper: 2))
            #expect(detach.result == "Success", "\(detach.body)")
            #expect(waitFor(10) { try endpoints(n1, port: 57100) == ["10.0.10.21"] } != nil,
                    "\((try? endpoints(n1, port: 57100)) ?? [])")
            // The same rule posted to both nodes (kube-loxilb writes to every node): no conflict.
            for n in [n1, second] {
                let a = try cp.call(n, "POST", APIRoutes.loadBalancer, body: cp.rule(port: 57101, endpoints: ["10.0.10.21"]))
                #expect(a.result == "Success", "\(a.body)")
            }
            #expect(waitFor(10) { try status(n1).allAgree && status(second).allAgree } != nil)

            // A node that is away misses a delete and a create, and catches up when it is back.
            let statePath = second.statePath
            #expect(second.stop() == 0, "a clean SIGTERM exit")
            n2 = nil
            let gone = try cp.call(n1, "DELETE", APIRoutes.deletePath(ServiceKey(vip: IPv4Address(10, 0, 10, 143), port: 57100, proto: .tcp)))
            #expect(gone.result == "Success", "\(gone.body)")
            let other = try cp.call(n1, "POST", APIRoutes.loadBalancer, body: cp.rule(port: 57102, endpoints: ["10.0.10.22"]))
            #expect(other.result == "Success")
            // Drift display: the peer is unreachable, so node 1 cannot say it agrees.
            #expect(waitFor(6) { try status(n1).peers.first?.lastError != nil } != nil)
            let table = try n1.cli(["get", "cluster"])
            #expect(table.stdout.contains("differ: 10.0.10.88"), "\(table.stdout) \(table.stderr)")

            let back = try NodeDaemon(bed: bed, role: "llb2", config: config("llb2", key: key), statePath: statePath)
            n2 = back
            defer { back.removeState() }
            let caughtUp = waitFor(10) { let p = try ports(back); return !p.contains(57100) && p.contains(57102) }
            #expect(caughtUp != nil, "llb2 after return: \((try? ports(back)) ?? [])\n\(back.log.suffix(3000))")
            #expect(waitFor(10) { try status(n1).allAgree && status(back).allAgree } != nil)
            let agreed = try n1.cli(["get", "cluster"])
            #expect(agreed.stdout.contains("all nodes agree"), "\(agreed.stdout)")

            // A forged config-channel frame: dropped, counted, nothing changes.
            let before = try ports(n1)
            let forge = """
            import socket, struct, os
            s = socket.create_connection(("10.0.10.141", 11114), timeout=3)
            s.sendall(struct.pack(">HBBBBHIQQ", 0x5453, 1, 16, 4, 0, 2 + 16, 0x0a000a58, 1, 1) + os.urandom(18))
            try: s.recv(100)
            except Exception: pass
            """
            _ = try bed.exec("llb2", ["python3", "-c", forge])
            #expect(waitFor(5) { try status(n1).dropped["authFailed", default: 0] >= 1 } != nil, "\(show(n1))")
            #expect(try ports(n1) == before)
        }

        @Test func withSharingOffEachNodeKeepsItsOwnServices() throws {
            let bed = try TestBed(nodes: 2)
            defer { bed.down() }
            let key = try clusterKeyFile(bed, tag: "share")
            defer { try? FileManager.default.removeItem(atPath: key) }
            let cp = ControlPlane()
            let n1 = try NodeDaemon(bed: bed, role: "llb1", config: config("llb1", key: key, share: false))
            defer { n1.stop() }
            let n2 = try NodeDaemon(bed: bed, role: "llb2", config: config("llb2", key: key, share: false))
            defer { n2.stop() }
            let a = try cp.call(n1, "POST", APIRoutes.loadBalancer, body: cp.rule(port: 57110, endpoints: ["10.0.10.21"]))
            #expect(a.result == "Success")
            Thread.sleep(forTimeInterval: 3)
            #expect(!(try ports(n2)).contains(57110))
            #expect(try cp.call(n1, "GET", APIRoutes.clusterServices).status == "404")
        }
    }
}
