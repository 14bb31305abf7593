import Foundation
import Logging
import TandemConntrack
import TandemCore
import TandemKernelSync
import TandemSealing
import Testing

extension Privileged {
    /// Kernel conntrack sync end to end: two nftables NAT gateways in namespaces, each with its
    /// own source, replication shell (on loopback: 127.0.0.1 and 127.0.0.2) and sink. Real
    /// traffic through g1 makes the entries; they reach g2 (its kernel, or its held set) with
    /// their NAT mappings, the filter keeps a marked flow out, nothing echoes back, and after the
    /// gateway's addresses move to g2 the replicated flows carry on while the filtered one breaks.
    /// The departing gateway's kernel kills its masqueraded entries when its interfaces go; a
    /// node that stepped down does not send those on. Through the whole pipe, too: an overrun of
    /// the source's event socket is recovered by a resync that reaches the peer, and deletes
    /// (a flush of 20,000 entries) empty the peer's copies.
    @Suite(.timeLimit(.minutes(2))) struct KernelTableSync {
        static func wait(_ seconds: Double, _ condition: () throws -> Bool) rethrows -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline {
                if try condition() { return true }
                Thread.sleep(forTimeInterval: 0.05)
            }
            return try condition()
        }

        static func table(_ ns: String) throws -> [KernelConnection] {
            try TandemConntrack.ConntrackSink.readTable(netnsPath: "/run/netns/\(ns)")
        }

        @Test(arguments: [ConntrackSinkCore.Mode.inject, .hold])
        func flowsThroughAGatewaySurviveItsTakeover(mode: ConntrackSinkCore.Mode) async throws {
            let started = Date()
            let bed = try NATGatewayBed(prefix: "tks")
            defer { bed.down() }
            let key = try #require(ClusterKey(bytes: (0..<32).map { UInt8($0 * 7 % 256) }))
            let port = UInt16.random(in: 30000...39999)
            let a1 = IPv4Address(127, 0, 0, 1), a2 = IPv4Address(127, 0, 0, 2)
            // Flows marked 0x1 (to the server's :81) are left out.
            let filter = try ConntrackFilter(config: .init(marks: ["0x0/0x1"]))
            var logger = Logger(label: "kernel-sync-test")
            logger.logLevel = .warning
            let g1 = try await TandemKernelSync.KernelTableSync.start(
                .init(selfAddress: a1, peers: [a2], port: port, key: key, filter: filter, netnsPath: "/run/netns/\(bed.g1)"),
                logger: logger)
            let g2: TandemKernelSync.KernelTableSync
            do {
                g2 = try await TandemKernelSync.KernelTableSync.start(
                    .init(selfAddress: a2, peers: [a1], port: port, key: key, mode: mode, filter: filter,
                          netnsPath: "/run/netns/\(bed.g2)"),
                    logger: logger)
            } catch {
                await g1.stop()
                throw error
            }
            func stopBoth() async {
                await g2.stop()
                await g1.stop()
            }
            do {
                #expect(Self.wait(5) { g1.inSync && g2.inSync }, "both in sync")
                let clients = [try bed.startClient(in: bed.c, to: "10.79.2.2", port: 80, pings: 100),
                               try bed.startClient(in: bed.c, to: "10.79.2.2", port: 81, pings: 100),
                               try bed.startClient(in: bed.server, to: "10.79.2.1", port: 8080, pings: 100)]
                let isReplicated: (KernelConnection) -> Bool = { $0.original.destinationID == 80 || $0.original.destinationID == 8080 }
                // On g1: both TCP flows established.
                #expect(try Self.wait(5) {
                    try Self.table(bed.g1).filter { isReplicated($0) && $0.tcp?.state == .established }.count == 2
                }, "g1's table: \((try? Self.table(bed.g1)) ?? [])")
                let onG1 = try Self.table(bed.g1).filter { isReplicated($0) }
                if mode == .inject {
                    // Injected as they arrive: the same tuples (NAT mappings), state and mark on g2.
                    #expect(try Self.wait(5) { try Self.table(bed.g2).filter { isReplicated($0) }.count == 2 },
                            "g2's table: \((try? Self.table(bed.g2)) ?? [])")
                    let onG2 = try Self.table(bed.g2)
                    for e in onG1 {
                        let copy = onG2.first { $0.key == e.key }
                        #expect(copy?.reply == e.reply, "\(e) on g2: \(String(describing: copy))")
                        #expect(copy?.nat == e.nat && copy?.mark == e.mark && copy?.tcp?.state == e.tcp?.state)
                    }
                    #expect(!onG2.contains { $0.original.destinationID == 81 }, "the filtered flow reached g2")
                } else {
                    // Held: in memory, not in the kernel, until the takeover.
                    #expect(Self.wait(5) { g2.sink.heldCount >= 2 }, "held \(g2.sink.heldCount)")
                    #expect(try !Self.table(bed.g2).contains { isReplicated($0) })
                }
                // Nothing went back: g2's events for what its sink wrote were tracked, not sent.
                let g2Status = await g2.shell.status()
                #expect(g2Status?.counters.entriesSent == 0, "g2 sent \(g2Status?.counters.entriesSent ?? 0) entries")
                if mode == .inject { #expect((g2.sourceStats?.counters.sinkEvents ?? 0) >= 2) }

                // Takeover as the HA shell runs it: g1 steps down (stops publishing) before its
                // address goes; g2 commits the learned entries before the address moves to it.
                g1.setPublishing(false)
                g2.setPublishing(true)
                let report = g2.prepareTakeover()
                try bed.takeover()
                let moved = Date()
                for k in clients { k.wait(timeout: 15) }
                let out = clients.map { $0.stdout.trimmingCharacters(in: .whitespacesAndNewlines) }
                #expect(out[0] == "ok 100", "masqueraded flow: \(out[0]) \(clients[0].stderr)")
                #expect(out[2] == "ok 100", "port-forwarded flow: \(out[2]) \(clients[2].stderr)")
                #expect(out[1].hasPrefix("fail"), "the filtered flow had no entry on g2 and should have broken: \(out[1])")
                // g1 losing its interfaces made its kernel kill the masqueraded entries through
                // them (masquerade's device cleanup): held back, not sent to g2 as deletes.
                #expect(g1.heldBackChanges >= 1, "g1 held back \(g1.heldBackChanges) changes")
                // Traffic through g2 moved the flows on (FIN): g2's own changes now, sent to g1.
                let sentAfter = await g2.shell.status()?.counters.entriesSent ?? 0
                #expect(sentAfter > 0, "g2 took over the flows but sent none of their changes")
                print("kernel-table-sync (\(mode.rawValue)): clients \(out) done \(Date().timeIntervalSince(moved)) s after the move; "
                      + "commit \(report); g1 held back \(g1.heldBackChanges); g2 sent \(sentAfter) entries after the takeover; test \(Date().timeIntervalSince(started)) s")
            } catch {
                await stopBoth()
                throw error
            }
            await stopBoth()
        }

        /// g1's reader stalls (as a descheduled daemon's would) behind a 16 KB event buffer while
        /// 20,000 entries are created: ENOBUFS, the resync dump finds the missed entries and every
        /// one reaches g2's kernel. Then a flush on g1: its destroys reach g2 as deletes and g2's
        /// copies go, while an entry g2 has of its own stays.
        @Test func anOverrunAndAFlushCrossThePipe() async throws {
            let bed = try NATGatewayBed(prefix: "tko")
            defer { bed.down() }
            let key = try #require(ClusterKey(bytes: (0..<32).map { UInt8($0 * 5 % 256) }))
            let port = UInt16.random(in: 40000...49999)
            let a1 = IPv4Address(127, 0, 0, 1), a2 = IPv4Address(127, 0, 0, 2)
            var logger = Logger(label: "kernel-sync-overrun-test")
            logger.logLevel = .warning
            let stall = ReaderStall()
            let g1 = try await TandemKernelSync.KernelTableSync.start(
                .init(selfAddress: a1, peers: [a2], port: port, key: key, reconcileSeconds: 3600,
                      netnsPath: "/run/netns/\(bed.g1)", netlinkBufferBytes: 16 << 10, netlinkBufferMaxBytes: 256 << 10,
                      beforeSourceBatch: { stall.pass() }),
                logger: logger)
            let g2: TandemKernelSync.KernelTableSync
            do {
                g2 = try await TandemKernelSync.KernelTableSync.start(
                    .init(selfAddress: a2, peers: [a1], port: port, key: key, reconcileSeconds: 3600,
                          netnsPath: "/run/netns/\(bed.g2)"),
                    logger: logger)
            } catch {
                stall.release()
                await g1.stop()
                throw error
            }
            func stopBoth() async {
                stall.release()
                await g2.stop()
                await g1.stop()
            }
            do {
                #expect(Self.wait(5) { g1.inSync && g2.inSync }, "both in sync")
                // An entry of g2's own (not learned): a flush on g1 must leave it alone.
                let own = try run(["ip", "netns", "exec", bed.g2, "conntrack", "-I", "-p", "udp", "-s", "10.77.9.9", "-d", "10.77.9.10",
                                                "--sport", "5000", "--dport", "5001", "-t", "600"], timeout: 10)
                #expect(own.ok, "conntrack -I on g2: \(own.stderr)")
                let n = 20_000
                stall.hold()
                let started = Date()
                let (created, secs) = try Privileged.ConntrackSource.createEntries(ns: "/run/netns/\(bed.g1)", count: n)
                #expect(created == n)
                stall.release()
                let isBulk: (KernelConnection) -> Bool = { $0.original.destinationID == 443 }
                #expect(try Self.wait(60) { try Self.table(bed.g2).filter(isBulk).count == n },
                        "g2 holds \((try? Self.table(bed.g2).filter(isBulk).count) ?? -1) of \(n)")
                let arrived = Date().timeIntervalSince(started)
                let c = try #require(g1.sourceStats).counters
                #expect(c.overruns >= 1, "no overrun: the stall did not hold the reader")
                #expect(c.resyncs >= 1 && c.resyncFixes > 0, "resyncs \(c.resyncs), fixes \(c.resyncFixes)")
                #expect(g2.sink.counters.totalFailures == 0, "g2's sink failures: \(g2.sink.counters.failures)")

                let flushed = Date()
                let f = try run(["ip", "netns", "exec", bed.g1, "conntrack", "-F"], timeout: 30)
                #expect(f.ok, "conntrack -F on g1: \(f.stderr)")
                let emptied = try Self.wait(60) { try Self.table(bed.g2).filter(isBulk).isEmpty }
                if !emptied {
                    let s1 = await g1.shell.status(), s2 = await g2.shell.status()
                    Issue.record("""
                        g2 still holds \((try? Self.table(bed.g2).filter(isBulk).count) ?? -1) after g1's flush; \
                        g1 table \((try? Self.table(bed.g1).filter(isBulk).count) ?? -1), g1 source \(String(describing: g1.sourceStats)); \
                        g1 shell entries \(s1?.entries ?? -1) live \(s1?.liveEntries ?? -1) counters \(String(describing: s1?.counters)); \
                        g2 shell entries \(s2?.entries ?? -1) live \(s2?.liveEntries ?? -1) counters \(String(describing: s2?.counters)) \
                        dropped \(s2?.dropped ?? [:]); g2 sink \(g2.sink.counters); g2 source \(String(describing: g2.sourceStats))
                        """)
                }
                let gone = Date().timeIntervalSince(flushed)
                #expect(try Self.table(bed.g2).contains { $0.original.destinationID == 5001 }, "g2's own entry went with g1's flush")
                let c2 = try #require(g1.sourceStats).counters
                print("kernel-table-sync overrun: \(n) entries created in \(String(format: "%.2f", secs)) s behind a stalled reader; "
                      + "all on g2 \(String(format: "%.2f", arrived)) s after the start; overruns \(c.overruns), resyncs \(c.resyncs) "
                      + "(fixes \(c.resyncFixes)), buffer \(c.bufferSize) bytes; flush gone from g2 in \(String(format: "%.2f", gone)) s "
                      + "(g1 destroy events \(c2.destroyEvents), overruns \(c2.overruns), resyncs \(c2.resyncs)); "
                      + "g2 sink deleted \(g2.sink.counters.deleted)")
            } catch {
                await stopBoth()
                throw error
            }
            await stopBoth()
        }
    }

    /// Stalls a source's reader thread on demand (the thread blocks in `pass` while held).
    final class ReaderStall: @unchecked Sendable {
        private let condition = NSCondition()
        private var held = false

        func hold() { condition.lock(); held = true; condition.unlock() }
        func release() { condition.lock(); held = false; condition.broadcast(); condition.unlock() }
        func pass() {
            condition.lock()
            while held { _ = condition.wait(until: Date().addingTimeInterval(30)) }
            condition.unlock()
        }
    }
}
