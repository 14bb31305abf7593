import Foundation
import Testing
@testable import TandemAPI
import TandemAPIModels
@testable import TandemCore

extension Privileged {
    /// SIGHUP (the systemd unit's ExecReload) against the real daemon: the config file's
    /// services follow the file; bad files and settings that need a restart change nothing.
    @Suite(.timeLimit(.minutes(3))) struct ConfigReload {
        func service(_ port: Int, _ endpoints: [String]) -> String {
            """
              - externalIP: 10.0.10.143
                port: \(port)
                mode: fullnat
                name: reload\(port)
                endpoints:
            \(endpoints.map { "      - {ip: \($0), port: 80}" }.joined(separator: "\n"))
            """
        }

        func config(_ services: [String], extra: String = "") -> String {
            "interfaces: [eth0]\n\(extra)\nservices:\n" + services.joined(separator: "\n") + "\n"
        }

        /// Port -> endpoint addresses, as the API lists them.
        func served(_ node: NodeDaemon) throws -> [Int: [String]] {
            let r = try node.api("GET", APIRoutes.loadBalancerAll)
            let body = r.stdout.components(separatedBy: "\n").dropLast().joined(separator: "\n")
            let list = try JSONDecoder().decode(LoadBalancerList.self, from: Data(body.utf8)).lbAttr
            return Dictionary(list.map { ($0.serviceArguments.port, $0.endpoints.map(\.endpointIP)) }, uniquingKeysWith: { a, _ in a })
        }

        /// Rewrites the file, sends SIGHUP and waits (bounded) until `done` holds.
        func reload(_ node: NodeDaemon, _ text: String, until what: String, _ done: () throws -> Bool) throws {
            try text.write(toFile: node.configPath, atomically: true, encoding: .utf8)
            kill(node.child.pid, SIGHUP)
            let deadline = Date().addingTimeInterval(10)
            while Date() < deadline {
                if try done() { return }
                #expect(node.child.isRunning, "the daemon exited: \(node.log.suffix(2000))")
                if !node.child.isRunning { return }
                Thread.sleep(forTimeInterval: 0.1)
            }
            Issue.record("reload: \(what) did not happen within 10 s\n\(node.log.suffix(3000))")
        }

        func whoami(_ bed: TestBed, _ port: Int) throws -> String? {
            let r = try bed.exec("client", ["curl", "-fsS", "-m", "2", "http://10.0.10.143:\(port)/whoami"])
            return r.ok ? r.stdout.trimmingCharacters(in: .whitespacesAndNewlines) : nil
        }

        func reloads(_ node: NodeDaemon) -> Int { node.log.components(separatedBy: "config reloaded").count - 1 }

        @Test func sighupAppliesTheFilesServicesAndRefusesBadFiles() throws {
            let bed = try TestBed()
            defer { bed.down() }
            let ep1 = "10.0.10.21", ep2 = "10.0.10.22"
            var node: NodeDaemon? = try NodeDaemon(bed: bed, config: config([service(56002, [ep1, ep2])]))
            defer { node?.stop(); node?.removeState() }
            let n = try #require(node)
            #expect(try served(n) == [56002: [ep1, ep2]])

            // Added: a second service appears and serves.
            try reload(n, config([service(56002, [ep1, ep2]), service(56003, [ep1, ep2])]), until: "56003 added") {
                try served(n)[56003] == [ep1, ep2]
            }
            #expect(Set(try (0..<4).compactMap { _ in try whoami(bed, 56003) }) == ["ep1", "ep2"])

            // Changed and removed in one file: 56003 on ep2 alone, 56002 gone.
            try reload(n, config([service(56003, [ep2])]), until: "56003 changed, 56002 removed") {
                try served(n) == [56003: [ep2]]
            }
            #expect(try (0..<4).compactMap { _ in try whoami(bed, 56003) } == ["ep2", "ep2", "ep2", "ep2"])
            #expect(try whoami(bed, 56002) == nil, "a removed service no longer answers")

            // A file that does not parse, one that does not validate, and one naming an endpoint
            // the node cannot route to: each refused with its reason, nothing changed.
            try bed.exec("llb1", ["ip", "route", "add", "unreachable", "192.0.2.0/24"])
            let bad: [(String, String)] = [
                ("interfaces: [eth0\nservices: [", "not valid YAML"),
                (config([service(56003, [ep2]), service(56004, [ep1]).replacingOccurrences(of: "fullnat", with: "dsr")]), "mode 'dsr' is unknown"),
                (config([service(56003, [ep2]), service(56005, ["192.0.2.7"])]), "unreachable from this node"),
            ]
            for (i, (text, reason)) in bad.enumerated() {
                try reload(n, text, until: "refusal \(i + 1)") {
                    n.log.components(separatedBy: "config reload refused").count - 1 == i + 1
                }
                #expect(n.log.contains(reason), "\(reason)\n\(n.log.suffix(2000))")
                #expect(try served(n) == [56003: [ep2]])
            }
            #expect(n.child.isRunning)

            // A setting that needs a restart: named in the log, the services still follow the file.
            let before = reloads(n)
            try reload(n, config([service(56003, [ep2]), service(56002, [ep1])], extra: "connectionTableSize: 65536"),
                       until: "56002 back") { try served(n)[56002] == [ep1] && reloads(n) > before }
            #expect(n.log.contains("only after a restart") && n.log.contains("connectionTableSize"), "\(n.log.suffix(2000))")

            // The reloaded services are kept across a restart with the same state file, and a
            // service the file dropped comes back when the file lists it again (it was removed by
            // the file, not deleted through the API).
            try reload(n, config([service(56003, [ep2])]), until: "56002 removed again") { try served(n)[56002] == nil }
            let state = n.statePath
            n.stop()
            node = nil
            let back = try NodeDaemon(bed: bed, config: config([service(56003, [ep2]), service(56002, [ep1, ep2])]), statePath: state)
            node = back
            #expect(try served(back) == [56003: [ep2], 56002: [ep1, ep2]], "\(back.log.suffix(2000))")
        }
    }
}
