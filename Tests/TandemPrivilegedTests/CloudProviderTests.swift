import Foundation
import Testing

extension Privileged {
    /// The l2 cloud provider through the real `tandem cloud` CLI, in namespaces on one bridge:
    /// the VIP moves from b to a and c's neighbour table follows a's gratuitous ARP.
    @Suite(.timeLimit(.minutes(2))) struct CloudL2 {
        static let vip = "10.77.0.100"

        /// Hosts (namespaces `<prefix>-<host>`, each with eth0 = 10.77.0.N/24) on a bridge in
        /// `<prefix>-br`. Everything is deleted by `down()`, which every test defers.
        final class Segment {
            let prefix: String
            let hosts: [String]

            init(hosts: [String]) throws {
                let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789")
                prefix = "t" + String((0..<5).map { _ in alphabet[Int.random(in: 0..<alphabet.count)] })
                self.hosts = hosts
                do { try build() } catch {
                    down()
                    throw error
                }
            }

            func ns(_ host: String) -> String { "\(prefix)-\(host)" }

            private func must(_ args: [String]) throws {
                let r = try run(args, timeout: 10)
                guard r.ok else { throw TestFailure("\(args.joined(separator: " ")): \(r.stderr)") }
            }

            private func build() throws {
                let bridge = ns("br")
                try must(["ip", "netns", "add", bridge])
                try must(["ip", "-n", bridge, "link", "add", "br0", "type", "bridge"])
                try must(["ip", "-n", bridge, "link", "set", "br0", "up"])
                for (i, host) in hosts.enumerated() {
                    try must(["ip", "netns", "add", ns(host)])
                    try must(["ip", "link", "add", "eth0", "netns", ns(host), "type", "veth",
                              "peer", "name", "v-\(host)", "netns", bridge])
                    try must(["ip", "-n", bridge, "link", "set", "v-\(host)", "master", "br0", "up"])
                    try must(["ip", "-n", ns(host), "addr", "add", "10.77.0.\(i + 1)/24", "dev", "eth0"])
                    try must(["ip", "-n", ns(host), "link", "set", "eth0", "up"])
                    try must(["ip", "-n", ns(host), "link", "set", "lo", "up"])
                }
            }

            @discardableResult
            func exec(_ host: String, _ args: [String], timeout: TimeInterval = 15) throws -> CommandResult {
                try run(["ip", "netns", "exec", ns(host)] + args, timeout: timeout)
            }

            func tandem(_ host: String, _ args: [String], timeout: TimeInterval = 15) throws -> CommandResult {
                try exec(host, [Env.tandem, "cloud"] + args, timeout: timeout)
            }

            func mac(_ host: String) throws -> String {
                let r = try run(["ip", "-j", "-n", ns(host), "link", "show", "dev", "eth0"])
                guard r.ok, let list = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]],
                      let mac = list.first?["address"] as? String else { throw TestFailure("no MAC for \(host): \(r.stderr)") }
                return mac.lowercased()
            }

            /// IPv4 addresses on the host's eth0, as "A/LEN".
            func addresses(_ host: String) throws -> [String] {
                let r = try run(["ip", "-j", "-4", "-n", ns(host), "addr", "show", "dev", "eth0"])
                guard r.ok, let list = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]]
                else { throw TestFailure("ip addr on \(host): \(r.stderr)") }
                let infos = list.flatMap { ($0["addr_info"] as? [[String: Any]]) ?? [] }
                return infos.compactMap { info in
                    guard let local = info["local"] as? String, let len = info["prefixlen"] as? Int else { return nil }
                    return "\(local)/\(len)"
                }
            }

            func neighbour(_ host: String, _ ip: String) throws -> String {
                try run(["ip", "-n", ns(host), "neigh", "show", ip, "dev", "eth0"]).stdout.lowercased()
            }

            /// Waits until the bridge forwards between the first host and every other one.
            func waitForForwarding() throws {
                for (i, host) in hosts.enumerated() where i > 0 {
                    let deadline = Date().addingTimeInterval(10)
                    while true {
                        if try exec(host, ["ping", "-c1", "-W1", "10.77.0.1"], timeout: 5).ok { break }
                        if Date() > deadline { throw TestFailure("\(host) cannot reach 10.77.0.1 over the bridge") }
                        Thread.sleep(forTimeInterval: 0.1)
                    }
                }
            }

            /// Kills whatever still runs in the namespaces, then deletes them. Never fails.
            func down() {
                for name in hosts.map(ns) + [ns("br")] {
                    let pids = (try? run(["ip", "netns", "pids", name], timeout: 5))?.stdout
                        .split(whereSeparator: \.isWhitespace).compactMap { pid_t($0) } ?? []
                    for pid in pids { kill(pid, SIGKILL) }
                    _ = try? run(["ip", "netns", "del", name], timeout: 10)
                }
            }
        }

        func requireBinary() throws {
            guard FileManager.default.isExecutableFile(atPath: Env.tandem) else {
                throw TestFailure("\(Env.tandem) is not built (swift build first, or set TANDEM_BIN_DIR)")
            }
        }

        /// b holds the VIP and c talks to it; a takes it over with the gratuitous ARP schedule while b
        /// releases it: c's neighbour entry must point at a within 500 ms, and c reaches a.
        @Test func takeoverMovesTheNeighbourEntryToTheNewOwner() throws {
            try requireBinary()
            let seg = try Segment(hosts: ["a", "b", "c"])
            defer { seg.down() }
            try seg.waitForForwarding()
            let macA = try seg.mac("a"), macB = try seg.mac("b")

            let first = try seg.tandem("b", ["assign-vip", "--cloud=l2", "--vip", Self.vip, "--interface", "eth0", "--no-wait"])
            #expect(first.ok, "assign-vip on b: \(first.stderr)")
            #expect(try seg.addresses("b").contains("\(Self.vip)/32"))
            let ping1 = try seg.exec("c", ["ping", "-c1", "-W2", Self.vip], timeout: 10)
            #expect(ping1.ok, "c cannot reach the VIP on b: \(ping1.stdout)")
            let before = try seg.neighbour("c", Self.vip)
            #expect(before.contains(macB), "c's neighbour entry before the move: \(before)")

            // a takes over (and keeps announcing for 3 s); b lets go.
            let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("\(seg.prefix)-assign").path
            defer {
                try? FileManager.default.removeItem(atPath: tmp + ".out")
                try? FileManager.default.removeItem(atPath: tmp + ".err")
            }
            let started = Date()
            let assign = try Child(["ip", "netns", "exec", seg.ns("a"), Env.tandem, "cloud", "assign-vip", "--cloud=l2",
                                    "--vip", Self.vip, "--interface", "eth0"], outPath: tmp + ".out", errPath: tmp + ".err")
            defer { if assign.isRunning { kill(assign.pid, SIGKILL); assign.wait(timeout: 5) } }
            let release = try seg.tandem("b", ["release-vip", "--cloud=l2", "--vip", Self.vip, "--interface", "eth0"])
            #expect(release.ok, "release-vip on b: \(release.stderr)")

            // Timed from when a holds the address (the provider's work; the CLI's start-up before it
            // varies with the machine's load), bounded from the launch as well.
            var held: Double?
            var moved: Double?
            var entry = ""
            while Date().timeIntervalSince(started) < 3 {
                if held == nil, try seg.addresses("a").contains("\(Self.vip)/32") { held = Date().timeIntervalSince(started) }
                entry = try seg.neighbour("c", Self.vip)
                if entry.contains(macA) {
                    moved = Date().timeIntervalSince(started)
                    break
                }
                Thread.sleep(forTimeInterval: 0.005)
            }
            let ms = { (t: Double?) in t.map { String(Int($0 * 1000)) } ?? "never" }
            let lag = moved.map { $0 - (held ?? 0) }
            #expect(moved != nil && (lag ?? 1) <= 0.5,
                    "c's entry for the VIP: '\(entry)'; a held the VIP after \(ms(held)) ms, c saw a's MAC after \(ms(moved)) ms")
            print("l2 takeover: a held the VIP \(ms(held)) ms and c's neighbour entry showed a's MAC \(ms(moved)) ms after assign-vip started")

            #expect(!(try seg.addresses("b").contains("\(Self.vip)/32")), "b still holds the VIP")
            #expect(try seg.addresses("a").contains("\(Self.vip)/32"), "a does not hold the VIP")
            let ping2 = try seg.exec("c", ["ping", "-c2", "-W2", Self.vip], timeout: 10)
            #expect(ping2.ok, "c cannot reach the VIP on a: \(ping2.stdout)")
            let after = try seg.neighbour("c", Self.vip)
            #expect(after.contains(macA), "c's neighbour entry after the ping: \(after)")

            // The whole announcement schedule (3 s) runs before assign-vip exits.
            let timedOut = assign.wait(timeout: 15)
            #expect(!timedOut && assign.status == 0, "assign-vip on a: \(assign.stdout) \(assign.stderr)")
            #expect(assign.stdout.contains("gratuitous ARP schedule done"), "\(assign.stdout)")
            #expect(Date().timeIntervalSince(started) >= 3, "assign-vip returned before the schedule's last round")

            // Both operations are idempotent.
            #expect(try seg.tandem("b", ["release-vip", "--cloud=l2", "--vip", Self.vip, "--interface", "eth0"]).ok)
            #expect(try seg.tandem("a", ["assign-vip", "--cloud=l2", "--vip", Self.vip, "--interface", "eth0", "--no-wait"]).ok)
            #expect(try seg.addresses("a").filter { $0 == "\(Self.vip)/32" }.count == 1)
        }

        /// Bad input fails with a clear message, a non-zero exit, and leaves the addresses alone.
        @Test func badInputFailsClearlyAndChangesNothing() throws {
            try requireBinary()
            let seg = try Segment(hosts: ["a"])
            defer { seg.down() }
            let before = try seg.addresses("a")

            let missing = try seg.tandem("a", ["assign-vip", "--cloud=l2", "--vip", Self.vip, "--interface", "nosuch0"])
            #expect(!missing.ok)
            #expect(missing.stderr.contains("interface nosuch0 does not exist"), "stderr: \(missing.stderr)")

            let malformed = try seg.tandem("a", ["assign-vip", "--cloud=l2", "--vip", "10.77.0.300", "--interface", "eth0"])
            #expect(!malformed.ok)
            #expect(malformed.stderr.contains("not an IPv4 address"), "stderr: \(malformed.stderr)")

            let noInterface = try seg.tandem("a", ["assign-vip", "--cloud=l2", "--vip", Self.vip])
            #expect(!noInterface.ok)
            #expect(noInterface.stderr.contains("--interface"), "stderr: \(noInterface.stderr)")

            let unknown = try seg.tandem("a", ["assign-vip", "--cloud=azure", "--vip", Self.vip])
            #expect(!unknown.ok)
            #expect(unknown.stderr.contains("unknown cloud 'azure'"), "stderr: \(unknown.stderr)")

            let notEthernet = try seg.tandem("a", ["assign-vip", "--cloud=l2", "--vip", Self.vip, "--interface", "lo"])
            #expect(!notEthernet.ok)
            #expect(notEthernet.stderr.contains("not Ethernet"), "stderr: \(notEthernet.stderr)")

            #expect(try seg.addresses("a") == before)
            let lo = try seg.exec("a", ["ip", "-4", "addr", "show", "dev", "lo"])
            #expect(!lo.stdout.contains(Self.vip))
        }

        /// `tandem cloud check --cloud=l2` passes on a working interface and fails on a missing one.
        @Test func checkPassesOnAWorkingInterface() throws {
            try requireBinary()
            let seg = try Segment(hosts: ["a"])
            defer { seg.down() }
            let ok = try seg.tandem("a", ["check", "--cloud=l2", "--interface", "eth0", "--vip", Self.vip])
            #expect(ok.ok, "check: \(ok.stdout) \(ok.stderr)")
            for name in ["interface", "link", "privileges", "netlink", "packet-socket", "vip-address"] {
                #expect(ok.stdout.contains("[OK] \(name):"), "\(name) in: \(ok.stdout)")
            }
            #expect(!ok.stdout.contains("[FAIL]"))
            #expect(try seg.addresses("a") == ["10.77.0.1/24"], "check changed the interface")

            let bad = try seg.tandem("a", ["check", "--cloud=l2", "--interface", "nosuch0"])
            #expect(!bad.ok)
            #expect(bad.stdout.contains("[FAIL] interface: interface nosuch0 does not exist"), "\(bad.stdout)")
        }
    }
}
