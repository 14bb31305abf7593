import Foundation
import Testing
@testable import TandemAPI
import TandemAPIModels
@testable import TandemCore

extension Privileged {
    /// The control plane as kube-loxilb and LoxiLB's tools drive it, against the real daemon.
    @Suite(.timeLimit(.minutes(5))) struct ControlPlane {
        /// curl's answer split into body, status and content type.
        struct Answer {
            var body: String
            var status: String
            var contentType: String
            var result: String? { (try? JSONDecoder().decode(APIErrorBody.self, from: Data(body.utf8)))?.result }
        }

        func call(_ node: NodeDaemon, _ method: String, _ path: String, body: String? = nil, headers: [String] = [],
                  curlExtra: [String] = []) throws -> Answer {
            var args = ["curl", "-sS", "-m", "5", "-X", method, "-w", "\n%{http_code}\n%{content_type}"] + curlExtra
            for h in headers { args += ["-H", h] }
            if let body { args += ["-H", "Content-Type: application/json", "--data-binary", body] }
            args.append("\(node.scheme)://127.0.0.1:11111\(path)")
            let r = try node.bed.exec(node.role, args)
            var lines = r.stdout.components(separatedBy: "\n")
            let type = lines.popLast() ?? ""
            let status = lines.popLast() ?? ""
            return Answer(body: lines.joined(separator: "\n"), status: status, contentType: type)
        }

        func rule(port: Int, endpoints: [String], oper: Int? = nil, extra: String = "") -> String {
            let eps = endpoints.map { #"{"endpointIP":"\#($0)","targetPort":80,"weight":1,"state":"","counter":""}"# }
                .joined(separator: ",")
            let op = oper.map { #","oper":\#($0)"# } ?? ""
            // kube-loxilb's makeLoxiLoadBalancerModel: every field, Go's capitalisation.
            return #"{"serviceArguments":{"externalIP":"10.0.10.143","privateIP":"","port":\#(port),"protocol":"tcp","sel":0,"mode":2,"BGP":false,"Monitor":false,"inactiveTimeOut":1800,"block":0,"managed":true,"probetype":"","probeport":0,"probereq":"","proberesp":"","name":"default_web:llb-inst0"\#(op)\#(extra)},"secondaryIPs":[],"allowedSources":[],"endpoints":[\#(eps)]}"#
        }

        func rules(_ node: NodeDaemon) throws -> [LoadBalancerEntry] {
            let a = try call(node, "GET", APIRoutes.loadBalancerAll)
            return try JSONDecoder().decode(LoadBalancerList.self, from: Data(a.body.utf8)).lbAttr
        }

        @Test func aKubeLoxilbClientGetsEveryAnswerItExpects() throws {
            let bed = try TestBed()
            defer { bed.down() }
            let node = try NodeDaemon(bed: bed, config: nodeConfig())
            defer { node.stop() }
            // Liveness poll.
            #expect(try call(node, "GET", "/netlox/v1").status == "200")
            // Create: 200, {"result":"Success"}, application/json exactly.
            let created = try call(node, "POST", APIRoutes.loadBalancer, body: rule(port: 56010, endpoints: ["10.0.10.21"]))
            #expect(created.status == "200" && created.body == #"{"result":"Success"}"#, "\(created)")
            #expect(created.contentType == "application/json")
            // The same rule again (kube-loxilb re-installs every cached rule when a node returns).
            let again = try call(node, "POST", APIRoutes.loadBalancer, body: rule(port: 56010, endpoints: ["10.0.10.21"]))
            #expect(again.status == "200" && again.result == "Success", "\(again)")
            #expect(try rules(node).filter { $0.serviceArguments.port == 56010 }.count == 1)
            // Listed back with what was stored.
            let listed = try #require(try rules(node).first { $0.serviceArguments.port == 56010 })
            #expect(listed.serviceArguments.inactiveTimeOut == 1800 && listed.serviceArguments.managed == true)
            #expect(listed.serviceArguments.name == "default_web:llb-inst0")
            // --appendEPs: attach ep2, then detach ep1; traffic follows.
            #expect(try call(node, "POST", APIRoutes.loadBalancer, body: rule(port: 56010, endpoints: ["10.0.10.22"], oper: 1)).result == "Success")
            #expect(try rules(node).first { $0.serviceArguments.port == 56010 }?.endpoints.map(\.endpointIP) == ["10.0.10.21", "10.0.10.22"])
            #expect(try call(node, "POST", APIRoutes.loadBalancer, body: rule(port: 56010, endpoints: ["10.0.10.21"], oper: 2)).result == "Success")
            #expect(try rules(node).first { $0.serviceArguments.port == 56010 }?.endpoints.map(\.endpointIP) == ["10.0.10.22"])
            for _ in 0..<4 {
                let r = try bed.exec("client", ["curl", "-fsS", "-m", "3", "http://10.0.10.143:56010/whoami"])
                #expect(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "ep2", "\(r.stdout) \(r.stderr)")
            }
            // A changed rule (new endpoint list, oper 0) replaces the old one in place.
            #expect(try call(node, "POST", APIRoutes.loadBalancer, body: rule(port: 56010, endpoints: ["10.0.10.21", "10.0.10.22"])).result == "Success")
            #expect(try rules(node).first { $0.serviceArguments.port == 56010 }?.endpoints.count == 2)
            // A field Tandem cannot honour: 400, the reason in result, nothing changed.
            let before = try rules(node)
            let refused = try call(node, "POST", APIRoutes.loadBalancer, body: rule(port: 56011, endpoints: ["10.0.10.21"], extra: #","egress":true"#))
            #expect(refused.status == "400" && (refused.result ?? "").contains("egress"), "\(refused)")
            #expect(try rules(node) == before)
            // Delete as kube-loxilb sends it (query bgp and block); a replayed delete is a success,
            // a rule that never existed is a 404 whose result kube-loxilb can read.
            let path = "/netlox/v1/config/loadbalancer/externalipaddress/10.0.10.143/port/56010/protocol/tcp?bgp=false&block=0"
            #expect(try call(node, "DELETE", path).body == #"{"result":"Success"}"#)
            #expect(try call(node, "DELETE", path).result == "Success")
            let missing = try call(node, "DELETE", "/netlox/v1/config/loadbalancer/externalipaddress/10.0.10.143/port/56099/protocol/tcp?bgp=false&block=0")
            #expect(missing.status == "404" && (missing.result ?? "").contains("no-rule"), "\(missing)")
            // Delete by name (LoxiLB's DeleteByName).
            #expect(try call(node, "DELETE", "/netlox/v1/config/loadbalancer/name/svc").result == "Success")
            #expect(try rules(node).isEmpty)
            // loxicmd's get ep shape and the CLI's tables.
            _ = try call(node, "POST", APIRoutes.loadBalancer, body: rule(port: 56012, endpoints: ["10.0.10.21"]))
            let eps = try JSONDecoder().decode(EndpointHostList.self, from: Data(try call(node, "GET", APIRoutes.endpointAll).body.utf8))
            #expect(eps.Attr.map(\.hostName) == ["10.0.10.21"] && eps.Attr.first?.probeType == "none")
            #expect(try node.cli(["get", "ep"]).stdout.contains("10.0.10.21"))
            #expect(try node.cli(["get", "lb", "-o", "wide"]).stdout.contains("active"))
        }

        @Test func loadBalancerSourceRangesAndLeastConnectionsThroughTheAPI() throws {
            let bed = try TestBed()
            defer { bed.down() }
            try bed.addSecondClient()
            let node = try NodeDaemon(bed: bed, config: nodeConfig())
            defer { node.stop() }
            // What kube-loxilb sends for a Service with loadBalancerSourceRanges: [10.0.20.10/32]
            // and loxilb.io/epselect: lc.
            let body = rule(port: 56030, endpoints: ["10.0.10.21", "10.0.10.22"], extra: "")
                .replacingOccurrences(of: #""sel":0"#, with: #""sel":4"#)
                .replacingOccurrences(of: #""allowedSources":[]"#, with: #""allowedSources":[{"prefix":"10.0.20.10/32"}]"#)
            #expect(try call(node, "POST", APIRoutes.loadBalancer, body: body).result == "Success")
            let allowed = try (0..<4).compactMap { _ in try bed.whoami(from: "10.0.20.10", port: 56030) }
            #expect(allowed.count == 4 && Set(allowed) == ["ep1", "ep2"], "lc spreads idle endpoints alike: \(allowed)")
            #expect(try bed.whoami(from: "10.0.20.11", port: 56030) == nil, "a source outside the ranges is dropped")
            let listed = try #require(try rules(node).first { $0.serviceArguments.port == 56030 })
            #expect(listed.allowedSources == [AllowedSource(prefix: "10.0.20.10/32")] && listed.serviceArguments.sel == .number(4))
            #expect((listed.counters?.deniedSources ?? 0) >= 1, "counted per service: \(String(describing: listed.counters))")
            // Widening the ranges (a replaced rule) lets the second client in.
            let wider = body.replacingOccurrences(of: #"{"prefix":"10.0.20.10/32"}"#, with: #"{"prefix":"10.0.20.0/24"}"#)
            #expect(try call(node, "POST", APIRoutes.loadBalancer, body: wider).result == "Success")
            #expect(try bed.whoami(from: "10.0.20.11", port: 56030) != nil)
        }

        @Test func everyAcknowledgedWriteSurvivesASigkill() throws {
            let bed = try TestBed()
            defer { bed.down() }
            let statePath = FileManager.default.temporaryDirectory.appendingPathComponent("\(bed.name)-kill-state.jsonl").path
            var node: NodeDaemon? = try NodeDaemon(bed: bed, config: nodeConfig(), statePath: statePath)
            defer { node?.stop(); try? FileManager.default.removeItem(atPath: statePath) }
            // Writes as fast as curl goes; the daemon is killed while they stream in.
            let pid = try #require(node?.child.pid)
            let killer = Thread { Thread.sleep(forTimeInterval: 1.2); kill(pid, SIGKILL) }
            killer.start()
            var acknowledged: [Int] = []
            for port in 57000..<57200 {
                guard let n = node, let a = try? call(n, "POST", APIRoutes.loadBalancer, body: rule(port: port, endpoints: ["10.0.10.21"])) else { break }
                if a.result == "Success" { acknowledged.append(port) } else { break }
            }
            #expect(acknowledged.count >= 3, "writes before the kill: \(acknowledged.count)")
            #expect(acknowledged.count < 200, "the kill landed mid-stream")
            node?.child.wait(timeout: 5, signal: SIGKILL)
            node = nil
            // Back with the same state file: every acknowledged write is there and serves.
            let back = try NodeDaemon(bed: bed, config: nodeConfig(), statePath: statePath)
            node = back
            let ports = Set(try rules(back).map(\.serviceArguments.port))
            let lost = acknowledged.filter { !ports.contains($0) }
            #expect(lost.isEmpty, "acknowledged but lost: \(lost)\n\(back.log.suffix(3000))")
            #expect(ports.contains(56002), "the config file's service is there too")
            let last = try #require(acknowledged.last)
            let r = try bed.exec("client", ["curl", "-fsS", "-m", "3", "http://10.0.10.143:\(last)/whoami"])
            #expect(r.stdout.contains("ep1"), "\(r.stdout) \(r.stderr)")
            // A deleted config-file service stays deleted across a restart.
            _ = try call(back, "DELETE", APIRoutes.deletePath(ServiceKey(vip: IPv4Address(10, 0, 10, 143), port: 56002, proto: .tcp)))
            back.stop()
            let third = try NodeDaemon(bed: bed, config: nodeConfig(), statePath: statePath)
            node = third
            #expect(!Set(try rules(third).map(\.serviceArguments.port)).contains(56002))
        }

        @Test func aDamagedStateFileStopsTheNodeNamingTheLine() throws {
            let bed = try TestBed()
            defer { bed.down() }
            let statePath = FileManager.default.temporaryDirectory.appendingPathComponent("\(bed.name)-damaged.jsonl").path
            let damaged = "{\"tandemState\":1}\n{\"deleted\":\"10.0.10.143:1/tcp\"}\n{\"service\": 42}\n"
            try damaged.write(toFile: statePath, atomically: false, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: statePath) }
            let cfgPath = FileManager.default.temporaryDirectory.appendingPathComponent("\(bed.name)-damaged.yaml").path
            try nodeConfig().write(toFile: cfgPath, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: cfgPath) }
            let r = try bed.exec("llb1", [Env.tandem, "node", "run", "--config", cfgPath, "--bpf-object", Env.bpfObject,
                                          "--state-file", statePath], timeout: 20)
            #expect(r.status == 2, "\(r.stderr)")
            #expect(r.stderr.contains(statePath) && r.stderr.contains("line 3"), "\(r.stderr)")
            #expect(try String(contentsOfFile: statePath, encoding: .utf8) == damaged, "nothing overwritten")
            // --ignore-state starts from the config file alone.
            let node = try NodeDaemon(bed: bed, config: nodeConfig(), extraArgs: ["--ignore-state"], statePath: statePath)
            defer { node.stop() }
            #expect(try rules(node).map(\.serviceArguments.port) == [56002])
        }

        @Test func aStateServiceThatCannotBeRestoredStaysInTheFile() throws {
            let bed = try TestBed()
            defer { bed.down() }
            let statePath = FileManager.default.temporaryDirectory.appendingPathComponent("\(bed.name)-unrestored.jsonl").path
            defer { try? FileManager.default.removeItem(atPath: statePath) }
            let stuck = #"{"service":{"endpoints":[{"endpointIP":"192.0.2.7","targetPort":80,"weight":1}],"serviceArguments":{"externalIP":"10.0.10.143","port":56040,"protocol":"tcp"}}}"#
            try "{\"tandemState\":1}\n\(stuck)\n".write(toFile: statePath, atomically: false, encoding: .utf8)
            // An endpoint the node has no route to at boot.
            try bed.exec("llb1", ["ip", "route", "add", "unreachable", "192.0.2.0/24"])
            let node = try NodeDaemon(bed: bed, config: nodeConfig(), statePath: statePath)
            defer { node.stop() }
            #expect(!Set(try rules(node).map(\.serviceArguments.port)).contains(56040))
            // Another change rewrites the file: the service it could not restore is still there.
            #expect(try call(node, "POST", APIRoutes.loadBalancer, body: rule(port: 56041, endpoints: ["10.0.10.21"])).result == "Success")
            let text = try String(contentsOfFile: statePath, encoding: .utf8)
            #expect(text.contains("192.0.2.7") && text.contains("56041"), "\(text)")
            // Deleting it through the API removes it for good.
            #expect(try call(node, "DELETE", "/netlox/v1/config/loadbalancer/externalipaddress/10.0.10.143/port/56040/protocol/tcp").result == "Success")
            #expect(!(try String(contentsOfFile: statePath, encoding: .utf8)).contains("192.0.2.7"))
        }

        @Test func tokenAndTLSProtectTheAPI() throws {
            let bed = try TestBed()
            defer { bed.down() }
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("\(bed.name)-tls").path
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let cert = "\(dir)/api.crt", key = "\(dir)/api.key", tokenFile = "\(dir)/token"
            let made = try run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                                "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])
            #expect(made.ok, "\(made.stderr)")
            let token = "tandem-test-token-\(UInt64.random(in: 1...UInt64.max))"
            try token.write(toFile: tokenFile, atomically: false, encoding: .utf8)
            chmod(tokenFile, 0o600)
            let node = try NodeDaemon(bed: bed, config: nodeConfig(),
                                      extraArgs: ["--api-tls-cert", cert, "--api-tls-key", key, "--api-token-file", tokenFile],
                                      scheme: "https")
            defer { node.stop() }
            let tls = ["--cacert", cert]
            // The liveness GET needs no token; everything else does.
            #expect(try call(node, "GET", "/netlox/v1", curlExtra: tls).status == "200")
            let none = try call(node, "GET", APIRoutes.loadBalancerAll, curlExtra: tls)
            #expect(none.status == "401" && (none.result ?? "").contains("missing"), "\(none)")
            let wrong = try call(node, "POST", APIRoutes.loadBalancer, body: rule(port: 56020, endpoints: ["10.0.10.21"]),
                                 headers: ["Authorization: not-the-token-at-all"], curlExtra: tls)
            #expect(wrong.status == "401", "\(wrong)")
            // kube-loxilb's form (the token alone) and the Bearer form both work.
            let bare = try call(node, "POST", APIRoutes.loadBalancer, body: rule(port: 56021, endpoints: ["10.0.10.21"]),
                                headers: ["Authorization: \(token)"], curlExtra: tls)
            #expect(bare.result == "Success", "\(bare)")
            let listed = try call(node, "GET", APIRoutes.loadBalancerAll, headers: ["Authorization: Bearer \(token)"], curlExtra: tls)
            let ports = try JSONDecoder().decode(LoadBalancerList.self, from: Data(listed.body.utf8)).lbAttr.map(\.serviceArguments.port)
            #expect(ports.sorted() == [56002, 56021], "the refused write changed nothing")
            // Plain HTTP to the TLS port gets nothing.
            let plain = try bed.exec("llb1", ["curl", "-sS", "-m", "3", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:11111/netlox/v1"])
            #expect(plain.stdout != "200")
            let status = try call(node, "GET", APIRoutes.status, headers: ["Authorization: Bearer \(token)"], curlExtra: tls)
            let counts = try JSONDecoder().decode([String: UInt64].self, from: Data(status.body.utf8))
            #expect((counts["api_auth_refused"] ?? 0) >= 2, "\(counts)")
            node.stop()
            // The CLI sends the token (plain HTTP here: the CLI trusts the system's CAs only).
            let http = try NodeDaemon(bed: bed, config: nodeConfig(), extraArgs: ["--api-token-file", tokenFile])
            defer { http.stop() }
            let denied = try http.cli(["get", "lb"])
            #expect(!denied.ok && denied.stderr.contains("401"), "\(denied.stderr)")
            #expect(try http.cli(["get", "lb", "--token-file", tokenFile]).stdout.contains("56002"))
            let env = try bed.exec("llb1", ["env", "TANDEM_TOKEN=\(token)", Env.tandem, "get", "lb"])
            #expect(env.stdout.contains("56002"), "\(env.stderr)")
        }
    }
}
