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
