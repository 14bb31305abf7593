import Foundation
import TandemConntrack
import TandemCore
import Testing

extension Privileged {
    /// The kernel conntrack sink (TandemConntrack) against the real kernel: entries injected into
    /// a namespace of the test's own (with an nftables nat table, so nf_nat is loaded and its hooks
    /// run there), read back with a dump; hold mode and commit; a bad entry in a batch.
    @Suite(.timeLimit(.minutes(2))) struct ConntrackSink {
        typealias Bed = Privileged.ConntrackSource.Bed

        /// One namespace `<prefix>-lb` with a nat table; deleted by `down()` on every path.
        static func natBed() throws -> Bed {
            let bed = try Bed(nat: false)
            do {
                try bed.must(["ip", "netns", "exec", bed.lb, "nft",
                              "add table ip tsk; add chain ip tsk pre { type nat hook prerouting priority dstnat; }; "
                              + "add chain ip tsk post { type nat hook postrouting priority srcnat; }"])
            } catch {
                bed.down()
                throw error
            }
            return bed
        }

        static let gateway = IPv4Address(10, 84, 0, 1)

        /// `n` entries of five kinds (plain TCP, masqueraded TCP, port-forwarded TCP, port-forwarded
        /// and masqueraded TCP, plain and masqueraded UDP), each unique by index.
        static func entries(_ n: Int, base: UInt32 = 0, timeout: UInt32 = 600) -> [KernelConnection] {
            (0..<n).map { i in
                let idx = UInt32(i) + base
                let client = IPv4Address(0x0A50_0000 + idx / 50_000)       // 10.80.x.y
                let cport = UInt16(10_000 + Int(idx % 50_000))
                let natPort = UInt16(20_000 + Int(idx % 40_000))
                // The translated reply tuples must be unique too (else the kernel refuses the clash).
                let gateway = IPv4Address(0x0A54_0001 + (idx / 40_000) << 8)  // 10.84.k.1
                let server = IPv4Address(10, 83, 0, 1)
                let inside = IPv4Address(10, 86, 0, 2)
                let tcp = TCPInfo(state: .established, flagsOriginal: 0x03, flagsReply: 0x03,
                                  windowScaleOriginal: 7, windowScaleReply: 8)
                let st: ConntrackStatus = [.seenReply, .assured, .confirmed]
                switch i % 5 {
                case 0:
                    return KernelConnection(original: .ports(6, client, cport, server, 443),
                                            reply: .ports(6, server, 443, client, cport), tcp: tcp, status: st,
                                            mark: idx, timeout: timeout)
                case 1:   // masquerade: the reply goes back to the gateway's address and a new port
                    return KernelConnection(original: .ports(6, client, cport, server, 80),
                                            reply: .ports(6, server, 80, gateway, natPort), tcp: tcp,
                                            status: st.union([.srcNAT, .srcNATDone, .dstNATDone]), mark: idx, timeout: timeout)
                case 2:   // port forward: gateway:8080 to an inside server's :80
                    return KernelConnection(original: .ports(6, client, cport, gateway, 8080),
                                            reply: .ports(6, inside, 80, client, cport), tcp: tcp,
                                            status: st.union([.dstNAT, .srcNATDone, .dstNATDone]), mark: idx, timeout: timeout)
                case 3:   // both, as the source test's router does
                    return KernelConnection(original: .ports(6, client, cport, gateway, 8081),
                                            reply: .ports(6, inside, 80, IPv4Address(0x0A56_0001 + (idx / 40_000) << 8), natPort), tcp: tcp,
                                            status: st.union([.srcNAT, .dstNAT, .srcNATDone, .dstNATDone]), mark: idx, timeout: timeout)
                default:
                    let masq = i % 2 == 0
                    return KernelConnection(original: .ports(17, client, cport, server, 53),
                                            reply: .ports(17, server, 53, masq ? gateway : client, masq ? natPort : cport),
                                            status: [.seenReply, .confirmed], mark: idx, timeout: min(timeout, 120))
                }
            }
        }

        /// Checks every expected entry against the table: tuples (the reply as the kernel derived
        /// it from the NAT targets), NAT bits, TCP state, mark, timeout within `slack` below.
        static func check(_ expected: [KernelConnection], in table: [KernelConnection], aged: UInt32 = 0, slack: UInt32 = 3) {
            let byKey = Dictionary(table.map { ($0.key, $0) }, uniquingKeysWith: { a, _ in a })
            var missing = 0
            for e in expected {
                guard let got = byKey[e.key] else { missing += 1; continue }
                #expect(got.reply == e.reply, "\(e) -> \(got)")
                #expect(got.nat == e.nat)
                #expect(got.status.contains(.srcNAT) == (e.nat.snat != nil), "\(got)")
                #expect(got.status.contains(.dstNAT) == (e.nat.dnat != nil), "\(got)")
                #expect(got.status.contains(e.status.intersection([.seenReply, .assured, .confirmed])))
                #expect(got.mark == e.mark)
                #expect(got.tcp?.state == e.tcp?.state)
                if e.proto == 6 {
                    #expect(got.tcp?.windowScaleOriginal == 7 && got.tcp?.windowScaleReply == 8)
                    #expect((got.tcp?.flagsOriginal ?? 0) & TCPInfo.flagBeLiberal != 0)
                }
                let want = (e.timeout ?? 0) - aged
                #expect(got.timeout.map { $0 <= want && $0 + slack >= want } == true, "timeout \(String(describing: got.timeout)) want \(want)")
            }
            #expect(missing == 0, "\(missing) of \(expected.count) missing")
        }

        @Test func injectsNATAndPlainEntriesAndUpdatesAndDeletes() throws {
            let bed = try Self.natBed()
            defer { bed.down() }
            let sink = try TandemConntrack.ConntrackSink(options: .init(settings: .init(mode: .inject), netnsPath: bed.path(bed.lb)))
            defer { sink.close() }
            let list = Self.entries(400)
            sink.upsert(list)
            var c = sink.counters
            #expect(c.created == 400, "\(c)")
            #expect(c.totalFailures == 0, "\(c.failures)")
            #expect(c.batches >= 2)
            let table = try TandemConntrack.ConntrackSink.readTable(netnsPath: bed.path(bed.lb))
            #expect(table.count == 400)
            Self.check(list, in: table)

            // The same entries again, marks and timeouts changed: every create meets EEXIST and
            // becomes an update.
            let changed = list.map { var e = $0; e.mark &+= 7; e.timeout = 300; return e }
            sink.upsert(changed)
            c = sink.counters
            #expect(c.existedBecameUpdate == 400 && c.updated == 400, "\(c)")
            let table2 = try TandemConntrack.ConntrackSink.readTable(netnsPath: bed.path(bed.lb))
            Self.check(changed, in: table2)

            // Deletes, twice: the second time they are absent, which is not a failure.
            let gone = Array(list.prefix(20)).map(\.key)
            sink.delete(gone)
            sink.delete(gone)
            c = sink.counters
            #expect(c.deleted == 20 && c.deleteAbsent == 20 && c.totalFailures == 0, "\(c)")
            #expect(try TandemConntrack.ConntrackSink.readTable(netnsPath: bed.path(bed.lb)).count == 380)
        }

        /// ICMP echo entries, plain and masqueraded: the reply tuple is set up by the library
        /// (inverted original, echo-reply type), the SNAT goes as an address only.
        @Test func injectsICMPEntries() throws {
            let bed = try Self.natBed()
            defer { bed.down() }
            let sink = try TandemConntrack.ConntrackSink(options: .init(netnsPath: bed.path(bed.lb)))
            defer { sink.close() }
            let client = IPv4Address(10, 80, 9, 2), server = IPv4Address(10, 83, 0, 1)
            let plain = KernelConnection(original: KernelTuple(source: client, destination: server, proto: 1, l4: .icmp(id: 77, type: 8, code: 0)),
                                         reply: KernelTuple(source: server, destination: client, proto: 1, l4: .icmp(id: 77, type: 0, code: 0)),
                                         status: [.seenReply, .confirmed], timeout: 30)
            var masq = plain
            masq.original.l4 = .icmp(id: 78, type: 8, code: 0)
            masq.reply = KernelTuple(source: server, destination: Self.gateway, proto: 1, l4: .icmp(id: 78, type: 0, code: 0))
            sink.upsert([plain, masq])
            let c = sink.counters
            #expect(c.created == 2 && c.totalFailures == 0, "\(c)")
            let table = try TandemConntrack.ConntrackSink.readTable(netnsPath: bed.path(bed.lb))
            let got = Dictionary(table.map { ($0.key, $0) }, uniquingKeysWith: { a, _ in a })
            #expect(got[plain.key]?.reply.destination == client)
            #expect(got[plain.key]?.status.contains(.srcNAT) == false)
            #expect(got[masq.key]?.reply.destination == Self.gateway)
            #expect(got[masq.key]?.status.contains(.srcNAT) == true)
            #expect(got[masq.key]?.timeout.map { $0 <= 30 && $0 >= 27 } == true)
        }

        @Test func holdModeWritesNothingUntilCommit() throws {
            let bed = try Self.natBed()
            defer { bed.down() }
            let sink = try TandemConntrack.ConntrackSink(options: .init(settings: .init(mode: .hold), netnsPath: bed.path(bed.lb)))
            defer { sink.close() }
            let list = Self.entries(500)
            var short = Self.entries(1, base: 900)[0]
            short.timeout = 1                                    // runs out while held
            sink.upsert(list + [short])
            sink.delete([list[0].key])                           // deletes remove held entries
            #expect(sink.heldCount == 500)
            #expect(try TandemConntrack.ConntrackSink.readTable(netnsPath: bed.path(bed.lb)).isEmpty)
            Thread.sleep(forTimeInterval: 1.2)
            let report = sink.commit()
            print("conntrack-sink: hold commit of 500: \(report)")
            #expect(report.committed == 499, "\(report)")
            #expect(report.expired == 1)
            #expect(report.failures.isEmpty)
            #expect(sink.heldCount == 0)
            let table = try TandemConntrack.ConntrackSink.readTable(netnsPath: bed.path(bed.lb))
            #expect(table.count == 499)
            Self.check(Array(list.dropFirst()), in: table, aged: 1)
        }

        @Test func aBadEntryIsCountedAndTheOthersLand() throws {
            let bed = try Self.natBed()
            defer { bed.down() }
            let sink = try TandemConntrack.ConntrackSink(options: .init(settings: .init(mode: .inject, batchSize: 64),
                                                                       netnsPath: bed.path(bed.lb)))
            defer { sink.close() }
            var list = Self.entries(100)
            list[50].tcp?.state = TCPConntrackState(rawValue: 200)   // no such TCP state: the policy check says ERANGE
            sink.upsert(list)
            let c = sink.counters
            #expect(c.created == 99, "\(c)")
            #expect(c.failures == ["ERANGE": 1], "\(c.failures)")
            #expect(c.retries == 0)
            let table = try TandemConntrack.ConntrackSink.readTable(netnsPath: bed.path(bed.lb))
            #expect(table.count == 99)
            #expect(!table.contains { $0.key == list[50].key })
            Self.check(list.enumerated().filter { $0.offset != 50 }.map(\.element), in: table)
        }

        /// Rates and costs of both modes (printed; the numbers are in docs/conntrack.md).
        @Test func measureInjectAndCommit() throws {
            let sizes = ProcessInfo.processInfo.environment["TANDEM_SINK_BENCH"] == nil ? [10_000] : [10_000, 100_000]
            for n in sizes {
                for mode in ConntrackSinkCore.Mode.allCases {
                    let bed = try Self.natBed()
                    defer { bed.down() }
                    let sink = try TandemConntrack.ConntrackSink(options: .init(settings: .init(mode: mode), netnsPath: bed.path(bed.lb)))
                    defer { sink.close() }
                    let list = Self.entries(n)
                    let rss0 = Self.rssKB()
                    let slab0 = Self.slabKB()
                    let cpu0 = Self.threadCPU()
                    let sys0 = Self.threadCPUSplit().system
                    let t0 = Date()
                    // Arrival in chunks, as a sync receiver would hand them over.
                    for chunk in stride(from: 0, to: n, by: 1000) { sink.upsert(Array(list[chunk..<min(n, chunk + 1000)])) }
                    let applySecs = Date().timeIntervalSince(t0)
                    let applyCPU = Self.threadCPU() - cpu0
                    let applySys = Self.threadCPUSplit().system - sys0
                    let rssHeld = Self.rssKB() - rss0
                    let cpu1 = Self.threadCPU()
                    let sys1 = Self.threadCPUSplit().system
                    let report = sink.commit()
                    let commitCPU = Self.threadCPU() - cpu1
                    let commitSys = Self.threadCPUSplit().system - sys1
                    let inKernel = try bed.exec(bed.lb, ["cat", "/proc/sys/net/netfilter/nf_conntrack_count"]).stdout
                        .trimmingCharacters(in: .whitespacesAndNewlines)
                    let c = sink.counters
                    #expect(c.injected == n, "\(c)")
                    #expect(Int(inKernel) == n)
                    let rate = Double(n) / (mode == .inject ? applySecs : max(report.seconds, 1e-9))
                    print("conntrack-sink: \(mode.rawValue) \(n): apply \(String(format: "%.3f", applySecs)) s "
                          + "(cpu \(String(format: "%.3f", applyCPU)) s, sys \(String(format: "%.3f", applySys))), commit "
                          + "\(String(format: "%.3f", report.seconds)) s (cpu \(String(format: "%.3f", commitCPU)) s, sys "
                          + "\(String(format: "%.3f", commitSys)), \(report.batches) batches), "
                          + "\(Int(rate)) entries/s, rss held +\(rssHeld) KB, kernel entries \(inKernel), "
                          + "nf_conntrack slab +\(Self.slabKB() - slab0) KB")
                }
            }
        }

        /// The natgw takeover in small: a client and a server namespace joined through gateway
        /// g1 (masquerade towards the server, a port forward from the server side to the client,
        /// `ct state invalid drop`); g2 has the same ruleset and `nf_conntrack_tcp_loose=0`, so a
        /// TCP flow it has no entry for is invalid there and dropped. Mid-flow, g1's entries are
        /// committed into g2 (hold mode, as at a takeover) except those of one control flow, and
        /// g1's two interfaces (addresses, MACs) move to g2. The injected flows keep going through
        /// g2's NAT; the control flow breaks.
        @Test func injectedNATEntriesCarryTrafficAfterATakeover() throws {
            let started = Date()
            let bed = try NATGatewayBed(prefix: "tsk")
            defer { bed.down() }
            // Masqueraded (inside out), the control flow (also masqueraded, not injected), and the
            // port forward (outside in).
            let clients = [try bed.startClient(in: bed.c, to: "10.79.2.2", port: 80),
                           try bed.startClient(in: bed.c, to: "10.79.2.2", port: 81),
                           try bed.startClient(in: bed.server, to: "10.79.2.1", port: 8080)]
            // What g2's sink would have learned from g1 once both flows are established there
            // (bounded: the clients may start slowly on a loaded machine).
            func onG1() throws -> [KernelConnection] {
                try TandemConntrack.ConntrackSink.readTable(netnsPath: "/run/netns/\(bed.g1)")
                    .filter { $0.proto == 6 && $0.original.destinationID != 81 && $0.tcp?.state == .established }
            }
            let deadline = Date().addingTimeInterval(10)
            while try onG1().count < 2, Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
            Thread.sleep(forTimeInterval: 0.3)
            let learned = try onG1()
            #expect(learned.count == 2, "\(learned)")
            let sink = try TandemConntrack.ConntrackSink(options: .init(settings: .init(mode: .hold), netnsPath: "/run/netns/\(bed.g2)"))
            defer { sink.close() }
            sink.upsert(learned)
            let report = sink.commit()
            #expect(report.committed == learned.count, "\(report)")
            try bed.takeover()

            let moved = Date()
            for k in clients { k.wait(timeout: 15) }
            print("conntrack-sink: clients done \(Date().timeIntervalSince(moved)) s after the move")
            let out = clients.map { $0.stdout.trimmingCharacters(in: .whitespacesAndNewlines) }
            #expect(out[0] == "ok 40", "masqueraded flow: \(out[0]) \(clients[0].stderr)")
            #expect(out[2] == "ok 40", "port-forwarded flow: \(out[2]) \(clients[2].stderr)")
            #expect(out[1].hasPrefix("fail"), "the control flow had no entry on g2 and should have broken: \(out[1])")
            let g2Table = try TandemConntrack.ConntrackSink.readTable(netnsPath: "/run/netns/\(bed.g2)")
            let viaG2 = g2Table.filter { $0.proto == 6 && ($0.original.destinationID == 80 || $0.original.destinationID == 8080) }
            #expect(viaG2.count == 2)
            #expect(viaG2.allSatisfy { $0.nat.isNATed })
            print("conntrack-sink: takeover through injected NAT entries: \(out); g2 commit \(report); "
                  + "test \(Date().timeIntervalSince(started)) s")
        }

        /// User + system CPU of the calling thread (the sink runs there; the kernel's ctnetlink
        /// work happens inside its sendmsg, so it is counted as system time).
        static func threadCPU() -> Double { threadCPUSplit().user + threadCPUSplit().system }

        static func threadCPUSplit() -> (user: Double, system: Double) {
            var ru = rusage()
            getrusage(__rusage_who_t(1), &ru)   // RUSAGE_THREAD (not imported: a _GNU_SOURCE name)
            return (Double(ru.ru_utime.tv_sec) + Double(ru.ru_utime.tv_usec) / 1e6,
                    Double(ru.ru_stime.tv_sec) + Double(ru.ru_stime.tv_usec) / 1e6)
        }

        static func rssKB() -> Int {
            guard let s = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
            let f = s.split(separator: " ")
            return f.count > 1 ? (Int(f[1]) ?? 0) * 4 : 0
        }

        /// The nf_conntrack slab cache's size (all namespaces), KB.
        static func slabKB() -> Int {
            guard let s = try? String(contentsOfFile: "/proc/slabinfo", encoding: .utf8) else { return -1 }
            for line in s.split(separator: "\n") where line.hasPrefix("nf_conntrack ") {
                let f = line.split(separator: " ", omittingEmptySubsequences: true)
                if f.count > 3, let objs = Int(f[2]), let size = Int(f[3]) { return objs * size / 1024 }
            }
            return -1
        }
    }
}
