import TandemCore
import Testing
@testable import TandemConntrack

@Suite struct ConntrackFilterTests {
    @Test func everythingPassesByDefault() {
        #expect(ConntrackFilter.all.matches(natTCP()))
        #expect(ConntrackFilter.all.matches(plainUDP()))
    }

    @Test func protocols() throws {
        let f = try ConntrackFilter(config: .init(protocols: ["tcp"]))
        #expect(f.matches(natTCP()))
        #expect(!f.matches(plainUDP()))
        let g = try ConntrackFilter(config: .init(protocols: ["UDP", "132"]))
        #expect(g.protocols == [17, 132])
    }

    @Test func excludeWinsAndMatchesEitherSide() throws {
        // The node's own management traffic: anything from or to 10.0.20.9.
        let f = try ConntrackFilter(config: .init(include: ["10.0.0.0/8"], exclude: ["10.0.20.9/32"]))
        #expect(f.matches(natTCP()))
        #expect(!f.matches(plainUDP()))   // source 10.0.20.9
        let dst = try ConntrackFilter(config: .init(exclude: ["10.0.30.0/24"]))
        #expect(!dst.matches(plainUDP()))  // destination 10.0.30.1
        let inc = try ConntrackFilter(config: .init(include: ["192.168.0.0/16"]))
        #expect(!inc.matches(natTCP()))
        let incDst = try ConntrackFilter(config: .init(include: ["10.0.10.143"]))
        #expect(incDst.matches(natTCP()))  // original destination (the VIP)
    }

    /// What the kernel sync always leaves out: loopback and the nodes' own addresses (their sync,
    /// gossip and management traffic), whatever the configured filter; NATed flows SNATed to a
    /// node address (reply direction only) and port forwards on the VIP still pass.
    @Test func eachNodesOwnTrafficIsLeftOut() throws {
        let node = ip("10.0.10.141"), peer = ip("10.0.10.88")
        let f = try ConntrackFilter(config: .init(protocols: ["tcp", "udp"])).excludingNodeTraffic([node, peer])
        #expect(f.matches(natTCP()))   // reply to 10.0.10.141 (SNAT), original to the VIP
        let sync = KernelConnection(original: .ports(17, peer, 11115, node, 11115), reply: .ports(17, node, 11115, peer, 11115),
                                    status: [.confirmed], timeout: 30)
        #expect(!f.matches(sync))
        let api = KernelConnection(original: .ports(6, ip("127.0.0.1"), 40000, ip("127.0.0.1"), 11111),
                                   reply: .ports(6, ip("127.0.0.1"), 11111, ip("127.0.0.1"), 40000),
                                   tcp: TCPInfo(state: .established), status: [.confirmed], timeout: 300)
        #expect(!f.matches(api))
        let ssh = KernelConnection(original: .ports(6, ip("192.0.2.7"), 50000, node, 22), reply: .ports(6, node, 22, ip("192.0.2.7"), 50000),
                                   tcp: TCPInfo(state: .established), status: [.confirmed], timeout: 300)
        #expect(!f.matches(ssh))
        #expect(f.protocols == [6, 17])   // the configured criteria stay
        #expect(f.excludingNodeTraffic([node]).exclude.count == f.exclude.count)   // no duplicates
    }

    @Test func zonesAndMarks() throws {
        let z = try ConntrackFilter(config: .init(zones: [3]))
        #expect(z.matches(natTCP()))
        #expect(!z.matches(plainUDP()))   // zone 0
        let m = try ConntrackFilter(config: .init(marks: ["0x40/0xf0"]))
        #expect(m.matches(natTCP()))       // 0x42 & 0xf0 == 0x40
        #expect(!m.matches(plainUDP()))    // mark 0
        let exact = try ConntrackFilter(config: .init(marks: ["66", "0x1"]))
        #expect(exact.matches(natTCP()))
    }

    @Test func natSelection() throws {
        let masq = KernelConnection(original: .ports(6, ip("10.1.0.2"), 33000, ip("10.2.0.2"), 80),
                                    reply: .ports(6, ip("10.2.0.2"), 80, ip("10.2.0.1"), 33000))
        let dnatOnly = KernelConnection(original: .ports(6, ip("10.1.0.2"), 33000, ip("10.1.0.1"), 80),
                                        reply: .ports(6, ip("10.2.0.2"), 80, ip("10.1.0.2"), 33000))
        let table: [(String, [Bool])] = [   // natTCP (both), masq (snat), dnatOnly, plainUDP (none)
            ("all", [true, true, true, true]),
            ("nat", [true, true, true, false]),
            ("snat", [true, true, false, false]),
            ("dnat", [true, false, true, false]),
            ("none", [false, false, false, true]),
        ]
        for (sel, expected) in table {
            let f = try ConntrackFilter(config: .init(nat: sel))
            #expect([natTCP(), masq, dnatOnly, plainUDP()].map(f.matches) == expected, "nat: \(sel)")
        }
    }

    @Test func validationErrors() {
        func err(_ c: ConntrackFilter.Config) -> ConntrackFilterError? {
            do { _ = try ConntrackFilter(config: c); return nil } catch { return error }
        }
        #expect(err(.init(protocols: [])) == .emptyList("protocols"))
        #expect(err(.init(protocols: ["quic"])) == .unknownProtocol("quic"))
        #expect(err(.init(protocols: ["300"])) == .unknownProtocol("300"))
        #expect(err(.init(include: ["10.0.0.0/33"])) == .badPrefix(field: "include", "10.0.0.0/33"))
        #expect(err(.init(exclude: ["10.0.0.1/24"])) == .hostBitsSet(field: "exclude", "10.0.0.1/24"))
        #expect(err(.init(exclude: [])) == .emptyList("exclude"))
        #expect(err(.init(zones: [70000])) == .zoneOutOfRange(70000))
        #expect(err(.init(zones: [-1])) == .zoneOutOfRange(-1))
        #expect(err(.init(marks: ["0x10/0"])) == .zeroMarkMask("0x10/0"))
        #expect(err(.init(marks: ["0x11/0x10"])) == .markOutsideMask("0x11/0x10"))
        #expect(err(.init(marks: ["ten"])) == .badMark("ten"))
        #expect(err(.init(marks: ["1/2/3"])) == .badMark("1/2/3"))
        #expect(err(.init(nat: "masquerade")) == .unknownNATSelection("masquerade"))
        #expect(err(.init(protocols: ["tcp"], include: ["10.0.0.0/8"], zones: [0], marks: ["1"], nat: "DNAT")) == nil)
        #expect(ConntrackFilterError.hostBitsSet(field: "exclude", "10.0.0.1/24").description.contains("10.0.0.1/24"))
    }
}
