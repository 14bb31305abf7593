import Foundation
import Testing

extension Privileged {
    /// testbed/natgw.sh, smaller than its default: two nftables NAT gateways kept HA by Tandem in
    /// conntrack-only mode, long-lived flows both ways through masquerade and a port forward, and
    /// the MASTER gateway rebooted. The control run without replication must break the TCP flows,
    /// or the other runs would prove nothing.
    @Suite(.timeLimit(.minutes(10))) struct NATGatewayFailover {
        /// Runs testbed/natgw.sh under a unique test-bed name; returns its JSON summary and exit status.
        func natgw(_ args: [String], timeout: TimeInterval = 240) throws -> (summary: [String: Any], status: Int32, log: String) {
            let name = "t" + String(UUID().uuidString.lowercased().filter { $0.isLetter || $0.isNumber }.prefix(5))
            let r = try run(["bash", Env.repo.appendingPathComponent("testbed/natgw.sh").path] + args,
                            env: ["TB": name, "TANDEM_BIN": Env.bin.path], timeout: timeout)
            defer { _ = try? run(["bash", Env.repo.appendingPathComponent("testbed/down.sh").path], env: ["TB": name]) }
            let line = r.stdout.split(separator: "\n").last.map(String.init) ?? ""
            guard let summary = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] else {
                throw TestFailure("natgw.sh printed no summary (exit \(r.status), timed out \(r.timedOut)): \(r.stderr.suffix(4000))")
            }
            return (summary, r.status, String(r.stderr.suffix(4000)))
        }

        func counts(_ s: [String: Any], _ proto: String) -> (survived: Int, total: Int) {
            let p = s[proto] as? [String: Any] ?? [:]
            return ((p["survived"] as? NSNumber)?.intValue ?? -1, (p["total"] as? NSNumber)?.intValue ?? -1)
        }

        func checkEveryFlowSurvived(_ r: (summary: [String: Any], status: Int32, log: String), rounds: Int) {
            let s = r.summary
            #expect(r.status == 0, "natgw.sh failed: \(r.log)")
            #expect(s["ok"] as? Bool == true)
            #expect((s["rounds"] as? NSNumber)?.intValue == rounds)
            for proto in ["tcp", "udp"] {
                let c = counts(s, proto)
                #expect(c.total > 0 && c.survived == c.total, "\(proto): \(c.survived) of \(c.total) survived")
            }
            // Both directions ran: inside-out through the masquerade, outside-in through the forward.
            let flows = s["flows"] as? [String: Any] ?? [:]
            for key in ["inTcp", "outTcp", "inUdp", "outUdp"] {
                let f = flows[key] as? [String: Any] ?? [:]
                #expect(((f["total"] as? NSNumber)?.intValue ?? 0) > 0, "no \(key) flows ran")
            }
            // Replicated entries are valid on the new MASTER: nftables' ct state invalid rule
            // dropped nothing, and the sink wrote every entry.
            #expect((s["invalidDrops"] as? NSNumber)?.intValue == 0, "invalid drops \(s["invalidDrops"] ?? "?")")
            #expect((s["sinkFailures"] as? NSNumber)?.intValue == 0, "sink failures \(s["sinkFailures"] ?? "?")")
            for round in s["perRound"] as? [[String: Any]] ?? [] {
                #expect(round["returnedAs"] as? String == "BACKUP", "the old MASTER preempted: \(round)")
                let take = (round["takeoverMs"] as? NSNumber)?.intValue ?? -1
                #expect(take >= 0 && take < 3000, "takeover \(take) ms after the kill")
            }
        }

        @Test func everyFlowSurvivesTwoRebootsOfTheMasterL2() throws {
            let r = try natgw(["--cloud", "l2", "--tcp", "30", "--udp", "10", "--forward", "6", "--forward-udp", "2",
                               "--rounds", "2"])
            checkEveryFlowSurvived(r, rounds: 2)
        }

        @Test func everyFlowSurvivesARebootThroughFakeOCI() throws {
            let r = try natgw(["--cloud", "oci", "--tcp", "20", "--udp", "6", "--forward", "4", "--forward-udp", "2",
                               "--rounds", "1"])
            checkEveryFlowSurvived(r, rounds: 1)
        }

        /// Hold mode: the standby keeps the entries in memory and commits them at the takeover,
        /// before the floating address moves.
        @Test func holdModeCommitsBeforeTheAddressMoves() throws {
            let r = try natgw(["--cloud", "l2", "--hold", "--tcp", "20", "--udp", "6", "--forward", "4", "--forward-udp", "2",
                               "--rounds", "1"])
            checkEveryFlowSurvived(r, rounds: 1)
            #expect(r.summary["conntrackMode"] as? String == "hold")
        }

        /// The control: with a filter that replicates nothing the same reboot breaks every TCP
        /// flow (the new MASTER drops their packets as ct state invalid) while UDP flows, whose
        /// entries are made anew, survive. natgw.sh exits 0 only when exactly that happens.
        @Test func withoutReplicationTheTCPFlowsBreak() throws {
            let r = try natgw(["--cloud", "l2", "--no-sync", "--tcp", "20", "--udp", "6", "--forward", "4", "--forward-udp", "2",
                               "--rounds", "1"])
            #expect(r.status == 0, "natgw.sh --no-sync: \(r.log)")
            #expect(r.summary["noSync"] as? Bool == true && r.summary["ok"] as? Bool == true)
            let tcp = counts(r.summary, "tcp"), udp = counts(r.summary, "udp")
            #expect(tcp.total > 0 && tcp.survived == 0, "TCP \(tcp.survived) of \(tcp.total) survived without replication")
            #expect(udp.total > 0 && udp.survived == udp.total, "UDP \(udp.survived) of \(udp.total)")
            #expect(((r.summary["invalidDrops"] as? NSNumber)?.intValue ?? 0) > 0, "the broken flows left no invalid drops")
        }
    }
}
