import CNetfilterConntrack
import Foundation
import TandemConntrack
import TandemCore
import Testing

extension Privileged {
    /// The kernel conntrack source (TandemConntrack) against the real kernel: a client, an
    /// nftables NAT router and a server in namespaces of the test's own; entries from real TCP
    /// flows and from ctnetlink inserts; an overrun forced by a blocked reader.
    @Suite(.timeLimit(.minutes(2))) struct ConntrackSource {
        /// Namespaces `<prefix>-c` (10.78.1.2), `<prefix>-lb` (10.78.1.1 | 10.78.2.1, DNAT
        /// 10.78.1.1:8080 to 10.78.2.2:80 and masquerade towards the server), `<prefix>-s`
        /// (10.78.2.2). With `nat: false`, only `<prefix>-lb`. Deleted by `down()` on every path.
        final class Bed {
            let prefix: String
            var namespaces: [String] = []

            init(nat: Bool) throws {
                let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789")
                prefix = "tct" + String((0..<5).map { _ in alphabet[Int.random(in: 0..<alphabet.count)] })
                do { try build(nat: nat) } catch {
                    down()
                    throw error
                }
            }

            var c: String { "\(prefix)-c" }
            var lb: String { "\(prefix)-lb" }
            var s: String { "\(prefix)-s" }
            func path(_ ns: String) -> String { "/run/netns/\(ns)" }

            func must(_ args: [String], timeout: TimeInterval = 10) throws {
                let r = try run(args, timeout: timeout)
                guard r.ok else { throw TestFailure("\(args.joined(separator: " ")): \(r.stderr)") }
            }

            func exec(_ ns: String, _ args: [String], timeout: TimeInterval = 10) throws -> CommandResult {
                try run(["ip", "netns", "exec", ns] + args, timeout: timeout)
            }

            private func addNS(_ n: String) throws {
                try must(["ip", "netns", "add", n])
                namespaces.append(n)
                try must(["ip", "-n", n, "link", "set", "lo", "up"])
            }

            private func build(nat: Bool) throws {
                try addNS(lb)
                guard nat else { return }
                try addNS(c)
                try addNS(s)
                try must(["ip", "link", "add", "\(prefix)a", "netns", c, "type", "veth", "peer", "name", "\(prefix)b", "netns", lb])
                try must(["ip", "link", "add", "\(prefix)c", "netns", lb, "type", "veth", "peer", "name", "\(prefix)d", "netns", s])
                for (ns, dev, addr) in [(c, "a", "10.78.1.2/24"), (lb, "b", "10.78.1.1/24"), (lb, "c", "10.78.2.1/24"), (s, "d", "10.78.2.2/24")] {
                    try must(["ip", "-n", ns, "addr", "add", addr, "dev", "\(prefix)\(dev)"])
                    try must(["ip", "-n", ns, "link", "set", "\(prefix)\(dev)", "up"])
                }
                try must(["ip", "netns", "exec", lb, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
                let rules = """
                    table ip tct {
                        chain pre { type nat hook prerouting priority dstnat; tcp dport 8080 dnat to 10.78.2.2:80; }
                        chain post { type nat hook postrouting priority srcnat; oifname "\(prefix)c" masquerade; }
                    }
                    """
                let file = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix).nft").path
                try rules.write(toFile: file, atomically: true, encoding: .utf8)
                defer { try? FileManager.default.removeItem(atPath: file) }
                try must(["ip", "netns", "exec", lb, "nft", "-f", file])
            }

            func down() {
                for n in namespaces.reversed() { _ = try? run(["ip", "netns", "del", n], timeout: 10) }
                namespaces.removeAll()
            }
        }

        /// What a consumer holds: the changes applied in order.
        final class View: @unchecked Sendable {
            private let lock = NSLock()
            private var table: [KernelConnection.Key: KernelConnection] = [:]
            private var log: [(KernelConnection, Bool)] = []
            private var gate: DispatchSemaphore?

            /// The first delivery blocks on `gate` (a reader that stops reading).
            init(gate: DispatchSemaphore? = nil) { self.gate = gate }

            func apply(_ changes: [(KernelConnection, deleted: Bool)]) {
                if let g = lock.withLock({ () -> DispatchSemaphore? in defer { gate = nil }; return gate }) {
                    _ = g.wait(timeout: .now() + 30)
                }
                lock.withLock {
                    for (c, deleted) in changes {
                        if deleted { table.removeValue(forKey: c.key) } else { table[c.key] = c }
                        log.append((c, deleted))
                    }
                }
            }

            var entries: [KernelConnection] { lock.withLock { Array(table.values) } }
            var count: Int { lock.withLock { table.count } }
            var history: [(KernelConnection, Bool)] { lock.withLock { log } }
        }

        static func waitUntil(_ seconds: Double, _ cond: () -> Bool) -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline {
                if cond() { return true }
                Thread.sleep(forTimeInterval: 0.05)
            }
            return cond()
        }

        /// Creates `count` ESTABLISHED TCP entries 10.200.x.y:p -> 10.78.5.5:443 through ctnetlink
        /// from a thread inside `ns`; returns how many were created and the seconds it took.
        static func createEntries(ns path: String, count: Int) throws -> (Int, Double) {
            final class Box: @unchecked Sendable { var created = 0; var seconds = 0.0; var error: String? }
            let box = Box()
            let done = DispatchSemaphore(value: 0)
            let t = Thread {
                defer { done.signal() }
                let fd = open(path, O_RDONLY | O_CLOEXEC)
                guard fd >= 0, ctb_setns_net(fd) == 0 else { box.error = "setns \(path)"; return }
                close(fd)
                guard let h = ctb_open_query() else { box.error = "nfct_open"; return }
                defer { nfct_close(h) }
                guard let ct = ctb_new_tcp(0, IPv4Address(10, 78, 5, 5).networkOrder, 0, UInt16(443).bigEndian, 600) else { return }
                defer { nfct_destroy(ct) }
                let start = Date()
                for i in 0..<count {
                    let ip = IPv4Address(0x0AC8_0000 + UInt32(i / 50_000))
                    ctb_set_client(ct, ip.networkOrder, UInt16(10_000 + i % 50_000).bigEndian)
                    if nfct_query(h, NFCT_Q_CREATE, UnsafeRawPointer(ct)) == 0 { box.created += 1 }
                }
                box.seconds = Date().timeIntervalSince(start)
            }
            t.start()
            done.wait()
            if let e = box.error { throw TestFailure(e) }
            return (box.created, box.seconds)
        }

        @Test func natFlowsArriveWithMappingsStatesAndDeletes() throws {
            let bed = try Bed(nat: true)
            defer { bed.down() }
            let all = View()
            let dnatOnly = View()
            let srcAll = TandemConntrack.ConntrackSource(options: .init(netnsPath: bed.path(bed.lb)), onChanges: all.apply)
            let srcDNAT = TandemConntrack.ConntrackSource(
                options: .init(filter: try ConntrackFilter(config: .init(nat: "dnat")), netnsPath: bed.path(bed.lb)),
                onChanges: dnatOnly.apply)
            try srcAll.start()
            defer { srcAll.stop() }
            try srcDNAT.start()
            defer { srcDNAT.stop() }

            let server = try Child(["ip", "netns", "exec", bed.s, "python3", "-c", """
                import socket
                l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                l.bind(('10.78.2.2', 80)); l.listen(4); l.settimeout(20)
                c, _ = l.accept(); c.recv(16); c.sendall(b'ok'); c.close()
                """], outPath: "/dev/null", errPath: "/dev/null")
            defer { server.wait(timeout: 5, signal: SIGTERM) }
            Thread.sleep(forTimeInterval: 0.3)
            let client = try bed.exec(bed.c, ["python3", "-c", """
                import socket, time
                s = socket.create_connection(('10.78.1.1', 8080), timeout=5); s.sendall(b'x')
                assert s.recv(16) == b'ok'; time.sleep(0.2); s.close(); time.sleep(0.3)
                """], timeout: 15)
            #expect(client.ok, "client: \(client.stderr)")

            func flow(_ c: KernelConnection) -> Bool {
                c.original.destination == IPv4Address(10, 78, 1, 1) && c.original.destinationID == 8080
            }
            #expect(Self.waitUntil(5) { all.history.contains { flow($0.0) && $0.0.tcp?.state == .timeWait } })
            let seen = all.history.filter { flow($0.0) }
            let states = seen.compactMap { $0.0.tcp?.state }
            #expect(states.first == .synSent, "states: \(states)")
            #expect(states.contains(.established), "states: \(states)")
            #expect(states.contains(.timeWait), "states: \(states)")
            let c = try #require(seen.last?.0)
            #expect(c.original.source == IPv4Address(10, 78, 1, 2))
            #expect(c.nat.dnat == NATView.Target(address: IPv4Address(10, 78, 2, 2), port: 80))
            #expect(c.nat.snat?.address == IPv4Address(10, 78, 2, 1))
            #expect(c.status.contains([.srcNAT, .dstNAT, .seenReply, .confirmed]))
            #expect(c.timeout != nil)
            #expect(c.tcp?.windowScaleOriginal != nil)   // window tracking data is carried

            // A plain (not translated) UDP entry: the dnat-only source must not see it.
            let ins = try bed.exec(bed.lb, ["conntrack", "-I", "-p", "udp", "-s", "10.78.7.1", "-d", "10.78.7.2",
                                            "--sport", "5000", "--dport", "53", "-t", "60", "-u", "SEEN_REPLY"])
            #expect(ins.ok, "conntrack -I: \(ins.stderr)")
            #expect(Self.waitUntil(5) { all.entries.contains { $0.proto == 17 && $0.original.destinationID == 53 } })
            #expect(dnatOnly.entries.allSatisfy { $0.nat.dnat != nil })
            #expect(dnatOnly.entries.contains(where: flow))

            // Deleting the entry propagates as a delete.
            let del = try bed.exec(bed.lb, ["conntrack", "-D", "-p", "tcp", "--dport", "8080"])
            #expect(del.ok, "conntrack -D: \(del.stderr)")
            #expect(Self.waitUntil(5) { !all.entries.contains(where: flow) && !dnatOnly.entries.contains(where: flow) })
            #expect(all.history.last(where: { flow($0.0) })?.1 == true)
            let counters = srcAll.currentStats.counters
            #expect(counters.newEvents >= 2 && counters.updateEvents >= 2 && counters.destroyEvents >= 1)
            #expect(counters.malformed == 0)
            #expect(srcDNAT.currentStats.counters.filteredOut >= 1)
        }

        @Test func filtersHold() throws {
            let bed = try Bed(nat: false)
            defer { bed.down() }
            let filter = try ConntrackFilter(config: .init(protocols: ["udp"], exclude: ["10.78.9.0/24"], zones: [0],
                                                           marks: ["0x100/0xf00"]))
            let view = View()
            let src = TandemConntrack.ConntrackSource(options: .init(filter: filter, netnsPath: bed.path(bed.lb)),
                                                      onChanges: view.apply)
            try src.start()
            defer { src.stop() }
            func insert(_ proto: String, mark: String, src s: String = "10.78.3.1", sport: String, _ extra: [String] = []) throws {
                // conntrack(8) wants the protocol before the port options, and the mark after them.
                let r = try bed.exec(bed.lb, ["conntrack", "-I", "-p", proto, "-s", s, "-d", "10.78.4.1", "--sport", sport,
                                              "--dport", "53", "-t", "60", "-u", "SEEN_REPLY", "--mark", mark] + extra)
                guard r.ok else { throw TestFailure("conntrack -I \(proto) \(sport): \(r.stderr)") }
            }
            try insert("udp", mark: "0x1ff", sport: "1")                                  // passes
            try insert("udp", mark: "0x200", sport: "2")                                  // mark
            try insert("udp", mark: "0x100", sport: "3", ["--zone", "7"])                 // zone
            try insert("udp", mark: "0x100", src: "10.78.9.9", sport: "4")                // excluded prefix
            try insert("tcp", mark: "0x100", sport: "5", ["--state", "ESTABLISHED"])      // protocol
            try insert("udp", mark: "0x100", sport: "6")                                  // passes
            #expect(Self.waitUntil(5) { src.currentStats.counters.filteredOut >= 4 && view.count >= 2 },
                    "counters \(src.currentStats.counters), view \(view.entries), listed: \((try? bed.exec(bed.lb, ["conntrack", "-L"]))?.stdout ?? "")")
            Thread.sleep(forTimeInterval: 0.2)
            #expect(Set(view.entries.map(\.original.sourceID)) == [1, 6])
            // Changing the mark so it no longer matches retracts the entry.
            let upd = try bed.exec(bed.lb, ["conntrack", "-U", "-s", "10.78.3.1", "-d", "10.78.4.1", "-p", "udp", "--sport", "6", "--dport", "53", "--mark", "0x300"])
            #expect(upd.ok, "conntrack -U: \(upd.stderr)")
            #expect(Self.waitUntil(5) { Set(view.entries.map(\.original.sourceID)) == [1] })
        }

        /// A reader that stops reading (its consumer blocks) while 20,000 entries are created
        /// behind a 16 KB buffer: ENOBUFS, the buffer grows, a resync dump recovers every entry;
        /// then a flush, and the view empties again, overrun or not.
        @Test func overrunIsRecoveredByResync() throws {
            let bed = try Bed(nat: false)
            defer { bed.down() }
            let gate = DispatchSemaphore(value: 0)
            let view = View(gate: gate)
            let settings = ConntrackSourceCore.Settings(bufferSize: 16 << 10, maxBufferSize: 256 << 10, reconcileInterval: 0)
            let src = TandemConntrack.ConntrackSource(options: .init(settings: settings, netnsPath: bed.path(bed.lb)),
                                                      onChanges: view.apply)
            try src.start()
            defer { src.stop() }
            let n = 20_000
            let (created, secs) = try Self.createEntries(ns: bed.path(bed.lb), count: n)
            #expect(created == n)
            gate.signal()
            let start = Date()
            #expect(Self.waitUntil(30) { view.count == n }, "view holds \(view.count) of \(n)")
            let recovered = Date().timeIntervalSince(start)
            var stats = src.currentStats
            #expect(stats.counters.overruns >= 1)
            #expect(stats.counters.resyncs >= 1)
            #expect(stats.counters.resyncFixes > 0)
            #expect(stats.counters.bufferGrowths >= 1)
            print("conntrack-source: \(n) entries created in \(String(format: "%.2f", secs)) s; overruns \(stats.counters.overruns), "
                  + "resyncs \(stats.counters.resyncs) (fixes \(stats.counters.resyncFixes)), last dump \(stats.lastDumpEntries) "
                  + "entries in \(String(format: "%.3f", stats.lastDumpSeconds)) s; view complete \(String(format: "%.2f", recovered)) s "
                  + "after the reader resumed; buffer \(stats.counters.bufferSize) bytes")
            let flushStart = Date()
            let f = try bed.exec(bed.lb, ["conntrack", "-F"], timeout: 30)
            #expect(f.ok, "conntrack -F: \(f.stderr)")
            #expect(Self.waitUntil(30) { view.count == 0 }, "view still holds \(view.count)")
            stats = src.currentStats
            print("conntrack-source: flush of \(n) seen in \(String(format: "%.2f", Date().timeIntervalSince(flushStart))) s; "
                  + "destroy events \(stats.counters.destroyEvents), overruns \(stats.counters.overruns), resyncs \(stats.counters.resyncs)")
            #expect(stats.counters.malformed == 0)
        }

        /// How fast the source takes events with a large buffer (no overrun expected).
        @Test func keepsUpWithABurst() throws {
            let bed = try Bed(nat: false)
            defer { bed.down() }
            let view = View()
            let settings = ConntrackSourceCore.Settings(bufferSize: 64 << 20, maxBufferSize: 64 << 20, reconcileInterval: 0)
            let src = TandemConntrack.ConntrackSource(options: .init(settings: settings, netnsPath: bed.path(bed.lb)),
                                                      onChanges: view.apply)
            try src.start()
            defer { src.stop() }
            let n = 50_000
            let start = Date()
            let (created, secs) = try Self.createEntries(ns: bed.path(bed.lb), count: n)
            #expect(created == n)
            #expect(Self.waitUntil(30) { view.count == n })
            let total = Date().timeIntervalSince(start)
            let stats = src.currentStats
            print("conntrack-source: burst of \(n) creates in \(String(format: "%.2f", secs)) s (\(Int(Double(n) / secs))/s), "
                  + "all delivered after \(String(format: "%.2f", total)) s (\(Int(Double(n) / total)) events/s); "
                  + "overruns \(stats.counters.overruns)")
            #expect(stats.counters.newEvents == n || stats.counters.overruns > 0)
        }
    }
}
