import Foundation
import Testing
import TandemAPIModels
import TandemStatus

/// The test bed's BGP router (testbed/bgp-lib.sh, the one ecmp.sh and failover.sh --cloud bgp
/// use): BIRD 2 in the vcn namespace, AS 65000, a direct eBGP session to each node, ECMP into the
/// vcn's kernel table (`merge paths`) with L4 hashing. What the tests read is the router's own
/// RIB and FIB.
final class BGPRouter {
    let bed: TestBed
    var socket: String { "/run/tandem-testbed/\(bed.name)/bgp/bird.ctl" }

    static let nodes = ["llb1": "10.0.10.141", "llb2": "10.0.10.88", "llb3": "10.0.10.89"]

    init(bed: TestBed, nodes: [String]) throws {
        self.bed = bed
        let r = try bgpLib("bgp_router_up \(nodes.joined(separator: " "))")
        guard r.ok else { throw TestFailure("bgp_router_up: \(r.stderr)") }
    }

    /// Runs bash with lib.sh and bgp-lib.sh sourced for this bed.
    func bgpLib(_ command: String) throws -> CommandResult {
        let lib = Env.repo.appendingPathComponent("testbed").path
        return try run(["bash", "-c", "source \(lib)/lib.sh && source \(lib)/bgp-lib.sh && \(command)"], env: ["TB": bed.name])
    }

    func birdc(_ args: [String]) throws -> String {
        try bed.exec("vcn", ["/usr/sbin/birdc", "-s", socket] + args).stdout
    }

    /// The next hops of the VIP in the vcn's kernel table, sorted.
    func nextHops(_ vip: String = "10.0.10.143") throws -> [String] {
        Self.vias(try run(["ip", "-n", bed.ns("vcn"), "route", "show", "\(vip)/32"]).stdout)
    }

    static func vias(_ text: String) -> [String] {
        let words = text.split(whereSeparator: \.isWhitespace).map(String.init)
        return zip(words, words.dropFirst()).filter { $0.0 == "via" }.map(\.1).sorted()
    }

    func down() {
        _ = try? bgpLib("bgp_router_down")
    }
}

extension Privileged {
    /// BGP through each node's own BIRD, as the router sees it (issue 17, item 6).
    @Suite(.timeLimit(.minutes(4))) struct BGPAnnouncement {

        func config(_ bed: TestBed, _ role: String, peers: [String], key: String, masterBackup: Bool = false) -> String {
            nodeConfig(mode: "fullnat", extra: """
            cluster:
              peers: [\(peers.compactMap { BGPRouter.nodes[$0] }.joined(separator: ", "))]
              keyFile: \(key)
              nodeIndex: \(role == "llb1" ? 0 : 1)
              \(masterBackup ? "cloud: bgp\n  priority: \(role == "llb1" ? 110 : 100)" : "election: false")
            bgp:
              asn: 65001
              mode: \(masterBackup ? "master-backup" : "active-active")
              holdSeconds: 3
              neighbors: [{address: 10.0.10.1, asn: 65000}]
              communities: ["65000:100"]
            \(masterBackup ? "" : "  snatAddresses: [10.0.10.201, 10.0.10.202]")
              runDirectory: \(FileManager.default.temporaryDirectory.path)/\(bed.name)-bird-\(role)
            """)
        }

        func bgp(_ node: NodeDaemon) throws -> BGPStatus {
            let r = try node.cli(["get", "bgp", "-o", "json"])
            guard r.ok else { throw TestFailure("get bgp on \(node.role): \(r.stderr)") }
            return try JSONDecoder().decode(BGPStatus.self, from: Data(r.stdout.utf8))
        }

        func inSync(_ node: NodeDaemon) throws -> Bool {
            let r = try node.cli(["get", "sync", "-o", "json"])
            return try JSONDecoder().decode(ReplicationStatus.self, from: Data(r.stdout.utf8)).inSync
        }

        func hostState(_ node: NodeDaemon, _ host: String, _ state: String) throws {
            let r = try node.api("POST", APIRoutes.endpointHostState, body: #"{"hostName":"\#(host)","state":"\#(state)"}"#)
            guard r.stdout.hasSuffix("200") else { throw TestFailure("endpointhoststate \(host) \(state): \(r.stdout)") }
        }

        /// A two-node bed with the router peering with both and a cluster key, torn down after `body`.
        func withTwoNodeBed(_ body: (TestBed, BGPRouter, String) throws -> Void) throws {
            let bed = try TestBed(nodes: 2)
            defer { bed.down() }
            let router = try BGPRouter(bed: bed, nodes: ["llb1", "llb2"])
            defer { router.down() }
            let key = try clusterKeyFile(bed, tag: "bgp")
            defer { try? FileManager.default.removeItem(atPath: key) }
            try body(bed, router, key)
        }

        @Test func activeActiveAnnouncesWhatCanBeServedAsTheRouterSeesIt() throws {
            try withTwoNodeBed { bed, router, key in
                let llb1 = try NodeDaemon(bed: bed, role: "llb1", config: config(bed, "llb1", peers: ["llb2"], key: key))
                defer { llb1.stop() }
                #expect(waitFor(15) { try router.nextHops() == ["10.0.10.141"] } != nil, "llb1's route: \((try? router.birdc(["show", "route", "all"])) ?? "")")
                let rib = try router.birdc(["show", "route", "10.0.10.143/32", "all"])
                #expect(rib.contains("BGP.med: 10"), "\(rib)")
                #expect(rib.contains("BGP.community: (65000,100)"), "\(rib)")

                // A joining node that cannot pull the table (its bulk connection to llb1 dropped)
                // stays out of sync and announces nothing, though its session is up.
                try bed.exec("llb2", ["nft", "add table ip tdmbgp; add chain ip tdmbgp out { type filter hook output priority 0; }; add rule ip tdmbgp out tcp dport 11112 drop"])
                let llb2 = try NodeDaemon(bed: bed, role: "llb2", config: config(bed, "llb2", peers: ["llb1"], key: key))
                defer { llb2.stop() }
                #expect(waitFor(15) { try bgp(llb2).sessions.first?.info == "Established" } != nil, "llb2 session: \(String(describing: try? bgp(llb2)))")
                Thread.sleep(forTimeInterval: 3)
                #expect(try !inSync(llb2))
                #expect(try router.nextHops() == ["10.0.10.141"])
                #expect(try bgp(llb2).announced.isEmpty)
                try bed.exec("llb2", ["nft", "delete table ip tdmbgp"])
                #expect(waitFor(20) { try router.nextHops() == ["10.0.10.141", "10.0.10.88"] } != nil, "after sync: \(String(describing: try? router.nextHops()))")
                #expect(try inSync(llb2))

                // Each node's fullnat source address: its own route preferred (MED 10), the peer's as
                // backup (MED 20), so replies return to the node that made the flow.
                #expect(waitFor(10) { try router.nextHops("10.0.10.201") == ["10.0.10.141"] && router.nextHops("10.0.10.202") == ["10.0.10.88"] } != nil,
                        "snat routes: \((try? router.birdc(["show", "route", "all"])) ?? "")")
                let snatRIB = try router.birdc(["show", "route", "10.0.10.201/32", "all"])
                #expect(snatRIB.contains("BGP.med: 10") && snatRIB.contains("BGP.med: 20"), "\(snatRIB)")
                // New connections spread by the router's L4 hash over both nodes, each sourced from
                // its node's address; none waits for a retransmitted SYN-ACK.
                var slowest = 0.0
                for _ in 0..<24 {
                    let r = try bed.exec("client", ["curl", "-s", "-o", "/dev/null", "-m", "3", "-w", "%{time_total}", "http://10.0.10.143:56002/"])
                    #expect(r.ok, "curl: \(r.stderr)")
                    slowest = max(slowest, Double(r.stdout) ?? 9)
                }
                #expect(slowest < 0.9, "slowest connection \(slowest) s")
                for (node, snat) in [(llb1, "10.0.10.201"), (llb2, "10.0.10.202")] {
                    let r = try node.cli(["get", "ct", "-o", "json"])
                    let own = try JSONDecoder().decode(ConntrackList.self, from: Data(r.stdout.utf8)).ctAttr.filter { !$0.learnedFromPeer }
                    #expect(!own.isEmpty, "\(node.role) made no flow: ECMP did not spread")
                    #expect(own.allSatisfy { $0.conntrackAct.hasPrefix("fsnat-\(snat),") }, "\(node.role): \(own.map(\.conntrackAct))")
                }

                // Every endpoint down: both nodes withdraw (host states reach both); up again: back.
                try hostState(llb1, "10.0.10.21", "red")
                try hostState(llb1, "10.0.10.22", "red")
                #expect(waitFor(10) { try router.nextHops().isEmpty } != nil, "all down: \(String(describing: try? router.nextHops()))")
                try hostState(llb1, "10.0.10.22", "green")
                #expect(waitFor(10) { try router.nextHops() == ["10.0.10.141", "10.0.10.88"] } != nil, "one up: \(String(describing: try? router.nextHops()))")

                // Drain: llb1 withdraws and says so; undo announces again.
                let drain = try llb1.cli(["node", "drain", "--quiet", "1", "--timeout", "20"], timeout: 30)
                #expect(drain.ok, "\(drain.stdout) \(drain.stderr)")
                #expect(drain.stdout.contains("drained"))
                #expect(try router.nextHops() == ["10.0.10.88"])
                #expect(try bgp(llb1).draining)
                _ = try llb1.cli(["node", "drain", "--undo"])
                #expect(waitFor(10) { try router.nextHops() == ["10.0.10.141", "10.0.10.88"] } != nil)

                // A stopping node ends its session with a Cease: the route goes at once.
                let t0 = Date()
                llb2.stop()
                #expect(waitFor(5) { try router.nextHops() == ["10.0.10.141"] } != nil)
                #expect(Date().timeIntervalSince(t0) < 5)
            }
        }

        /// testbed/ecmp.sh, short: three active-active nodes behind the router's ECMP; a node's
        /// death, its return and another's drain, every flow kept.
        @Test func ecmpKeepsEveryFlowThroughADeathAReturnAndADrain() throws {
            let (r, s) = try runBedScript("testbed/ecmp.sh", ["--tcp", "60", "--udp", "12", "--down", "2"], timeout: 150)
            #expect(r.status == 0 && s["ok"] as? Bool == true, "ecmp.sh: \(r.stderr.suffix(3000))")
            for proto in ["tcp", "udp"] {
                let p = s[proto] as? [String: Any]
                #expect((p?["survived"] as? NSNumber)?.intValue == (p?["total"] as? NSNumber)?.intValue, "\(proto): \(String(describing: p))")
            }
            let dropped = (s["killRouteDroppedMs"] as? NSNumber)?.intValue ?? -1
            #expect(dropped >= 0 && dropped < 1500, "route dropped \(dropped) ms after the kill (BFD 3 x 100 ms)")
        }

        @Test func masterBackupPrefersTheMasterAndFollowsATakeover() throws {
            try withTwoNodeBed { bed, router, key in
                let llb1 = try NodeDaemon(bed: bed, role: "llb1", config: config(bed, "llb1", peers: ["llb2"], key: key, masterBackup: true))
                defer { llb1.stop() }
                let llb2 = try NodeDaemon(bed: bed, role: "llb2", config: config(bed, "llb2", peers: ["llb1"], key: key, masterBackup: true))
                defer { llb2.stop() }
                // Both announce; the router's FIB holds only the MASTER's (MED 10 beats 20).
                #expect(waitFor(20) {
                    let rib = try router.birdc(["show", "route", "10.0.10.143/32", "all"])
                    return rib.contains("BGP.med: 10") && rib.contains("BGP.med: 20")
                } != nil, "rib: \((try? router.birdc(["show", "route", "all"])) ?? "")")
                let master = try router.nextHops()
                #expect(master.count == 1)
                let masterNode = master.first == "10.0.10.141" ? llb1 : llb2
                let other = masterNode === llb1 ? llb2 : llb1
                // The MASTER dies hard: its BIRD goes with it (parent-death signal), the session
                // ends, and the new MASTER's primary route takes the FIB.
                let birdConf = FileManager.default.temporaryDirectory.path + "/\(bed.name)-bird-\(masterNode.role)/bird.conf"
                kill(masterNode.child.pid, SIGKILL)
                let otherIP = BGPRouter.nodes[other.role] ?? ""
                #expect(waitFor(10) { try router.nextHops() == [otherIP] } != nil, "after the kill: \(String(describing: try? router.nextHops()))")
                #expect(waitFor(10) {
                    try router.birdc(["show", "route", "10.0.10.143/32", "all"]).contains("BGP.med: 10")
                } != nil, "the new MASTER's primary route")
                let left = try run(["pgrep", "-f", birdConf])
                #expect(!left.ok, "a BIRD outlived its daemon: \(left.stdout)")
            }
        }
    }
}
