import Logging
import Testing
@testable import TandemCore
@testable import TandemDatapath

extension Privileged {
    /// The BPF program itself, in this process: real verifier, real maps, packets through
    /// BPF_PROG_TEST_RUN. No interface is touched.
    @Suite(.timeLimit(.minutes(2))) struct DatapathProgram {
        static let vip = IPv4Address(10, 0, 10, 143)
        static let client = IPv4Address(10, 0, 20, 10)
        static let ep1 = Endpoint(ip: IPv4Address(10, 0, 10, 21), port: 80)
        static let ep2 = Endpoint(ip: IPv4Address(10, 0, 10, 22), port: 80)
        static let seed: UInt32 = 0x1234_5678

        func load(_ services: [Service], slice: PortSlice = PortSlice(low: 40000, high: 40999),
                  timeouts: Timeouts = Timeouts(), tableSize: UInt32 = 4096) async throws -> Datapath {
            let dp = try Datapath(objectPath: Env.bpfObject, connectionTableSize: tableSize, logger: Logger(label: "test"))
            try await dp.apply(settings: DatapathSettings(nodeIP: IPv4Address(10, 0, 10, 141), hashSeed: Self.seed,
                                                          portSlice: slice, timeouts: timeouts, emitEvents: false))
            for (i, s) in services.enumerated() { try await dp.install(s, slot: UInt32(i), hashSeed: Self.seed) }
            return dp
        }

        func service(_ mode: NATMode, _ sel: Selection = .roundRobin, proto: L4Protocol = .tcp,
                     endpoints: [Endpoint] = [ep1, ep2]) -> Service {
            Service(key: ServiceKey(vip: Self.vip, port: 56002, proto: proto), mode: mode, selection: sel, endpoints: endpoints)
        }

        func tuple(_ sport: UInt16, proto: UInt8 = 6, src: IPv4Address = client) -> FlowTuple {
            FlowTuple(source: src, destination: Self.vip, sourcePort: sport, destinationPort: 56002, proto: proto)
        }

        @Test func fullnatRewritesBothDirectionsWithValidChecksums() async throws {
            let dp = try await load([service(.fullnat)])
            defer { Task { await dp.close() } }
            for proto: UInt8 in [6, 17] {
                let svcProto: L4Protocol = proto == 6 ? .tcp : .udp
                if proto == 17 { try await dp.install(service(.fullnat, proto: .udp), slot: 1, hashSeed: Self.seed) }
                _ = svcProto
                let t = tuple(41_000 + UInt16(proto), proto: proto)
                let out = try dp.testRun(packet: Packets.frame(t, tcpFlags: .syn))
                let p = try #require(Packets.parse(out.packet))
                #expect(p.ipChecksumOK && p.l4ChecksumOK)
                #expect(p.tuple.source == Self.vip, "fullnat SNATs to the VIP")
                #expect(p.tuple.sourcePort == t.sourcePort, "client port kept when free")
                #expect([Self.ep1.ip, Self.ep2.ip].contains(p.tuple.destination))
                #expect(p.tuple.destinationPort == 80)
                // The endpoint's answer comes back as the VIP's.
                let back = try dp.testRun(packet: Packets.frame(p.tuple.reversed, tcpFlags: [.syn, .ack]))
                let q = try #require(Packets.parse(back.packet))
                #expect(q.ipChecksumOK && q.l4ChecksumOK)
                #expect(q.tuple == t.reversed)
            }
        }

        @Test func onearmAndDefaultModesTranslateAsSpecified() async throws {
            let dp = try await load([service(.onearm, endpoints: [Self.ep1])])
            defer { Task { await dp.close() } }
            let p = try #require(Packets.parse(try dp.testRun(packet: Packets.frame(tuple(42_000), tcpFlags: .syn)).packet))
            #expect(p.tuple.source == IPv4Address(10, 0, 10, 141))
            #expect(p.tuple.destination == Self.ep1.ip)
            await dp.uninstall(service(.onearm).key, slot: 0)
            try await dp.install(service(.default, endpoints: [Self.ep2]), slot: 0, hashSeed: Self.seed)
            let d = try #require(Packets.parse(try dp.testRun(packet: Packets.frame(tuple(42_001), tcpFlags: .syn)).packet))
            #expect(d.tuple.source == Self.client, "default mode keeps the client's address")
            #expect(d.tuple.destination == Self.ep2.ip && d.tuple.destinationPort == 80)
            #expect(d.l4ChecksumOK && d.ipChecksumOK)
        }

        @Test func takenSourcePortIsReplacedFromThisNodesSlice() async throws {
            let slice = PortSlice(low: 40000, high: 40099)
            let dp = try await load([service(.fullnat, endpoints: [Self.ep1])], slice: slice)
            defer { Task { await dp.close() } }
            let first = try #require(Packets.parse(try dp.testRun(packet: Packets.frame(tuple(50_000), tcpFlags: .syn)).packet))
            #expect(first.tuple.sourcePort == 50_000)
            // Another client with the same port would collide on VIP:50000 towards ep1.
            let other = tuple(50_000, src: IPv4Address(10, 0, 20, 11))
            let second = try #require(Packets.parse(try dp.testRun(packet: Packets.frame(other, tcpFlags: .syn)).packet))
            #expect(second.tuple.sourcePort != 50_000)
            #expect(slice.contains(second.tuple.sourcePort))
            #expect(second.l4ChecksumOK)
            let back = try #require(Packets.parse(try dp.testRun(packet: Packets.frame(second.tuple.reversed, tcpFlags: [.syn, .ack])).packet))
            #expect(back.tuple == other.reversed)
        }

        @Test func tcpStatesMatchTheSwiftStateMachine() async throws {
            let dp = try await load([service(.fullnat, endpoints: [Self.ep1])])
            defer { Task { await dp.close() } }
            let t = tuple(43_000)
            let steps: [(FlowDirection, TCPFlags)] = [(.original, .syn), (.reply, [.syn, .ack]), (.original, .ack),
                (.original, [.psh, .ack]), (.reply, [.fin, .ack]), (.original, .ack), (.original, [.fin, .ack]), (.reply, .ack)]
            var expected = TCPStateMachine.initial(tcp: steps[0].1)
            var flags: ConnectionFlags = []
            var replyTuple: FlowTuple?
            for (i, (dir, f)) in steps.enumerated() {
                if i > 0 { (expected, flags) = TCPStateMachine.next(state: expected, flags: flags, direction: dir, tcp: f) }
                let pkt = dir == .original ? t : try #require(replyTuple)
                let out = try #require(Packets.parse(try dp.testRun(packet: Packets.frame(pkt, tcpFlags: f)).packet))
                if i == 0 { replyTuple = out.tuple.reversed }
                let entries = dp.connectionEntries()
                let orig = try #require(entries.first { $0.key == t })
                let rep = try #require(entries.first { $0.direction == .reply })
                #expect(orig.state == expected, "step \(i): \(dir) \(f.rawValue)")
                #expect(rep.state == expected, "reply half follows, step \(i)")
            }
            #expect(expected == .timeWait)
        }

        @Test func maglevPicksMatchSwiftForManyFlows() async throws {
            let eps = (0..<5).map { Endpoint(ip: IPv4Address(10, 0, 10, UInt8(21 + $0)), port: 80) }
            let dp = try await load([service(.fullnat, .maglev, endpoints: eps)])
            defer { Task { await dp.close() } }
            let table = Maglev.table(endpoints: eps, seed: Self.seed)
            for port in UInt16(30_000)..<UInt16(30_200) {
                let t = tuple(port)
                let out = try #require(Packets.parse(try dp.testRun(packet: Packets.frame(t, tcpFlags: .syn)).packet))
                let pick = try #require(Maglev.pick(table: table, source: t.source, destination: t.destination,
                                                    sourcePort: t.sourcePort, destinationPort: t.destinationPort,
                                                    proto: 6, seed: Self.seed))
                #expect(out.tuple.destination == eps[pick].ip, "port \(port)")
            }
        }

        @Test func roundRobinAlternatesAndWeightsHold() async throws {
            var svc = service(.fullnat, .weighted)
            svc.endpoints[0].weight = 3
            let dp = try await load([svc])
            defer { Task { await dp.close() } }
            var picks: [IPv4Address] = []
            for port in UInt16(31_000)..<UInt16(31_040) {
                picks.append(try #require(Packets.parse(try dp.testRun(packet: Packets.frame(tuple(port), tcpFlags: .syn)).packet)).tuple.destination)
            }
            #expect(picks.filter { $0 == Self.ep1.ip }.count == 30)
            #expect(picks.filter { $0 == Self.ep2.ip }.count == 10)
        }

        @Test func persistenceKeepsAClientOnOneEndpoint() async throws {
            let dp = try await load([service(.fullnat, .persist)])
            defer { Task { await dp.close() } }
            var picks = Set<IPv4Address>()
            for port in UInt16(32_000)..<UInt16(32_020) {
                picks.insert(try #require(Packets.parse(try dp.testRun(packet: Packets.frame(tuple(port), tcpFlags: .syn)).packet)).tuple.destination)
            }
            #expect(picks.count == 1)
            var other = Set<IPv4Address>()
            for i in 0..<10 {
                other.insert(try #require(Packets.parse(try dp.testRun(packet: Packets.frame(tuple(33_000, src: IPv4Address(10, 0, 20, UInt8(100 + i))), tcpFlags: .syn)).packet)).tuple.destination)
            }
            #expect(other.count == 2, "different clients still spread")
        }

        @Test func icmpEchoToVIPIsAnswered() async throws {
            let dp = try await load([service(.fullnat)])
            defer { Task { await dp.close() } }
            let t = FlowTuple(source: Self.client, destination: Self.vip, sourcePort: 77, destinationPort: 77, proto: 1)
            let out = try dp.testRun(packet: Packets.frame(t))
            let p = try #require(Packets.parse(out.packet))
            #expect(p.icmpType == 0)
            #expect(p.tuple.source == Self.vip && p.tuple.destination == Self.client)
            #expect(p.ipChecksumOK && p.l4ChecksumOK)
            #expect(dp.stats().icmpReplied == 1)
        }

        @Test func strayPacketsAreLeftAloneOrDropped() async throws {
            let dp = try await load([service(.fullnat)])
            defer { Task { await dp.close() } }
            // Not a service: passed to the stack untouched (TC_ACT_OK = 0).
            let other = FlowTuple(source: Self.client, destination: IPv4Address(10, 0, 10, 50), sourcePort: 1, destinationPort: 2, proto: 6)
            let r = try dp.testRun(packet: Packets.frame(other, tcpFlags: .syn))
            #expect(r.verdict == 0)
            #expect(r.packet == Packets.frame(other, tcpFlags: .syn))
            // A RST for an unknown flow of a service has nowhere consistent to go: dropped (TC_ACT_SHOT = 2).
            #expect(try dp.testRun(packet: Packets.frame(tuple(44_000), tcpFlags: .rst)).verdict == 2)
            #expect(dp.connectionEntries().isEmpty)
            // Truncated L4 headers are passed, never read past their end. (BPF_PROG_TEST_RUN itself
            // refuses frames without a whole IP header.)
            let full = Packets.frame(tuple(44_001), tcpFlags: .syn)
            for cut in [34, 36, 40, 50, 53] {
                #expect(try dp.testRun(packet: Array(full.prefix(cut))).verdict == 0, "cut at \(cut)")
            }
        }

        @Test func inKernelReapRemovesIdleConnectionsAndOrphansOnly() async throws {
            var timeouts = Timeouts()
            timeouts.synSent = 1
            let dp = try Datapath(objectPath: Env.bpfObject, connectionTableSize: 4096, logger: Logger(label: "test"))
            defer { Task { await dp.close() } }
            try await dp.apply(settings: DatapathSettings(nodeIP: IPv4Address(10, 0, 10, 141), hashSeed: Self.seed,
                                                          portSlice: PortSlice(low: 40000, high: 40999), timeouts: timeouts))
            try await dp.install(service(.fullnat), slot: 0, hashSeed: Self.seed)
            let idle = [tuple(46_001), tuple(46_002)]
            let orphaned = tuple(46_003)
            for t in idle + [orphaned] { _ = try dp.testRun(packet: Packets.frame(t, tcpFlags: .syn)) }
            // LRU eviction of an original leaves its reply half behind.
            #expect(dp.deleteEntry(orphaned))
            try await Task.sleep(for: .milliseconds(2300))
            let fresh = tuple(46_004)
            _ = try dp.testRun(packet: Packets.frame(fresh, tcpFlags: .syn))
            _ = try dp.drainEvents()

            #expect(dp.reapInKernel() == 2)
            let left = dp.connectionEntries()
            #expect(left.count == 2, "only the fresh connection's halves: \(left.map(\.key))")
            #expect(left.contains { $0.key == fresh && $0.direction == .original })
            let events = try dp.drainEvents().map(\.event)
            #expect(events.count == 2 && events.allSatisfy { $0.kind == .expired })
            #expect(Set(events.map(\.key)) == Set(idle))
            let stats = dp.stats()
            #expect(stats.reaped == 2 && stats.reapedHalves == 1)
            // Nothing more to do: a second pass removes nothing.
            #expect(dp.reapInKernel() == 0)
            #expect(dp.connectionEntries().count == 2)
        }

        @Test func closedFlowIsReplacedByANewSyn() async throws {
            let dp = try await load([service(.fullnat, endpoints: [Self.ep1])])
            defer { Task { await dp.close() } }
            let t = tuple(45_000)
            _ = try dp.testRun(packet: Packets.frame(t, tcpFlags: .syn))
            _ = try dp.testRun(packet: Packets.frame(t, tcpFlags: .rst))
            #expect(dp.connectionEntries().first { $0.key == t }?.state == .closed)
            let again = try #require(Packets.parse(try dp.testRun(packet: Packets.frame(t, tcpFlags: .syn)).packet))
            #expect(dp.connectionEntries().first { $0.key == t }?.state == .synSent)
            #expect(dp.stats().expiredReused == 1)
            // Reopened like conntrack does: the translated tuple is reused, client port kept.
            #expect(again.tuple.sourcePort == t.sourcePort)
            let back = try #require(Packets.parse(try dp.testRun(packet: Packets.frame(again.tuple.reversed, tcpFlags: [.syn, .ack])).packet))
            #expect(back.tuple == t.reversed)
            #expect(dp.connectionEntries().first { $0.key == t }?.state == .synReceived)
        }

        @Test func tableReadsSeeEveryEntry() async throws {
            // More entries than one batch (4,096), well under the LRU table's size.
            let dp = try await load([service(.fullnat)], tableSize: 65536)
            defer { Task { await dp.close() } }
            for port in UInt16(20_000)..<UInt16(25_000) { _ = try dp.testRun(packet: Packets.frame(tuple(port), tcpFlags: .syn)) }
            let entries = dp.connectionEntries()
            #expect(entries.count == 10_000)
            #expect(Set(entries.map(\.key)).count == 10_000)
        }

        @Test func midFlowPacketIsPickedUp() async throws {
            let dp = try await load([service(.fullnat, .maglev)])
            defer { Task { await dp.close() } }
            let t = tuple(46_000)
            let out = try #require(Packets.parse(try dp.testRun(packet: Packets.frame(t, tcpFlags: [.psh, .ack])).packet))
            let e = try #require(dp.connectionEntries().first { $0.key == t })
            #expect(e.state == .established)
            #expect(e.flags.contains(.pickedUp))
            let table = Maglev.table(endpoints: [Self.ep1, Self.ep2], seed: Self.seed)
            let pick = try #require(Maglev.pick(table: table, source: t.source, destination: t.destination, sourcePort: t.sourcePort,
                                                destinationPort: t.destinationPort, proto: 6, seed: Self.seed))
            #expect(out.tuple.destination == [Self.ep1, Self.ep2][pick].ip, "lands where the original node would have sent it")
        }
    }
}

extension Privileged {
    /// Connections installed as a peer's sync stream would install them: no SYN is ever seen by
    /// this datapath, yet packets of those flows must be forwarded exactly as on the owner.
    @Suite(.timeLimit(.minutes(2))) struct DatapathReplication {
        typealias P = DatapathProgram
        static let snatPort: UInt16 = 61_000 // from the owner's port slice, not the client's port
        /// Every rule is checked against both installers: the tandem_install program and the
        /// user-space fallback used where the kernel has no syscall programs.
        static let paths: [InstallPath] = [.kernel, .userSpace]

        /// Loads the object, runs `body` and always closes the datapath before returning.
        func with(_ services: [Service], timeouts: Timeouts = Timeouts(), tableSize: UInt32 = 4096, events: Bool = false,
                  _ body: (Datapath) async throws -> Void) async throws {
            let dp = try Datapath(objectPath: Env.bpfObject, connectionTableSize: tableSize, logger: Logger(label: "test"))
            do {
                try await dp.apply(settings: DatapathSettings(nodeIP: IPv4Address(10, 0, 10, 141), hashSeed: P.seed,
                                                              portSlice: PortSlice(low: 40000, high: 40999),
                                                              timeouts: timeouts, emitEvents: events))
                for (i, s) in services.enumerated() { try await dp.install(s, slot: UInt32(i), hashSeed: P.seed) }
                #expect(dp.hasKernelInstaller, "this kernel (5.14+) runs syscall programs")
                try await body(dp)
            } catch {
                await dp.close()
                throw error
            }
            await dp.close()
        }

        func service(_ proto: L4Protocol = .tcp) -> Service {
            Service(key: ServiceKey(vip: P.vip, port: 56002, proto: proto), mode: .fullnat, selection: .roundRobin,
                    endpoints: [P.ep1, P.ep2])
        }

        /// A fullnat flow as the owner would replicate it: client -> VIP rewritten to VIP:snatPort -> endpoint.
        func record(_ clientPort: UInt16, proto: UInt8 = 6, snatPort: UInt16 = snatPort, endpoint: Endpoint = P.ep1,
                    state: ConnectionState = .established, flags: ConnectionFlags = [], age: UInt32 = 5_000,
                    remaining: UInt32 = 21_599_000) -> FlowRecord {
            let key = FlowTuple(source: P.client, destination: P.vip, sourcePort: clientPort, destinationPort: 56002, proto: proto)
            let xlate = FlowTuple(source: P.vip, destination: endpoint.ip, sourcePort: snatPort, destinationPort: endpoint.port,
                                  proto: proto)
            return FlowRecord(key: key, translated: xlate, natMode: .fullnat, state: state, flags: flags,
                              endpointIndex: endpoint == P.ep1 ? 0 : 1, ageMilliseconds: age, remainingMilliseconds: remaining)
        }

        func entry(_ dp: Datapath, _ key: FlowTuple) -> ConnectionEntry? {
            dp.connectionEntries().first { $0.key == key }
        }

        @Test(arguments: paths) func installedTCPFlowIsForwardedAsOnTheOwner(path: InstallPath) async throws {
            try await with([service()]) { dp in
                let r = record(47_000)
                try dp.installReplicated(r, serviceSlot: 0, endpointIndex: 0, timeouts: Timeouts(), path: path)
                let before = dp.connectionEntries()
                #expect(before.count == 2)
                let o = try #require(before.first { $0.key == r.key })
                let rep = try #require(before.first { $0.key == r.replyKey })
                #expect(o.direction == .original && rep.direction == .reply)
                #expect(o.translated == r.translated && o.peerKey == r.replyKey)
                #expect(rep.translated == r.key.reversed && rep.peerKey == r.key)
                #expect(o.flags == .fromPeer && rep.flags == .fromPeer)
                #expect(o.state == .established && rep.state == .established)
                #expect(o.packets == 0 && rep.packets == 0)
                #expect(abs(o.ageSeconds - 5) < 0.5, "created = now - age: \(o.ageSeconds)")
                #expect(abs(o.idleSeconds - 1) < 0.5, "last seen = now - (timeout - remaining): \(o.idleSeconds)")

                // Mid-flow data from the client: rewritten to the owner's translation, not picked up anew.
                let fwd = try #require(Packets.parse(try dp.testRun(packet: Packets.frame(r.key, tcpFlags: [.psh, .ack])).packet))
                #expect(fwd.tuple == r.translated)
                #expect(fwd.ipChecksumOK && fwd.l4ChecksumOK)
                // The endpoint's answer to VIP:snatPort goes back to the client as the VIP's.
                let back = try #require(Packets.parse(try dp.testRun(packet: Packets.frame(r.replyKey, tcpFlags: .ack)).packet))
                #expect(back.tuple == r.key.reversed)
                #expect(back.ipChecksumOK && back.l4ChecksumOK)

                let after = dp.connectionEntries()
                #expect(after.count == 2, "no new connection was created")
                let o2 = try #require(after.first { $0.key == r.key })
                let rep2 = try #require(after.first { $0.key == r.replyKey })
                #expect(o2.state == .established && rep2.state == .established)
                #expect(o2.packets == 1 && rep2.packets == 1)
                #expect(o2.bytes == UInt64(Packets.frame(r.key).count))
                #expect(o2.flags.contains(.fromPeer) && !o2.flags.contains(.pickedUp))
                #expect(o2.idleSeconds < 0.5, "a packet refreshes last seen")
                let svc = dp.serviceCounters(slot: 0)
                #expect(svc.packets == 2 && svc.newFlows == 0)
                #expect(dp.endpointCounters(slot: 0, index: 0).packets == 2)
                #expect(dp.stats().pickedUp == 0 && dp.stats().expiredReused == 0)

                // The state machine continues from the installed state: FINs from both sides.
                _ = try dp.testRun(packet: Packets.frame(r.key, tcpFlags: [.fin, .ack]))
                #expect(entry(dp, r.key)?.state == .finWait)
                #expect(entry(dp, r.replyKey)?.state == .finWait, "reply half follows")
                _ = try dp.testRun(packet: Packets.frame(r.replyKey, tcpFlags: [.fin, .ack]))
                let closing = try #require(entry(dp, r.key))
                #expect(closing.state == .timeWait)
                #expect(closing.flags == [.fromPeer, .finOriginal, .finReply])
                #expect(closing.version == 3, "installed as 1, bumped by each state change")

                // A fresh SYN on the closed tuple reopens it as a local connection.
                let again = try #require(Packets.parse(try dp.testRun(packet: Packets.frame(r.key, tcpFlags: .syn)).packet))
                let reopened = try #require(entry(dp, r.key))
                #expect(reopened.state == .synSent && !reopened.flags.contains(.fromPeer))
                #expect(again.tuple.sourcePort == r.key.sourcePort, "local allocation: client port kept")
                #expect(entry(dp, r.replyKey) == nil, "the installed reply half is gone with it")
                #expect(dp.connectionEntries().count == 2)
            }
        }

        @Test(arguments: paths) func remainingTimeMapsOntoTheLocalIdleTimeout(path: InstallPath) async throws {
            var t = Timeouts()
            t.established = 2
            try await with([service()], timeouts: t) { dp in
                let r = record(47_100, remaining: 300)
                try dp.installReplicated(r, serviceSlot: 0, endpointIndex: 0, timeouts: t, path: path)
                let reaper = ConnectionReaper(timeouts: t)
                let e = try #require(entry(dp, r.key))
                #expect(abs(e.idleSeconds - 1.7) < 0.2, "idle = timeout - remaining: \(e.idleSeconds)")
                #expect(reaper.expired(in: dp.connectionEntries()).delete.isEmpty)
                try await Task.sleep(for: .milliseconds(500))
                let (delete, events) = reaper.expired(in: dp.connectionEntries())
                #expect(Set(delete) == [r.key, r.replyKey])
                #expect(events.map(\.key) == [r.key] && events.first?.kind == .expired)
                // The datapath agrees: the next packet finds it expired and starts over locally.
                _ = try dp.testRun(packet: Packets.frame(r.key, tcpFlags: .ack))
                #expect(dp.stats().expiredReused == 1)
                let local = try #require(entry(dp, r.key))
                #expect(local.flags == .pickedUp)
                #expect(entry(dp, r.replyKey) == nil)

                // A remaining time longer than our timeout counts as just seen, never in the future.
                let long = record(47_101, remaining: 60_000)
                try dp.installReplicated(long, serviceSlot: 0, endpointIndex: 0, timeouts: t, path: path)
                let l = try #require(entry(dp, long.key))
                #expect(l.idleSeconds < 0.2)
                // An age beyond the monotonic clock's value is clamped, not wrapped.
                let old = record(47_102, age: .max)
                try dp.installReplicated(old, serviceSlot: 0, endpointIndex: 0, timeouts: t, path: path)
                let expected = min(Double(monotonicNanoseconds()) / 1e9, Double(UInt32.max) / 1000)
                #expect(abs((entry(dp, old.key)?.ageSeconds ?? 0) - expected) < 1)
            }
        }

        @Test(arguments: paths) func reinstallKeepsCountersAndTakesTheNewState(path: InstallPath) async throws {
            try await with([service()]) { dp in
                let r = record(47_200)
                try dp.installReplicated(r, serviceSlot: 0, endpointIndex: 0, timeouts: Timeouts(), path: path)
                for _ in 0..<2 { _ = try dp.testRun(packet: Packets.frame(r.key, tcpFlags: .ack)) }
                _ = try dp.testRun(packet: Packets.frame(r.replyKey, tcpFlags: .ack))
                var update = r
                update.state = .finWait
                update.flags = .finOriginal
                update.remainingMilliseconds = 100_000
                try dp.installReplicated(update, serviceSlot: 0, endpointIndex: 0, timeouts: Timeouts(), path: path)
                let entries = dp.connectionEntries()
                #expect(entries.count == 2)
                let o = try #require(entries.first { $0.key == r.key })
                let rep = try #require(entries.first { $0.key == r.replyKey })
                #expect(o.packets == 2 && rep.packets == 1, "counters preserved")
                #expect(o.bytes == 2 * UInt64(Packets.frame(r.key).count))
                #expect(o.state == .finWait && rep.state == .finWait)
                #expect(o.flags == [.fromPeer, .finOriginal] && rep.flags == [.fromPeer, .finOriginal])
                #expect(o.version == 2 && rep.version == 2)
                // Local packets were seen just now: the later last-seen wins over the owner's 20 s idle.
                #expect(o.idleSeconds < 1)
                // And the flow still forwards.
                let fwd = try #require(Packets.parse(try dp.testRun(packet: Packets.frame(r.key, tcpFlags: .ack)).packet))
                #expect(fwd.tuple == r.translated && fwd.l4ChecksumOK)
            }
        }

        @Test(arguments: paths) func reinstallWithAnotherReplyKeyRemovesTheStaleHalf(path: InstallPath) async throws {
            try await with([service()]) { dp in
                let first = record(47_300, snatPort: 61_300)
                try dp.installReplicated(first, serviceSlot: 0, endpointIndex: 0, timeouts: Timeouts(), path: path)
                _ = try dp.testRun(packet: Packets.frame(first.key, tcpFlags: .ack))
                // The client reused its tuple for a new connection, which the owner gave another port.
                let second = record(47_300, snatPort: 61_301, endpoint: P.ep2, state: .synSent, remaining: 59_000)
                try dp.installReplicated(second, serviceSlot: 0, endpointIndex: 1, timeouts: Timeouts(), path: path)
                let entries = dp.connectionEntries()
                #expect(entries.count == 2)
                #expect(entries.first { $0.key == first.replyKey } == nil, "stale reply half removed")
                let o = try #require(entries.first { $0.key == second.key })
                #expect(o.peerKey == second.replyKey && o.translated == second.translated)
                #expect(o.packets == 0, "a different connection starts its own counters")
                #expect(o.endpointIndex == 1 && o.state == .synSent)
                #expect(entries.first { $0.key == second.replyKey }?.peerKey == second.key)

                // The reply key handed to yet another connection: the older original that pointed
                // at it would forward into the new translation, so it goes too.
                let third = record(47_301, snatPort: 61_301, endpoint: P.ep2)
                try dp.installReplicated(third, serviceSlot: 0, endpointIndex: 1, timeouts: Timeouts(), path: path)
                let now = dp.connectionEntries()
                #expect(Set(now.map(\.key)) == [third.key, third.replyKey])
            }
        }

        @Test(arguments: paths) func removeConnectionRemovesBothHalvesOnly(path: InstallPath) async throws {
            try await with([service()]) { dp in
                let flows = (0..<3).map { record(47_400 + UInt16($0), snatPort: 61_400 + UInt16($0)) }
                for f in flows { try dp.installReplicated(f, serviceSlot: 0, endpointIndex: 0, timeouts: Timeouts(), path: path) }
                #expect(dp.removeConnection(flows[1].key))
                #expect(Set(dp.connectionEntries().map(\.key)) == [flows[0].key, flows[0].replyKey, flows[2].key, flows[2].replyKey])
                #expect(!dp.removeConnection(flows[1].key), "nothing left to remove")

                // A reply half that no longer points back belongs to another connection: kept.
                dp.deleteEntry(flows[0].replyKey)
                let reuser = record(47_500, snatPort: 61_400)
                #expect(reuser.replyKey == flows[0].replyKey)
                try dp.installReplicated(reuser, serviceSlot: 0, endpointIndex: 0, timeouts: Timeouts(), path: path)
                #expect(dp.removeConnection(flows[0].key))
                #expect(Set(dp.connectionEntries().map(\.key)) == [flows[2].key, flows[2].replyKey, reuser.key, reuser.replyKey])
            }
        }

        @Test(arguments: paths) func installedUDPFlowForwardsRepliesAndAdvancesState(path: InstallPath) async throws {
            try await with([service(.udp)]) { dp in
                let r = record(5_353, proto: 17, snatPort: 62_000, endpoint: P.ep2, state: .udpNew, age: 1_000, remaining: 29_000)
                try dp.installReplicated(r, serviceSlot: 0, endpointIndex: 1, timeouts: Timeouts(), path: path)
                let back = try #require(Packets.parse(try dp.testRun(packet: Packets.frame(r.replyKey)).packet))
                #expect(back.tuple == r.key.reversed)
                #expect(back.ipChecksumOK && back.l4ChecksumOK)
                let fwd = try #require(Packets.parse(try dp.testRun(packet: Packets.frame(r.key)).packet))
                #expect(fwd.tuple == r.translated)
                #expect(fwd.ipChecksumOK && fwd.l4ChecksumOK)
                let entries = dp.connectionEntries()
                #expect(entries.count == 2)
                #expect(entries.allSatisfy { $0.state == .udpEstablished && $0.flags == .fromPeer })
                #expect(dp.endpointCounters(slot: 0, index: 1).packets == 2)
            }
        }

        @Test(arguments: paths) func eventsCarryEndpointIndexCreationTimeAndPeerFlag(path: InstallPath) async throws {
            try await with([service()], events: true) { dp in
                // A local flow: NEW with the chosen endpoint's index and its creation time.
                let local = FlowTuple(source: P.client, destination: P.vip, sourcePort: 47_600, destinationPort: 56002, proto: 6)
                let out = try #require(Packets.parse(try dp.testRun(packet: Packets.frame(local, tcpFlags: .syn)).packet))
                let chosen: UInt8 = out.tuple.destination == P.ep1.ip ? 0 : 1
                let evs = try dp.drainEvents()
                #expect(evs.count == 1)
                let new = try #require(evs.first)
                #expect(new.event.kind == .new && new.event.key == local)
                #expect(new.event.endpointIndex == chosen)
                #expect(new.event.createdNanoseconds == new.timestampNanoseconds, "created by this very packet")
                #expect(!new.flags.contains(.fromPeer))
                #expect(new.event.flags == new.flags)

                // An installed flow: its state change is still reported, marked as from a peer.
                let r = record(47_601, endpoint: P.ep2, age: 7_000)
                let before = monotonicNanoseconds()
                try dp.installReplicated(r, serviceSlot: 0, endpointIndex: 1, timeouts: Timeouts(), path: path)
                #expect(try dp.drainEvents().isEmpty, "installing emits nothing: the datapath did not see it")
                _ = try dp.testRun(packet: Packets.frame(r.replyKey, tcpFlags: [.fin, .ack]))
                let st = try #require(try dp.drainEvents().first)
                #expect(st.event.kind == .stateChanged && st.event.key == r.key && st.event.translated == r.translated)
                #expect(st.event.state == .finWait)
                #expect(st.flags.contains(.fromPeer) && st.flags.contains(.finReply))
                #expect(st.event.flags == st.flags, "ConnectionEvent carries the flags too")
                #expect(st.event.endpointIndex == 1)
                let age = Double(st.timestampNanoseconds - st.event.createdNanoseconds) / 1e9
                #expect(abs(age - 7) < 0.5, "age from created_ns: \(age)")
                #expect(st.event.createdNanoseconds < before)
            }
        }

        @Test func busyFlowsAreReannouncedEveryQuarterTimeoutNotEveryPacket() async throws {
            // 10 s timeouts: a refresh is due once 2 units of 2^30 ns have passed (1.07-2.15 s).
            var t = Timeouts()
            t.udpNew = 10
            t.udpEstablished = 10
            try await with([service(.udp)], timeouts: t, events: true) { dp in
                let flow = FlowTuple(source: P.client, destination: P.vip, sourcePort: 47_900, destinationPort: 56002, proto: 17)
                let out = try #require(Packets.parse(try dp.testRun(packet: Packets.frame(flow)).packet))
                #expect(try dp.drainEvents().map(\.event.kind) == [.new])
                func send(_ key: FlowTuple, for seconds: Double) async throws -> [DatapathEventRecord] {
                    let until = monotonicNanoseconds() + UInt64(seconds * 1e9)
                    var packets = 0
                    while monotonicNanoseconds() < until {
                        _ = try dp.testRun(packet: Packets.frame(key))
                        packets += 1
                        try await Task.sleep(for: .milliseconds(50))
                    }
                    #expect(packets > Int(seconds * 10))
                    return try dp.drainEvents()
                }
                #expect(try await send(flow, for: 0.9).isEmpty, "no refresh within the first unit")
                let refreshes = try await send(flow, for: 2.6)
                #expect((1...3).contains(refreshes.count), "\(refreshes.count) refreshes for ~50 packets")
                for r in refreshes {
                    #expect(r.event.kind == .refreshed && r.event.key == flow && r.event.translated == out.tuple)
                    #expect(r.event.state == .udpNew && r.event.version == 1, "a refresh changes nothing")
                }
                // The endpoint answers: one state change, then its packets alone keep the flow
                // announced, each refresh describing the original direction.
                let reply = out.tuple.reversed
                let answered = try await send(reply, for: 3.5)
                #expect(answered.first?.event.kind == .stateChanged)
                let later = answered.dropFirst()
                #expect((1...3).contains(later.count), "\(later.count) refreshes")
                #expect(later.allSatisfy { $0.event.kind == .refreshed && $0.event.key == flow && $0.event.state == .udpEstablished })
            }
        }

        @Test(arguments: paths) func flowOfAnUnknownServiceIsForwardedButNotCounted(path: InstallPath) async throws {
            try await with([service()]) { dp in
                // 256 is the "no such service here" slot; 0x0400_0000 * 64 would wrap to slot 0.
                for (i, slot) in [UInt32(256), 0x0400_0000, .max].enumerated() {
                    let r = record(47_700 + UInt16(i), snatPort: 61_700 + UInt16(i))
                    try dp.installReplicated(r, serviceSlot: slot, endpointIndex: 0, timeouts: Timeouts(), path: path)
                    let fwd = try #require(Packets.parse(try dp.testRun(packet: Packets.frame(r.key, tcpFlags: .ack)).packet))
                    #expect(fwd.tuple == r.translated && fwd.l4ChecksumOK)
                    let back = try #require(Packets.parse(try dp.testRun(packet: Packets.frame(r.replyKey, tcpFlags: .ack)).packet))
                    #expect(back.tuple == r.key.reversed)
                    #expect(entry(dp, r.key)?.serviceSlot == slot)
                }
                #expect(dp.serviceCounters(slot: 0).packets == 0)
                #expect(dp.endpointCounters(slot: 0, index: 0).packets == 0)
            }
        }

        @Test(arguments: paths) func batchInstallMatchesSingleInstalls(path: InstallPath) async throws {
            try await with([service()]) { dp in
                let flows = (0..<300).map { record(10_000 + UInt16($0), snatPort: 50_000 + UInt16($0)) }
                // One already present with traffic, to exercise the merging path inside a batch.
                try dp.installReplicated(flows[7], serviceSlot: 0, endpointIndex: 0, timeouts: Timeouts(), path: path)
                _ = try dp.testRun(packet: Packets.frame(flows[7].key, tcpFlags: .ack))
                var bad = flows[8]
                bad.translated.proto = 17
                var batch = flows.map { ($0, UInt32(0), UInt8(0)) }
                batch[8] = (bad, 0, 0)
                let result = dp.installReplicated(batch, timeouts: Timeouts(), path: path)
                #expect(result.installed == 299 && result.failed == 1)
                let entries = dp.connectionEntries()
                #expect(entries.count == 2 * 299)
                #expect(entries.allSatisfy { $0.flags == .fromPeer })
                #expect(entries.first { $0.key == flows[7].key }?.packets == 1, "merged, counters kept")
                #expect(entries.first { $0.key == flows[9].key }?.version == 1)
                let fwd = try #require(Packets.parse(try dp.testRun(packet: Packets.frame(flows[299].key, tcpFlags: .ack)).packet))
                #expect(fwd.tuple == flows[299].translated)
            }
        }

        @Test func oneWayTrafficKeepsTheConnectionAlive() async throws {
            // Only the client sends for longer than the idle timeout; the endpoint's late answer
            // must still find its connection (the datapath, like the reaper, takes the fresher half).
            var t = Timeouts()
            t.udpEstablished = 1
            try await with([service(.udp)], timeouts: t) { dp in
                let r = record(5_400, proto: 17, snatPort: 62_100, state: .udpEstablished, remaining: 1_000)
                try dp.installReplicated(r, serviceSlot: 0, endpointIndex: 0, timeouts: t)
                for _ in 0..<3 {
                    try await Task.sleep(for: .milliseconds(450))
                    _ = try dp.testRun(packet: Packets.frame(r.key))
                }
                #expect((entry(dp, r.replyKey)?.idleSeconds ?? 0) > 1, "the reply half alone is past its timeout")
                #expect(ConnectionReaper(timeouts: t).expired(in: dp.connectionEntries()).delete.isEmpty)
                let back = try #require(Packets.parse(try dp.testRun(packet: Packets.frame(r.replyKey)).packet))
                #expect(back.tuple == r.key.reversed)
                #expect(dp.stats().expiredReused == 0)
                #expect(dp.connectionEntries().count == 2)
            }
        }

        @Test func reopeningATupleLeavesAReusedReplyKeyAlone() async throws {
            try await with([service()]) { dp in
                // A's reply key passes to B (A's reply half was lost, as LRU eviction can do), so
                // A's original still points at a key that is now B's.
                let a = record(47_800, snatPort: 61_800)
                try dp.installReplicated(a, serviceSlot: 0, endpointIndex: 0, timeouts: Timeouts())
                dp.deleteEntry(a.replyKey)
                let b = record(47_801, snatPort: 61_800)
                #expect(b.replyKey == a.replyKey)
                try dp.installReplicated(b, serviceSlot: 0, endpointIndex: 0, timeouts: Timeouts())
                #expect(entry(dp, a.key)?.peerKey == b.replyKey)
                // The client of A opens a new connection on its tuple: only A's own halves go.
                _ = try dp.testRun(packet: Packets.frame(a.key, tcpFlags: .syn))
                #expect(entry(dp, b.replyKey)?.peerKey == b.key, "B's reply half survives")
                let back = try #require(Packets.parse(try dp.testRun(packet: Packets.frame(b.replyKey, tcpFlags: .ack)).packet))
                #expect(back.tuple == b.key.reversed)
            }
        }

        @Test func installThroughput() async throws {
            let n = 100_000
            let flows = (0..<n).map { i in
                let client = IPv4Address(10, 1, UInt8(i >> 16 & 0xff), UInt8(i >> 8 & 0xff))
                let key = FlowTuple(source: client, destination: P.vip, sourcePort: UInt16(1024 + i & 0xff), destinationPort: 56002, proto: 6)
                // Unique reply keys: (endpoint address, SNAT port) differs for every i.
                let xlate = FlowTuple(source: P.vip, destination: IPv4Address(10, 2, UInt8(i >> 15 & 0xff), 1),
                                      sourcePort: UInt16(32768 + i % 32768), destinationPort: 80, proto: 6)
                return FlowRecord(key: key, translated: xlate, natMode: .fullnat, state: .established, flags: [],
                                  endpointIndex: 0, ageMilliseconds: 1_000, remainingMilliseconds: 21_000_000)
            }
            #expect(Set(flows.map(\.key)).count == n && Set(flows.map(\.replyKey)).count == n)
            let batch = flows.map { ($0, UInt32(0), UInt8(0)) }
            /// Connections per second of `body` over all n flows.
            func rate(_ body: () throws -> Void) rethrows -> Int {
                let start = ContinuousClock.now
                try body()
                let d = ContinuousClock.now - start
                return Int(Double(n) / (Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18))
            }
            try await with([service()], tableSize: 524_288) { dp in
                var report: [String] = []
                for path in Self.paths {
                    let single = try rate { for f in flows { try dp.installReplicated(f, serviceSlot: 0, endpointIndex: 0, timeouts: Timeouts(), path: path) } }
                    #expect(dp.connectionEntries().count == 2 * n)
                    let update = try rate { for f in flows { try dp.installReplicated(f, serviceSlot: 0, endpointIndex: 0, timeouts: Timeouts(), path: path) } }
                    let removes = rate { for f in flows { dp.removeConnection(f.key) } }
                    #expect(dp.connectionEntries().isEmpty)
                    var result = (installed: 0, failed: 0)
                    let batchNew = rate { result = dp.installReplicated(batch, timeouts: Timeouts(), path: path) }
                    #expect(result.installed == n && result.failed == 0)
                    let batchUpdate = rate { result = dp.installReplicated(batch, timeouts: Timeouts(), path: path) }
                    #expect(result.installed == n)
                    #expect(dp.connectionEntries().count == 2 * n)
                    for f in flows { dp.removeConnection(f.key) }
                    report.append("\(path): single new \(single)/s, single update \(update)/s, batch new \(batchNew)/s, "
                                  + "batch update \(batchUpdate)/s, remove \(removes)/s")
                }
                print("replicated installs, \(n) connections (2 entries each): " + report.joined(separator: "; "))
            }
        }
    }
}
