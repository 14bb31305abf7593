import Foundation
import Testing
@testable import TandemAPI
import TandemAPIModels
@testable import TandemCore

extension Privileged {
    /// The daemon in a namespace test bed with real nginx, curl and echo servers.
    @Suite(.timeLimit(.minutes(5))) struct NodeInTestBed {
        func whoami(_ bed: TestBed, count: Int, port: Int = 56002) throws -> [String] {
            try (0..<count).map { _ in
                let r = try bed.exec("client", ["curl", "-fsS", "-m", "3", "http://10.0.10.143:\(port)/whoami"])
                #expect(r.ok, "curl failed: \(r.stderr)")
                return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            }
        }

        func conntrack(_ node: NodeDaemon) throws -> [ConntrackEntry] {
            let r = try node.cli(["get", "ct", "-o", "json"])
            guard r.ok else { throw TestFailure("get ct failed: \(r.stderr)") }
            return try JSONDecoder().decode(ConntrackList.self, from: Data(r.stdout.utf8)).ctAttr
        }

        @Test func fullnatRoundRobinServesNginxFromBothEndpoints() throws {
            let bed = try TestBed()
            defer { bed.down() }
            let node = try NodeDaemon(bed: bed, config: nodeConfig(mode: "fullnat", sel: "rr"))
            defer { node.stop() }
            let page = try bed.exec("client", ["curl", "-fsS", "-m", "3", "http://10.0.10.143:56002/"])
            #expect(page.stdout.contains("Welcome to nginx!"))
            let names = try whoami(bed, count: 6)
            // Consecutive new connections alternate between the two endpoints.
            for i in 1..<names.count { #expect(names[i] != names[i - 1], "\(names)") }
            #expect(Set(names) == ["ep1", "ep2"])
            let ct = try conntrack(node)
            #expect(ct.count >= 7)
            #expect(ct.allSatisfy { $0.conntrackAct.hasPrefix("fsnat-10.0.10.143,") && $0.destinationIP == "10.0.10.143" })
            let table = try node.cli(["get", "lb"])
            #expect(table.stdout.contains("| 10.0.10.143 | 56002 | tcp   | svc  | 0    | rr  | fullnat | 2              |"))
            let wide = try node.cli(["get", "lb", "-o", "wide"])
            #expect(wide.stdout.contains("10.0.10.21") && wide.stdout.contains("10.0.10.22"))
            let ctTable = try node.cli(["get", "ct"])
            #expect(ctTable.stdout.contains("| SERVICE | DEST IP"))
            let ping = try bed.exec("client", ["ping", "-c", "2", "-W", "1", "10.0.10.143"])
            #expect(ping.ok, "VIP answers ICMP echo")
        }

        @Test func onearmSNATsToTheNodeAddress() throws {
            let bed = try TestBed()
            defer { bed.down() }
            let node = try NodeDaemon(bed: bed, config: nodeConfig(mode: "onearm"))
            defer { node.stop() }
            #expect(Set(try whoami(bed, count: 4)) == ["ep1", "ep2"])
            #expect(try conntrack(node).allSatisfy { $0.conntrackAct.hasPrefix("fsnat-10.0.10.141,") })
        }

        @Test func defaultModeKeepsTheClientAddress() throws {
            let bed = try TestBed()
            defer { bed.down() }
            try bed.routeRepliesThroughNode()
            let node = try NodeDaemon(bed: bed, config: nodeConfig(mode: "default"))
            defer { node.stop() }
            #expect(Set(try whoami(bed, count: 4)) == ["ep1", "ep2"])
            #expect(try conntrack(node).allSatisfy { $0.conntrackAct.hasPrefix("dnat-") && $0.sourceIP == "10.0.20.10" })
        }

        @Test func weightedPersistAndMaglevSelections() throws {
            let bed = try TestBed()
            defer { bed.down() }
            var node = try NodeDaemon(bed: bed, config: nodeConfig(sel: "priority", weights: [3, 1]))
            let w = try whoami(bed, count: 8)
            #expect(w.filter { $0 == "ep1" }.count == 6, "\(w)")
            node.stop()
            node = try NodeDaemon(bed: bed, config: nodeConfig(sel: "persist"))
            #expect(Set(try whoami(bed, count: 6)).count == 1, "one client stays on one endpoint")
            node.stop()
            node = try NodeDaemon(bed: bed, config: nodeConfig(sel: "hash", extra: "cluster: {seed: 99}"))
            defer { node.stop() }
            _ = try whoami(bed, count: 12)
            // Every flow went where Swift's Maglev table says any node with this seed sends it.
            let eps = [Endpoint(ip: IPv4Address(10, 0, 10, 21), port: 80), Endpoint(ip: IPv4Address(10, 0, 10, 22), port: 80)]
            let table = Maglev.table(endpoints: eps, seed: 99)
            let ct = try conntrack(node)
            #expect(ct.count >= 12)
            for c in ct {
                let src = try #require(IPv4Address(c.sourceIP))
                let dst = try #require(IPv4Address(c.destinationIP))
                let pick = try #require(Maglev.pick(table: table, source: src,
                                                    destination: dst,
                                                    sourcePort: UInt16(c.sourcePort), destinationPort: UInt16(c.destinationPort),
                                                    proto: 6, seed: 99))
                #expect(c.conntrackAct.hasSuffix("\(eps[pick].ip),80"), "\(c)")
            }
        }

        @Test func tcpAndUDPEchoThroughTheVIPAndExpiry() throws {
            let bed = try TestBed()
            defer { bed.down() }
            let config = """
            interfaces: [eth0]
            timeouts: {udp: 3, udpNew: 3, tcpClosed: 2, tcpFin: 2}
            services:
              - {externalIP: 10.0.10.143, port: 56003, protocol: udp, mode: fullnat, sel: rr,
                 endpoints: [{ip: 10.0.10.21, port: 9000}, {ip: 10.0.10.22, port: 9000}]}
              - {externalIP: 10.0.10.143, port: 56004, protocol: tcp, mode: fullnat, sel: rr,
                 endpoints: [{ip: 10.0.10.21, port: 9000}, {ip: 10.0.10.22, port: 9000}]}
            """
            let node = try NodeDaemon(bed: bed, config: config)
            defer { node.stop() }
            let udp = try bed.exec("client", [Env.echo, "probe", "--udp", "--target", "10.0.10.143:56003", "--timeout", "2"])
            #expect(udp.ok, "UDP echo through the VIP: \(udp.stdout) \(udp.stderr)")
            let tcp = try bed.exec("client", [Env.echo, "probe", "--target", "10.0.10.143:56004", "--timeout", "2"])
            #expect(tcp.ok, "TCP echo through the VIP: \(tcp.stdout) \(tcp.stderr)")
            let before = try conntrack(node)
            #expect(before.contains { $0.protocol_ == "udp" && $0.conntrackState == "udp-est" })
            #expect(before.contains { $0.protocol_ == "tcp" && $0.destinationPort == 56004 })
            // Idle past their timeouts (3 s UDP, 2 s closed TCP) plus a scan period: gone.
            var after = before
            let deadline = Date().addingTimeInterval(12)
            while !after.isEmpty && Date() < deadline {
                Thread.sleep(forTimeInterval: 0.5)
                after = try conntrack(node)
            }
            #expect(after.isEmpty, "expired connections are removed: \(after)")
        }

        @Test func thousandsOfShortConnectionsWithoutAReset() throws {
            let bed = try TestBed()
            defer { bed.down() }
            let node = try NodeDaemon(bed: bed, config: nodeConfig())
            defer { node.stop() }
            let r = try bed.exec("client", ["wrk", "-t", "2", "-c", "8", "-d", "4s", "-H", "Connection: close",
                                            "http://10.0.10.143:56002/whoami"], timeout: 30)
            #expect(r.ok, "\(r.stderr)")
            let total = r.stdout.split(separator: "\n").first { $0.contains("requests in") }
                .flatMap { Int($0.trimmingCharacters(in: .whitespaces).split(separator: " ")[0]) } ?? 0
            #expect(total >= 2000, "\(r.stdout)")
            #expect(!r.stdout.contains("Socket errors"), "no connect/read errors or timeouts: \(r.stdout)")
            #expect(!r.stdout.contains("Non-2xx"), "\(r.stdout)")
        }

        @Test func badRequestsAreRefusedAndChangeNothing() throws {
            let bed = try TestBed()
            defer { bed.down() }
            let node = try NodeDaemon(bed: bed, config: nodeConfig())
            defer { node.stop() }
            let before = try node.api("GET", APIRoutes.loadBalancerAll).stdout
            let bad: [(String, String)] = [
                (#"{"serviceArguments":{"externalIP":"10.0.10.143","port":80,"protocol":"tcp","mode":"dsr"},"endpoints":[{"endpointIP":"10.0.10.21","targetPort":80}]}"#, "400"),
                (#"{"serviceArguments":{"externalIP":"10.0.10.1433","port":80,"protocol":"tcp"},"endpoints":[{"endpointIP":"10.0.10.21","targetPort":80}]}"#, "400"),
                (#"{"serviceArguments":{"externalIP":"10.0.10.143","port":0,"protocol":"tcp"},"endpoints":[{"endpointIP":"10.0.10.21","targetPort":80}]}"#, "400"),
                (#"{"serviceArguments":{"externalIP":"10.0.10.143","port":56002,"protocol":"tcp","block":7},"endpoints":[{"endpointIP":"10.0.10.21","targetPort":80}]}"#, "409"),
                (#"{"serviceArguments":{"externalIP":"10.0.10.143","port":81,"protocol":"tcp"},"endpoints":[{"endpointIP":"192.0.2.7","targetPort":80}]}"#, "400"),
                (#"{"serviceArguments": 5}"#, "400"),
                ("not json", "400"),
            ]
            // An endpoint the node has no route to.
            try bed.exec("llb1", ["ip", "route", "add", "unreachable", "192.0.2.0/24"])
            for (body, code) in bad {
                let r = try node.api("POST", APIRoutes.loadBalancer, body: body)
                let lines = r.stdout.split(separator: "\n")
                #expect(lines.last.map(String.init) == code, "\(body) -> \(r.stdout)")
                let err = try JSONDecoder().decode(APIErrorBody.self, from: Data((lines.first ?? "").utf8))
                #expect(!err.result.isEmpty && err.result != "Success")
            }
            #expect(try node.api("DELETE", "/netlox/v1/config/loadbalancer/externalipaddress/10.0.10.9/port/1/protocol/tcp").stdout.hasSuffix("404"))
            #expect(try node.api("DELETE", "/netlox/v1/config/loadbalancer/externalipaddress/bad/port/1/protocol/tcp").stdout.hasSuffix("400"))
            #expect(try node.api("GET", APIRoutes.loadBalancerAll).stdout == before, "nothing changed")
            #expect(try node.api("GET", APIRoutes.openAPI).stdout.contains("\"openapi\""))
            // A standalone node has no cluster: the HA routes say so instead of inventing a state.
            #expect(try node.api("GET", "/netlox/v1/cluster").stdout.hasSuffix("404"))
            #expect(try node.api("GET", "/netlox/v1/config/cistate/all").stdout.hasSuffix("404"))
            #expect(try node.api("POST", "/netlox/v1/config/cistate",
                                 body: #"{"instance":"llb-inst0","state":"MASTER","vip":"0.0.0.0"}"#).stdout.hasSuffix("404"))
            // The CLI reports the API's refusal and exits non-zero.
            let cli = try node.cli(["create", "lb", "10.0.10.143", "--tcp=56002:80", "--endpoints=10.0.10.21:1", "--mode=dsr"])
            #expect(!cli.ok && cli.stderr.contains("dsr"), "\(cli.stderr)")
            // Create and delete through the CLI work.
            #expect(try node.cli(["create", "lb", "10.0.10.150", "--udp=53:9000", "--endpoints=10.0.10.21:1", "--mode=fullnat"]).ok)
            #expect(try node.cli(["get", "lb"]).stdout.contains("10.0.10.150"))
            #expect(try node.cli(["delete", "lb", "10.0.10.150", "--udp=53"]).ok)
            #expect(try node.api("GET", APIRoutes.loadBalancerAll).stdout == before)
        }

        @Test func xdpFastPathCarriesEstablishedFlowsAndDetaches() throws {
            let bed = try TestBed()
            defer { bed.down() }
            let config = """
            interfaces: [eth0]
            xdp: true
            services:
              - {externalIP: 10.0.10.143, port: 56002, protocol: tcp, mode: fullnat, sel: rr, name: http,
                 endpoints: [{ip: 10.0.10.21, port: 80}, {ip: 10.0.10.22, port: 80}]}
              - {externalIP: 10.0.10.143, port: 56003, protocol: udp, mode: fullnat, sel: rr, name: udp,
                 endpoints: [{ip: 10.0.10.21, port: 9000}, {ip: 10.0.10.22, port: 9000}]}
            """
            // The XDP FIB lookup needs forwarding on the interface: refused, nothing attached.
            let cfgPath = FileManager.default.temporaryDirectory.appendingPathComponent("\(bed.name)-xdp.yaml").path
            defer { try? FileManager.default.removeItem(atPath: cfgPath) }
            try config.write(toFile: cfgPath, atomically: true, encoding: .utf8)
            let refused = try bed.exec("llb1", [Env.tandem, "node", "run", "--config", cfgPath, "--bpf-object", Env.bpfObject, "--no-state"], timeout: 20)
            #expect(refused.status != 0 && refused.stderr.contains("does not forward IPv4"), "\(refused.stderr)")
            #expect(!(try bed.exec("llb1", ["ip", "-d", "link", "show", "eth0"]).stdout.contains("tandem_xdp")))

            let lib = Env.repo.appendingPathComponent("testbed/lib.sh").path
            let ready = try run(["bash", "-c", "source '\(lib)' && tb_xdp_ready llb1"], env: ["TB": bed.name])
            #expect(ready.ok, "tb_xdp_ready: \(ready.stderr)")
            let node = try NodeDaemon(bed: bed, config: config)
            defer { node.stop() }
            #expect(try bed.exec("llb1", ["ip", "-d", "link", "show", "eth0"]).stdout.contains("tandem_xdp"))

            // New connections still go through TC (selection, entries, events) and alternate.
            #expect(Set(try whoami(bed, count: 4)) == ["ep1", "ep2"])
            // Keep-alive HTTP: most packets belong to established flows, the fast path's share.
            let r = try bed.exec("client", ["wrk", "-t", "1", "-c", "4", "-d", "2s", "http://10.0.10.143:56002/whoami"], timeout: 30)
            #expect(r.ok, "\(r.stderr)")
            let total = r.stdout.split(separator: "\n").first { $0.contains("requests in") }
                .flatMap { Int($0.trimmingCharacters(in: .whitespaces).split(separator: " ")[0]) } ?? 0
            #expect(total >= 500, "\(r.stdout)")
            #expect(!r.stdout.contains("Socket errors") && !r.stdout.contains("Non-2xx"), "\(r.stdout)")
            // UDP: replies turn the flows established, after which XDP carries them.
            let udp = try bed.exec("client", [Env.echo, "flood", "--target", "10.0.10.143:56003", "--duration", "1",
                                              "--flows", "4", "--window", "16"], timeout: 20)
            let flood = try JSONSerialization.jsonObject(with: Data(udp.stdout.utf8)) as? [String: Any]
            let sent = (flood?["sent"] as? NSNumber)?.intValue ?? 0
            let received = (flood?["received"] as? NSNumber)?.intValue ?? -1
            #expect(sent > 100 && received == sent, "\(udp.stdout) \(udp.stderr)")

            let status = try node.api("GET", "/netlox/v1/status")
            let body = status.stdout.split(separator: "\n").first.map(String.init) ?? ""
            let counters = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]
            let forwarded = (counters?["xdp_forwarded"] as? NSNumber)?.intValue ?? 0
            #expect(forwarded > total, "the fast path carried the established packets: \(body)")

            #expect(node.stop() == 0)
            #expect(!(try bed.exec("llb1", ["ip", "-d", "link", "show", "eth0"]).stdout.contains("tandem_xdp")), "XDP detached")
            #expect(try bed.exec("llb1", ["tc", "filter", "show", "dev", "eth0", "ingress"]).stdout.isEmpty)
        }

        @Test func startupRefusalsAndCleanShutdown() throws {
            let bed = try TestBed()
            defer { bed.down() }
            let cfgPath = FileManager.default.temporaryDirectory.appendingPathComponent("\(bed.name)-bad.yaml").path
            defer { try? FileManager.default.removeItem(atPath: cfgPath) }
            func start(_ config: String, _ extra: [String] = [], prefix: [String] = []) throws -> CommandResult {
                try config.write(toFile: cfgPath, atomically: true, encoding: .utf8)
                return try bed.exec("llb1", prefix + [Env.tandem, "node", "run", "--config", cfgPath, "--bpf-object", Env.bpfObject, "--no-state"] + extra, timeout: 20)
            }
            let cases: [(String, [String], String)] = [
                (nodeConfig(mode: "dsr"), [], "mode 'dsr' is unknown"),
                (nodeConfig().replacingOccurrences(of: "10.0.10.143", with: "10.0.10.1433"), [], "not an IPv4 address"),
                (nodeConfig(port: 0), [], "port must be 1-65535"),
                (nodeConfig() + "\n  - {externalIP: 10.0.10.143, port: 56002, protocol: tcp, endpoints: [{ip: 10.0.10.21, port: 80}]}", [], "already exists"),
                (nodeConfig().replacingOccurrences(of: "10.0.10.22", with: "192.0.2.9"), [], "unreachable"),
                (nodeConfig().replacingOccurrences(of: "eth0", with: "nosuch0"), [], "interface nosuch0 does not exist"),
                (nodeConfig(), ["--bpf-object", "/nonexistent/tandem_lb.o"], "BPF object /nonexistent/tandem_lb.o is missing"),
            ]
            try bed.exec("llb1", ["ip", "route", "add", "unreachable", "192.0.2.0/24"])
            for (cfg, extra, message) in cases {
                let r = try start(cfg, extra)
                #expect(r.status != 0 && !r.timedOut, "\(message): status \(r.status)")
                #expect(r.stderr.contains(message), "expected '\(message)' in: \(r.stderr)")
                let filters = try bed.exec("llb1", ["tc", "filter", "show", "dev", "eth0", "ingress"])
                #expect(filters.stdout.isEmpty, "nothing attached after a refused start")
            }
            let nonRoot = try start(nodeConfig(), [], prefix: ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
            #expect(nonRoot.status != 0 && nonRoot.stderr.contains("must run as root"), "\(nonRoot.stderr)")

            // A clean run: attached while up, nothing left after SIGTERM.
            let node = try NodeDaemon(bed: bed, config: nodeConfig())
            #expect(try bed.exec("llb1", ["tc", "filter", "show", "dev", "eth0", "ingress"]).stdout.contains("tandem_ingress"))
            #expect(node.stop() == 0)
            #expect(node.log.contains("datapath detached"))
            #expect(try bed.exec("llb1", ["tc", "filter", "show", "dev", "eth0", "ingress"]).stdout.isEmpty)
            #expect(!(try bed.exec("llb1", ["tc", "qdisc", "show", "dev", "eth0"]).stdout.contains("clsact")))
            let prog = try run(["bpftool", "prog", "show", "name", "tandem_ingress"])
            #expect(prog.stdout.isEmpty, "program unloaded: \(prog.stdout)")
        }
    }
}
