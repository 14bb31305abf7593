import Foundation
import Testing
@testable import TandemAPI
import TandemAPIModels
import TandemSync
import TandemStatus

/// A connection as both nodes should see it: the client side and what it is rewritten to.
struct FlowID: Hashable, CustomStringConvertible {
    var source: String
    var sourcePort: Int
    var proto: String
    var act: String
    var description: String { "\(proto) \(source):\(sourcePort) \(act)" }
}

extension Privileged {
    /// Two and three real daemons in namespaces replicating their connection tables.
    @Suite(.timeLimit(.minutes(6))) struct ReplicationInTestBed {
        static let addresses = ["llb1": "10.0.10.141", "llb2": "10.0.10.88", "llb3": "10.0.10.89"]

        /// A cluster key file with mode 0600, removed by the caller.

        /// A node config: the fullnat TCP service of the seed, a UDP echo service, long timeouts so
        /// finished connections stay in the table while the test compares tables.
        func config(role: String, peers: [String], key: String) -> String {
            nodeConfig(mode: "fullnat", sel: "rr", extra: """
            timeouts: {tcpFin: 600, tcpClosed: 600, udp: 600, udpNew: 600}
            cluster:
              peers: [\(peers.compactMap { Self.addresses[$0] }.joined(separator: ", "))]
              keyFile: \(key)
              election: false  # these tests pin traffic to llb1 (active-active); failover has its own tests
            """) + """

              - externalIP: 10.0.10.143
                port: 9000
                protocol: udp
                mode: fullnat
                sel: rr
                name: echo
                endpoints:
                  - {ip: 10.0.10.21, port: 9000}
                  - {ip: 10.0.10.22, port: 9000}
            """
        }

        func start(_ bed: TestBed, _ role: String, peers: [String], key: String) throws -> NodeDaemon {
            try NodeDaemon(bed: bed, role: role, config: config(role: role, peers: peers, key: key))
        }

        func flows(_ node: NodeDaemon, learned: Bool? = nil) throws -> Set<FlowID> {
            let r = try node.cli(["get", "ct", "-o", "json"])
            guard r.ok else { throw TestFailure("get ct on \(node.role) failed: \(r.stderr)") }
            let list = try JSONDecoder().decode(ConntrackList.self, from: Data(r.stdout.utf8)).ctAttr
            return Set(list.filter { learned == nil || $0.learnedFromPeer == learned }.map {
                FlowID(source: $0.sourceIP, sourcePort: $0.sourcePort, proto: $0.protocol_, act: $0.conntrackAct)
            })
        }

        func sync(_ node: NodeDaemon) throws -> ReplicationStatus {
            let r = try node.cli(["get", "sync", "-o", "json"])
            guard r.ok else { throw TestFailure("get sync on \(node.role) failed: \(r.stderr)") }
            return try JSONDecoder().decode(ReplicationStatus.self, from: Data(r.stdout.utf8))
        }

        /// Polls until `check` holds; returns the seconds it took, or nil on timeout.
        func waitFor(_ seconds: Double, _ check: () throws -> Bool) rethrows -> Double? {
            let start = Date()
            while Date().timeIntervalSince(start) < seconds {
                if try check() { return Date().timeIntervalSince(start) }
                Thread.sleep(forTimeInterval: 0.05)
            }
            return nil
        }

        /// New TCP connections through the VIP (curl to nginx), plus UDP flows (echo flood).
        func traffic(_ bed: TestBed, tcp: Int, udpFlows: Int) throws {
            // One curl process, one new connection per URL (the server closes each).
            if tcp > 0 {
                let urls = [String](repeating: "http://10.0.10.143:56002/whoami", count: tcp)
                let r = try bed.exec("client", ["curl", "-fsS", "-m", "5", "-H", "Connection: close"] + urls, timeout: 120)
                #expect(r.ok, "curl: \(r.stderr.suffix(500))")
            }
            if udpFlows > 0 {
                let r = try bed.exec("client", [Env.echo, "flood", "--target", "10.0.10.143:9000", "--duration", "1",
                                                "--flows", "\(udpFlows)", "--rate", "2000"], timeout: 30)
                #expect(r.ok, "udp flood: \(r.stderr.suffix(500))")
            }
        }

        /// Drops `percent` of the sync datagrams arriving at a node (nftables `numgen random`: this
        /// kernel has no netem). Applied on both nodes, each direction of the link loses that much.
        func lossySyncLink(_ bed: TestBed, _ role: String, percent: Int) throws {
            let r = try bed.exec(role, ["nft", "add table inet tdmloss; "
                + "add chain inet tdmloss in { type filter hook input priority 0; }; "
                + "add rule inet tdmloss in udp dport 11112 numgen random mod 100 < \(percent) drop"])
            guard r.ok else { throw TestFailure("nft: \(r.stderr)") }
        }

        @Test func flowsThroughNodeOneAppearInNodeTwoEvenWithLossAndAfterARestart() throws {
            let bed = try TestBed(nodes: 2)
            defer { bed.down() }
            let key = try clusterKeyFile(bed)
            defer { try? FileManager.default.removeItem(atPath: key) }
            let n1 = try start(bed, "llb1", peers: ["llb2"], key: key)
            defer { n1.stop() }
            var n2 = try start(bed, "llb2", peers: ["llb1"], key: key)
            defer { n2.stop() }
            #expect(try waitFor(10) { try sync(n1).inSync && sync(n2).inSync } != nil, "\(n1.log)\n\(n2.log)")

            // 1. Plain replication: every flow node 1 tracks shows up in node 2's BPF table,
            //    marked as learned, with the same translation.
            try traffic(bed, tcp: 40, udpFlows: 10)
            let first = try flows(n1)
            #expect(first.count >= 50)
            let took = try waitFor(3) { try flows(n2, learned: true).isSuperset(of: first) }
            let missing1 = try first.subtracting(flows(n2))
            #expect(took != nil, "node 2 misses \(missing1.prefix(5))")
            print("replication: \(first.count) flows in node 2 within \(String(format: "%.2f", took ?? -1)) s")

            // 2. 20 % loss on the sync link: acks, nacks and retransmissions repair it.
            try lossySyncLink(bed, "llb1", percent: 20)
            try lossySyncLink(bed, "llb2", percent: 20)
            try traffic(bed, tcp: 200, udpFlows: 20)
            let second = try flows(n1)
            let tookLossy = try waitFor(20) { try flows(n2, learned: true).isSuperset(of: second) }
            let missing2 = try second.subtracting(flows(n2))
            #expect(tookLossy != nil, "with loss, node 2 misses \(missing2.count) flows")
            let s1 = try sync(n1), s2 = try sync(n2)
            #expect(s2.counters.nacksSent > 0 || s2.counters.antiEntropyRepaired > 0)
            #expect(s1.counters.retransmittedEntries > 0 || s2.counters.antiEntropyRepaired > 0)
            print("with 20% loss: \(second.count) flows converged in \(String(format: "%.2f", tookLossy ?? -1)) s; "
                  + "nacks \(s2.counters.nacksSent), retransmitted \(s1.counters.retransmittedEntries)")
            for role in ["llb1", "llb2"] { _ = try bed.exec(role, ["nft", "delete", "table", "inet", "tdmloss"]) }

            // 3. Node 2 restarts with an empty table and gets everything back by bulk transfer,
            //    reporting in sync only then.
            #expect(n2.stop() == 0)
            n2 = try start(bed, "llb2", peers: ["llb1"], key: key)
            let third = try flows(n1)
            let tookBulk = try waitFor(10) { try sync(n2).inSync && flows(n2, learned: true).isSuperset(of: third) }
            let missing3 = try third.subtracting(flows(n2))
            #expect(tookBulk != nil, "after restart node 2 misses \(missing3.count) flows")
            let s = try sync(n2)
            #expect(s.counters.bulkTransfersCompleted >= 1)
            #expect(s.counters.bulkEntriesReceived >= UInt64(third.count))
            print("restart: \(third.count) flows back by bulk transfer in \(String(format: "%.2f", tookBulk ?? -1)) s")

            // Nothing learned was echoed back: node 2 sent no deltas of its own.
            #expect(try sync(n2).counters.entriesSent == 0)
            #expect(try flows(n1, learned: true).isEmpty)
        }

        /// Three nodes; node 3 hears nothing at all from node 1 (so no deltas), and still ends up
        /// with every flow, through anti-entropy with node 2.
        @Test func aNodeCutOffFromTheDeltaStreamConvergesThroughAntiEntropy() throws {
            let bed = try TestBed(nodes: 3)
            defer { bed.down() }
            let key = try clusterKeyFile(bed)
            defer { try? FileManager.default.removeItem(atPath: key) }
            let n1 = try start(bed, "llb1", peers: ["llb2", "llb3"], key: key)
            defer { n1.stop() }
            let n2 = try start(bed, "llb2", peers: ["llb1", "llb3"], key: key)
            defer { n2.stop() }
            let n3 = try start(bed, "llb3", peers: ["llb1", "llb2"], key: key)
            defer { n3.stop() }
            #expect(try waitFor(10) { try [n1, n2, n3].allSatisfy { try sync($0).inSync } } != nil)
            let cut = try bed.exec("llb3", ["nft", "add table inet tdmcut; add chain inet tdmcut in { type filter hook input priority 0; }; add rule inet tdmcut in ip saddr 10.0.10.141 udp dport 11112 drop"])
            #expect(cut.ok, "nft: \(cut.stderr)")
            try traffic(bed, tcp: 60, udpFlows: 10)
            let all = try flows(n1)
            #expect(try waitFor(3) { try flows(n2, learned: true).isSuperset(of: all) } != nil)
            let took = try waitFor(20) { try flows(n3, learned: true).isSuperset(of: all) }
            let missing = try all.subtracting(flows(n3))
            #expect(took != nil, "node 3 misses \(missing.count) of \(all.count)")
            let s3 = try sync(n3)
            let fromNode1 = s3.peers.first { $0.address.hasPrefix("10.0.10.141") }
            #expect(fromNode1?.streamCumulative == nil || fromNode1?.streamCumulative == 0, "no delta from node 1 arrived")
            #expect(s3.counters.antiEntropyRepaired > 0)
            print("anti-entropy: node 3 converged on \(all.count) flows in \(String(format: "%.2f", took ?? -1)) s, "
                  + "repaired \(s3.counters.antiEntropyRepaired), pulls \(s3.counters.antiEntropyPulls)")
        }
    }
}
