import Foundation
import Testing

extension Privileged {
    /// The reboot-the-master story end to end: two daemons electing over gossip, real flows through
    /// the floating IP, a node killed with its link taken down (testbed/failover.sh).
    @Suite(.timeLimit(.minutes(10))) struct Failover {
        /// Runs testbed/failover.sh under a unique test-bed name; returns its JSON summary.
        func failover(_ args: [String], timeout: TimeInterval = 240) throws -> [String: Any] {
            let (r, summary) = try runBedScript("testbed/failover.sh", args, timeout: timeout)
            #expect(r.status == 0, "failover.sh failed: \(r.stderr.suffix(4000))")
            return summary
        }

        func count(_ s: [String: Any], _ proto: String, _ key: String) -> Int {
            ((s[proto] as? [String: Any])?[key] as? NSNumber)?.intValue ?? -1
        }

        func checkAllSurvived(_ s: [String: Any]) {
            #expect(s["ok"] as? Bool == true)
            for proto in ["tcp", "udp", "late"] {
                let total = count(s, proto, "total")
                #expect(total > 0, "no \(proto) flows ran")
                #expect(count(s, proto, "survived") == total, "\(proto): \(count(s, proto, "survived")) of \(total) survived")
            }
        }

        @Test func rebootTheMasterTwiceL2() throws {
            let plot = NSTemporaryDirectory() + "tdm-failover-\(UUID().uuidString.prefix(8)).png"
            defer { try? FileManager.default.removeItem(atPath: plot) }
            let s = try failover(["--tcp", "40", "--udp", "10", "--rounds", "2", "--cloud", "l2", "--down", "2", "--plot", plot])
            checkAllSurvived(s)
            // The timeline plot of round 1: a PNG (matplotlib installed by the script if missing).
            let png = FileManager.default.contents(atPath: plot) ?? Data()
            #expect(png.count > 10_000 && png.prefix(4) == Data([0x89, 0x50, 0x4e, 0x47]), "no timeline plot at \(plot)")
            #expect((s["reassertsOnReturn"] as? NSNumber)?.intValue == 0, "a returning peer made the MASTER move the IP again")
            // Takeover within a second of the kill (the target), with room for a loaded CI machine.
            for round in s["perRound"] as? [[String: Any]] ?? [] {
                let take = (round["takeoverMs"] as? NSNumber)?.intValue ?? -1
                #expect(take >= 0 && take < 1500, "takeover \(take) ms after the kill")
                let dead = (round["detectedMs"] as? NSNumber)?.intValue ?? -1
                #expect(dead >= 0 && dead < 1000, "death declared \(dead) ms after the kill")
                #expect(round["returnedAs"] as? String == "BACKUP", "the old master preempted")
            }
        }

        @Test func restartingTheBackupLeavesTheMastersFlowsAlone() throws {
            let s = try failover(["--tcp", "30", "--udp", "10", "--rounds", "1", "--cloud", "l2", "--victim", "backup",
                                  "--down", "1"])
            checkAllSurvived(s)
            let round = (s["perRound"] as? [[String: Any]])?.first ?? [:]
            #expect(round["survivorRole"] as? String == "MASTER")
            // The MASTER's flows must not even notice: no stall near a detection timeout.
            let stall = (s["longestStallMs"] as? NSNumber)?.doubleValue ?? .infinity
            #expect(stall < 1000, "longest stall \(stall) ms while only the BACKUP restarted")
        }

        /// A slow return (proxy-ARP delay, its first second of packets dropped) must not leave
        /// the returned node in sync with an empty table: the second round makes it the MASTER,
        /// so every flow of that round depends on what it learned. (Its sync socket, closed by the
        /// refused first hello, was never bound again: one round in four lost up to every flow.)
        @Test func aSlowReturnStillLearnsEveryFlowBeforeItServes() throws {
            let s = try failover(["--tcp", "30", "--udp", "10", "--rounds", "2", "--cloud", "l2", "--down", "1",
                                  "--slow-start"])
            checkAllSurvived(s)
            #expect((s["unaskedRoleChanges"] as? NSNumber)?.intValue == 0)
        }

        @Test func rebootTheMasterThroughFakeOCI() throws {
            let s = try failover(["--tcp", "30", "--udp", "10", "--rounds", "1", "--cloud", "oci", "--down", "2"])
            checkAllSurvived(s)
            let round = (s["perRound"] as? [[String: Any]])?.first ?? [:]
            let take = (round["takeoverMs"] as? NSNumber)?.intValue ?? -1
            #expect(take >= 0 && take < 2000, "OCI takeover \(take) ms after the kill")
        }

        /// The master-backup form over BGP: a BIRD router in the vcn, BFD; the MASTER's MED 10 route
        /// gives way to the survivor's once BFD drops the dead node's session.
        @Test func rebootTheMasterThroughBGP() throws {
            let s = try failover(["--tcp", "30", "--udp", "10", "--rounds", "1", "--cloud", "bgp", "--down", "2"])
            checkAllSurvived(s)
            let round = (s["perRound"] as? [[String: Any]])?.first ?? [:]
            let take = (round["takeoverMs"] as? NSNumber)?.intValue ?? -1
            #expect(take >= 0 && take < 2000, "BGP route moved \(take) ms after the kill")
        }

        /// testbed/restart.sh, short: graceful restarts of the MASTER and the BACKUP change no role
        /// and lose no flow; a crash of the MASTER's daemon is a failover that loses no flow.
        @Test func gracefulRestartsChangeNoRoleAndLoseNoFlow() throws {
            let name = "t" + String(UUID().uuidString.lowercased().filter { $0.isLetter || $0.isNumber }.prefix(5))
            let r = try run(["bash", Env.repo.appendingPathComponent("testbed/restart.sh").path, "--tcp", "40", "--udp", "10",
                             "--graceful", "2", "--crash", "1", "--backup", "1", "--baseline", "0", "--settle", "1"],
                            env: ["TB": name, "TANDEM_BIN": Env.bin.path], timeout: 240)
            defer { _ = try? run(["bash", Env.repo.appendingPathComponent("testbed/down.sh").path], env: ["TB": name]) }
            let line = r.stdout.split(separator: "\n").last.map(String.init) ?? ""
            let s = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] ?? [:]
            #expect(r.status == 0, "restart.sh failed: \(r.stderr.suffix(4000))")
            #expect(s["ok"] as? Bool == true, "\(line)")
            #expect((s["gracefulRoleChanges"] as? NSNumber)?.intValue == 0, "\(line)")
            for proto in ["tcp", "udp"] {
                let p = s[proto] as? [String: Any] ?? [:]
                let total = (p["total"] as? NSNumber)?.intValue ?? -1
                #expect(total > 0 && (p["survived"] as? NSNumber)?.intValue == total, "\(proto): \(p)")
            }
            // No failover-sized stall in a graceful restart (a loaded CI machine has its own stalls).
            let stall = (s["longestStallGracefulMs"] as? NSNumber)?.doubleValue ?? .infinity
            #expect(stall < 1000, "longest stall \(stall) ms in graceful restarts")
            // The pins went with the bed: nothing left under the bed's bpffs after it is torn down.
        }

        @Test func saturatedCoresDeclareNobodyDead() throws {
            let name = "t" + String(UUID().uuidString.lowercased().filter { $0.isLetter || $0.isNumber }.prefix(5))
            let r = try run(["bash", Env.repo.appendingPathComponent("testbed/saturate.sh").path, "--duration", "20"],
                            env: ["TB": name, "TANDEM_BIN": Env.bin.path], timeout: 120)
            defer { _ = try? run(["bash", Env.repo.appendingPathComponent("testbed/down.sh").path], env: ["TB": name]) }
            #expect(r.status == 0, "saturate.sh failed: \(r.stdout) \(r.stderr.suffix(3000))")
            let line = r.stdout.split(separator: "\n").last.map(String.init) ?? ""
            let s = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] ?? [:]
            #expect((s["deathsAndTransitions"] as? NSNumber)?.intValue == 0, "\(line)")
        }

        /// Runs a test-bed script that exits 0 only if its scenario held.
        func scenario(_ script: String, timeout: TimeInterval = 180) throws {
            let name = "t" + String(UUID().uuidString.lowercased().filter { $0.isLetter || $0.isNumber }.prefix(5))
            let r = try run(["bash", Env.repo.appendingPathComponent("testbed/\(script)").path],
                            env: ["TB": name, "TANDEM_BIN": Env.bin.path], timeout: timeout)
            defer { _ = try? run(["bash", Env.repo.appendingPathComponent("testbed/down.sh").path], env: ["TB": name]) }
            #expect(r.status == 0, "\(script) failed: \(r.stderr.suffix(4000))")
        }

        @Test func partitionThenHealLeavesOneMasterOwningTheVIP() throws {
            try scenario("partition.sh")
        }

        @Test func cistateForcesAndReleasesMastership() throws {
            try scenario("cistate.sh")
        }
    }
}
