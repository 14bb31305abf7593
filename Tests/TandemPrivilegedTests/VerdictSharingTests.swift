import Foundation
import Testing
@testable import TandemAPI
import TandemAPIModels
@testable import TandemCore

extension Privileged {
    /// Endpoint verdicts shared between two real daemons (proto/SPEC.md §14.5): the MASTER's
    /// probes to ep1 fail while the BACKUP's succeed, and the BACKUP's datapath marks ep1 down
    /// anyway, with the same Maglev table as the MASTER's; ep1 comes back on both; and after a
    /// takeover the new MASTER's own (warm) probes drive its datapath.
    @Suite(.timeLimit(.minutes(5))) struct VerdictSharing {
        static let llb1 = "10.0.10.141"
        static let ep1 = "10.0.10.21"
        static let port = 56002
        /// The node's default hash seed (cluster.seed unset).
        static let seed: UInt32 = 0x7461_6e64


        /// Both nodes serve the same Maglev service, probed with tcp connects to the echo port (9000)
        /// so dropping probes does not touch the service's own port. llb1 has the higher priority.
        func config(_ role: String, key: String) -> String {
            let peer = role == "llb1" ? "10.0.10.88" : Self.llb1
            return nodeConfig(sel: "hash", extra: """
            cluster:
              peers: [\(peer)]
              keyFile: \(key)
              nodeIndex: \(role == "llb1" ? 0 : 1)
              priority: \(role == "llb1" ? 110 : 100)
            """).replacingOccurrences(of: "    name: svc\n", with: "    name: svc\n    probe: tcp:9000\n")
        }

        /// The part of `GET /netlox/v1/cluster` the test reads (this target does not link TandemHA).
        struct Cluster: Decodable {
            struct Transition: Decodable {
                var to: String
                var atUnixMs: UInt64
            }
            struct Instance: Decodable {
                var role: String
                var transitions: [Transition]
            }
            var instances: [Instance]
        }

        func cluster(_ node: NodeDaemon) throws -> Cluster {
            let a = try ControlPlane().call(node, "GET", APIRoutes.cluster)
            return try JSONDecoder().decode(Cluster.self, from: Data(a.body.utf8))
        }

        func role(_ node: NodeDaemon) throws -> String? {
            try cluster(node).instances.first?.role
        }

        /// This node's entry for ep1 of the test service.
        func ep1(_ node: NodeDaemon) throws -> EndpointHostEntry? {
            let a = try ControlPlane().call(node, "GET", APIRoutes.endpointAll)
            let list = try JSONDecoder().decode(EndpointHostList.self, from: Data(a.body.utf8)).Attr
            return list.first { $0.hostName == Self.ep1 && $0.name.hasSuffix(":\(Self.port)/tcp") }
        }

        func counters(_ node: NodeDaemon) throws -> [String: UInt64] {
            let a = try ControlPlane().call(node, "GET", APIRoutes.status)
            return try JSONDecoder().decode([String: UInt64].self, from: Data(a.body.utf8))
        }

        func waitFor(_ seconds: Double, _ check: () throws -> Bool) -> Double? {
            let start = Date()
            while Date().timeIntervalSince(start) < seconds {
                if (try? check()) == true { return Date().timeIntervalSince(start) }
                Thread.sleep(forTimeInterval: 0.02)
            }
            return nil
        }

        /// The daemon's Maglev table for slot 0, read from the kernel: its BPF maps are found
        /// through the process's descriptors (fdinfo's map_id), then read with bpftool.
        func maglev(_ node: NodeDaemon) throws -> [UInt8] {
            let pid = node.child.pid
            for fd in try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd") {
                guard (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(fd)")) == "anon_inode:bpf-map",
                      let info = try? String(contentsOfFile: "/proc/\(pid)/fdinfo/\(fd)", encoding: .utf8),
                      let line = info.split(separator: "\n").first(where: { $0.hasPrefix("map_id:") }),
                      let id = line.split(separator: "\t").last.map({ $0.trimmingCharacters(in: .whitespaces) }) else { continue }
                let show = try run(["bpftool", "map", "show", "id", id])
                guard show.stdout.contains("name tdm_maglev ") else { continue }
                let look = try run(["bpftool", "-j", "map", "lookup", "id", id, "key", "0", "0", "0", "0"])
                struct Entry: Decodable { var value: [String] }
                let entry = try JSONDecoder().decode(Entry.self, from: Data(look.stdout.utf8))
                let bytes = entry.value.compactMap { UInt8($0.dropFirst(2), radix: 16) }
                return Array(bytes.prefix(DatapathLimits.maglevM))
            }
            throw TestFailure("no tdm_maglev map among the descriptors of pid \(pid)")
        }

        func expected(down: Set<Int>) -> [UInt8] {
            Maglev.table(endpoints: [Endpoint(ip: IPv4Address(10, 0, 10, 21), port: 80),
                                     Endpoint(ip: IPv4Address(10, 0, 10, 22), port: 80)], seed: Self.seed, down: down)
        }

        /// Drops the MASTER's probes (tcp to :9000 from llb1's address) inside ep1's namespace only.
        func dropMasterProbes(_ bed: TestBed) throws {
            let r = try bed.exec("ep1", ["nft", "add table inet tdmverdict; add chain inet tdmverdict in { type filter hook input priority 0; }; add rule inet tdmverdict in ip saddr \(Self.llb1) tcp dport 9000 drop"])
            guard r.ok else { throw TestFailure("nft: \(r.stderr)") }
        }

        func liftDrop(_ bed: TestBed) {
            _ = try? bed.exec("ep1", ["nft", "delete table inet tdmverdict"])
        }

        static func ms(_ micros: UInt64?, after start: UInt64?) -> Double? {
            guard let m = micros, let s = start, m >= s else { return nil }
            return Double(m - s) / 1000
        }

        @Test func theBackupMirrorsTheMastersVerdictAndFollowsItsOwnAfterATakeover() throws {
            let bed = try TestBed(nodes: 2)
            defer { bed.down() }
            let key = try clusterKeyFile(bed, tag: "verdicts")
            defer { try? FileManager.default.removeItem(atPath: key) }
            defer { liftDrop(bed) }
            let master = try NodeDaemon(bed: bed, role: "llb1", config: config("llb1", key: key))
            defer { master.stop() }
            let backup = try NodeDaemon(bed: bed, role: "llb2", config: config("llb2", key: key))
            defer { backup.stop() }

            #expect(waitFor(20) { try role(master) == "MASTER" && role(backup) == "BACKUP" } != nil,
                    "roles: \(((try? role(master)) ?? nil) ?? "-") / \(((try? role(backup)) ?? nil) ?? "-")\n\(master.log.suffix(2000))")
            #expect(waitFor(10) { try ep1(master)?.currState == "up" && ep1(backup)?.currState == "up" } != nil)
            #expect(waitFor(5) { try maglev(master) == expected(down: []) && maglev(backup) == expected(down: []) } != nil)

            // The MASTER's probes to ep1 fail; the BACKUP's still succeed.
            try dropMasterProbes(bed)
            let mirrored = waitFor(10) {
                try ep1(backup)?.verdict == "down" && ep1(backup)?.verdictFrom == Self.llb1
            }
            #expect(mirrored != nil, "backup: \(String(describing: try? ep1(backup)))\n\(backup.log.suffix(3000))")
            let m = try #require(try ep1(master))
            let b = try #require(try ep1(backup))
            #expect(m.currState == "down" && m.verdict == "down" && m.verdictFrom == "own", "\(m)")
            #expect(b.currState == "up", "the backup's own probes still find ep1 up: \(b)")
            #expect(b.verdictSinceUnixMicros == m.verdictSinceUnixMicros, "the MASTER's transition time travels with it")
            let downMs = Self.ms(b.verdictAppliedUnixMicros, after: m.verdictSinceUnixMicros)
            print("verdict sharing: MASTER marked ep1 down; BACKUP's datapath followed \(downMs.map { String(format: "%.1f ms", $0) } ?? "-") later")
            #expect(downMs.map { $0 < 1000 } == true, "propagation \(String(describing: downMs)) ms")
            // Same Maglev table on both, without ep1, in the kernel.
            let tableM = try maglev(master), tableB = try maglev(backup)
            #expect(tableM == tableB, "the two nodes' Maglev tables differ")
            #expect(tableB == expected(down: [0]))
            #expect(backup.log.contains("a peer's endpoint verdict changed this node's datapath"))
            let shown = try backup.cli(["get", "ep"])
            #expect(shown.stdout.contains("IN FORCE") && shown.stdout.contains(Self.llb1), "\(shown.stdout)")

            // ep1 answers the MASTER again: back in rotation on both.
            liftDrop(bed)
            let back = waitFor(10) { try ep1(master)?.verdict == "up" && ep1(backup)?.verdict == "up" }
            #expect(back != nil, "\(String(describing: try? ep1(backup)))")
            let m2 = try #require(try ep1(master))
            let b2 = try #require(try ep1(backup))
            let upMs = Self.ms(b2.verdictAppliedUnixMicros, after: m2.stateChangedAtUnixMicros)
            print("verdict sharing: MASTER put ep1 back; BACKUP's datapath followed \(upMs.map { String(format: "%.1f ms", $0) } ?? "-") later")
            #expect(try maglev(master) == expected(down: []) && maglev(backup) == expected(down: []))
            let c = try counters(backup)
            #expect((c["verdicts_applied"] ?? 0) >= 2 && (c["verdicts_received"] ?? 0) >= 2, "\(c)")

            // The MASTER's probes fail again; then it leaves. The BACKUP takes over with the
            // mirrored state and switches to its own warm probes, which find ep1 up.
            try dropMasterProbes(bed)
            #expect(waitFor(10) { try ep1(backup)?.verdict == "down" } != nil)
            #expect(try maglev(backup) == expected(down: [0]))
            #expect(master.stop() == 0)
            let took = waitFor(10) { try role(backup) == "MASTER" && ep1(backup)?.verdictFrom == "own" && ep1(backup)?.verdict == "up" }
            #expect(took != nil, "\(String(describing: try? ep1(backup)))\n\(backup.log.suffix(3000))")
            let becameMaster = try cluster(backup).instances.first?.transitions.last { $0.to == "MASTER" }?.atUnixMs
            let own = try ep1(backup)?.verdictAppliedUnixMicros
            let switchMs = Self.ms(own, after: becameMaster.map { $0 * 1000 })
            print("verdict sharing: new MASTER followed its own probes \(switchMs.map { String(format: "%.1f ms", $0) } ?? "-") after taking over")
            #expect(switchMs.map { $0 < 2000 } == true, "\(String(describing: switchMs))")
            #expect(try maglev(backup) == expected(down: []))
        }
    }
}
