import CLibBPF
import Foundation
import Glibc
import Logging
import Testing
@testable import TandemCore
@testable import TandemDatapath

/// A socket created inside a namespace (a socket keeps the namespace it was made in), then used
/// from the test's own thread. Closed by `close()` on every path.
private final class NetnsSocket: @unchecked Sendable {
    let fd: Int32

    init(ns: String, udp: Bool = false, timeout: Int = 3) throws {
        fd = try inNetns(ns) {
            let s = socket(AF_INET, Int32(udp ? SOCK_DGRAM.rawValue : SOCK_STREAM.rawValue), 0)
            guard s >= 0 else { throw TestFailure("socket in \(ns): errno \(errno)") }
            return s
        }
        // Bounded: connect honours SO_SNDTIMEO, recv SO_RCVTIMEO.
        var tv = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// connect(2): 0, or the errno.
    func connect(_ ip: IPv4Address, _ port: UInt16) -> Int32 {
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port.bigEndian
        a.sin_addr.s_addr = ip.value.bigEndian
        let rc = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        return rc == 0 ? 0 : errno
    }

    var localPort: UInt16 {
        var a = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return UInt16(bigEndian: a.sin_port)
    }

    /// Sends `text` and reads one answer: the answer, or the errno (0 for an orderly close).
    func exchange(_ text: String) -> Result<String, SocketErrno> {
        let bytes = Array(text.utf8)
        let sent = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if sent < 0 { return .failure(SocketErrno(errno)) }
        var buf = [UInt8](repeating: 0, count: 512)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n < 0 { return .failure(SocketErrno(errno)) }
        if n == 0 { return .failure(SocketErrno(0)) }
        return .success(String(decoding: buf.prefix(n), as: UTF8.self))
    }

    func close() { Glibc.close(fd) }
}

private struct SocketErrno: Error, Equatable, CustomStringConvertible {
    var code: Int32
    init(_ code: Int32) { self.code = code }
    var description: String { code == 0 ? "closed" : String(cString: strerror(code)) }
}

extension Privileged {
    /// Endpoint health in the datapath (issue 14, item 2): a down endpoint leaves every selection
    /// mode for new connections and comes back when up; Maglev is rebuilt alike on every node;
    /// established connections are kept, or reset where the service asks; a service with nothing
    /// up refuses at once (TCP RST, ICMP port unreachable), counted per service.
    @Suite(.timeLimit(.minutes(4))) struct EndpointState {
        static let vip = IPv4Address(10, 0, 10, 143)
        static let client = IPv4Address(10, 0, 20, 10)
        static let eps = (0..<3).map { Endpoint(ip: IPv4Address(10, 0, 10, UInt8(21 + $0)), port: 80) }
        static let seed: UInt32 = 0x5eed_0014

        func load() async throws -> Datapath {
            let dp = try Datapath(objectPath: Env.bpfObject, connectionTableSize: 4096, logger: Logger(label: "test"))
            try await dp.apply(settings: DatapathSettings(nodeIP: IPv4Address(10, 0, 10, 141), hashSeed: Self.seed,
                                                          portSlice: PortSlice(low: 40000, high: 40999), emitEvents: false))
            return dp
        }

        func service(_ sel: Selection, port: UInt16 = 56002, proto: L4Protocol = .tcp, endpoints: [Endpoint] = eps,
                     reset: Bool = false) -> Service {
            Service(key: ServiceKey(vip: Self.vip, port: port, proto: proto), mode: .fullnat, selection: sel,
                    endpoints: endpoints, resetOnEndpointDown: reset)
        }

        func tuple(_ sport: UInt16, src: IPv4Address = client, port: UInt16 = 56002, proto: UInt8 = 6) -> FlowTuple {
            FlowTuple(source: src, destination: Self.vip, sourcePort: sport, destinationPort: port, proto: proto)
        }

        /// Where a new connection on `t` goes: an index into `eps`, or nil when it is not forwarded.
        func pick(_ dp: Datapath, _ t: FlowTuple, flags: TCPFlags = .syn) throws -> Int? {
            let out = try dp.testRun(packet: Packets.frame(t, tcpFlags: flags))
            guard let p = Packets.parse(out.packet) else { return nil }
            return Self.eps.firstIndex { $0.ip == p.tuple.destination }
        }

        func counts(_ picks: [Int?]) -> [Int] {
            (0..<Self.eps.count).map { i in picks.filter { $0 == i }.count }
        }

        /// SYN, SYN-ACK, ACK through the program: an ESTABLISHED connection; returns its endpoint.
        @discardableResult
        func establish(_ dp: Datapath, _ t: FlowTuple) throws -> Int? {
            let out = try #require(Packets.parse(try dp.testRun(packet: Packets.frame(t, tcpFlags: .syn)).packet))
            _ = try dp.testRun(packet: Packets.frame(out.tuple.reversed, tcpFlags: [.syn, .ack]))
            _ = try dp.testRun(packet: Packets.frame(t, tcpFlags: .ack))
            return Self.eps.firstIndex { $0.ip == out.tuple.destination }
        }

        @Test(arguments: [Selection.roundRobin, .weighted, .leastConnections])
        func scheduleModesSkipADownEndpointAndTakeItBack(sel: Selection) async throws {
            let dp = try await load()
            defer { Task { await dp.close() } }
            var svc = service(sel)
            if sel == .weighted { svc.endpoints[0].weight = 2 } // schedule 0,1,2,0
            try await dp.install(svc, slot: 0, hashSeed: Self.seed)
            for i in 0..<3 { _ = try pick(dp, tuple(44_900 + UInt16(i))) }
            let flowsBefore = dp.serviceCounters(slot: 0).newFlows
            let cursorBefore = dp.maps.rr.lookup(UInt32(0), as: UInt32.self)
            let entriesBefore = dp.connectionEntries().count

            try await dp.setEndpointState(slot: 0, index: 1, up: false)
            #expect(dp.endpointDownStates(slot: 0, count: 3) == [false, true, false])
            #expect(await dp.downEndpoints(slot: 0) == [1])
            // A flip touches neither counters, cursor nor connections.
            #expect(dp.serviceCounters(slot: 0).newFlows == flowsBefore)
            #expect(dp.maps.rr.lookup(UInt32(0), as: UInt32.self) == cursorBefore)
            #expect(dp.connectionEntries().count == entriesBefore)

            let down = try (0..<30).map { try pick(dp, tuple(45_000 + UInt16($0))) }
            #expect(!down.contains(nil), "every new connection is served")
            let c = counts(down)
            #expect(c[1] == 0, "\(sel): no new connection to the down endpoint: \(c)")
            switch sel {
            case .roundRobin: #expect(c == [15, 0, 15], "the live endpoints keep equal shares")
            case .weighted: #expect(c == [20, 0, 10], "the live endpoints keep their weights")
            default: #expect(c[0] >= 10 && c[2] >= 10, "\(c)")
            }

            try await dp.setEndpointState(slot: 0, index: 1, up: true)
            #expect(dp.endpointDownStates(slot: 0, count: 3) == [false, false, false])
            let up = try (0..<30).map { try pick(dp, tuple(46_000 + UInt16($0))) }
            switch sel {
            case .roundRobin: #expect(counts(up) == [10, 10, 10])
            case .leastConnections: #expect(up.prefix(10).allSatisfy { $0 == 1 }, "the idle endpoint is least loaded: \(up)")
            default: #expect(counts(up)[1] >= 7, "\(counts(up))")
            }
        }

        @Test func persistenceRepicksWhenTheRememberedEndpointIsDown() async throws {
            let dp = try await load()
            defer { Task { await dp.close() } }
            try await dp.install(service(.persist), slot: 0, hashSeed: Self.seed)
            let first = try #require(try pick(dp, tuple(47_000)))
            #expect(try pick(dp, tuple(47_001)) == first, "remembered")
            try await dp.setEndpointState(slot: 0, index: first, up: false)
            let second = try #require(try pick(dp, tuple(47_002)))
            #expect(second != first, "re-picked off the down endpoint")
            #expect(try pick(dp, tuple(47_003)) == second, "and the new pick is remembered")
            try await dp.setEndpointState(slot: 0, index: first, up: true)
            #expect(try pick(dp, tuple(47_004)) == second, "recovery does not move a client back")
            // New clients never land on a down endpoint, and spread over the others.
            try await dp.setEndpointState(slot: 0, index: first, up: false)
            let others = try (0..<20).map { try pick(dp, tuple(47_100, src: IPv4Address(10, 0, 20, UInt8(100 + $0)))) }
            #expect(!others.contains(first) && !others.contains(nil))
            #expect(Set(others).count == 2, "\(others)")
        }

        @Test func maglevIsRebuiltWithoutTheDownEndpointAndNodesAgree() async throws {
            let a = try await load()
            let b = try await load()
            defer { Task { await a.close(); await b.close() } }
            let svc = service(.maglev)
            try await a.install(svc, slot: 0, hashSeed: Self.seed)
            let full = a.maglevTable(slot: 0)
            #expect(full == Maglev.table(endpoints: Self.eps, seed: Self.seed))
            try await a.setDownEndpoints(slot: 0, [1])
            // Node b learns the verdict before it creates the service (a restart, or gossip before
            // a takeover), in another slot: the same table all the same.
            try await b.install(svc, slot: 3, hashSeed: Self.seed, downEndpoints: [1])
            let ta = a.maglevTable(slot: 0)
            #expect(ta.count == Int(DatapathLimits.maglevM))
            #expect(ta == b.maglevTable(slot: 3), "two nodes, same endpoints, seed and verdicts: one table")
            #expect(ta == Maglev.table(endpoints: Self.eps, seed: Self.seed, down: [1]))
            #expect(!ta.contains(1))
            var moved = 0
            for port in UInt16(30_000)..<UInt16(30_200) {
                let t = tuple(port)
                let pa = try pick(a, t), pb = try pick(b, t)
                #expect(pa != nil && pa == pb, "both nodes pick alike for \(port)")
                #expect(pa != 1)
                let before = Maglev.pick(table: full, source: t.source, destination: t.destination, sourcePort: port,
                                         destinationPort: 56002, proto: 6, seed: Self.seed)
                if before == 1 { moved += 1 } else { #expect(pa == before, "a flow off the down endpoint keeps its endpoint") }
            }
            #expect(moved > 30, "about a third of the flows were on endpoint 1: \(moved)")
            // Up again: the whole table back on both, so flows return to where they were.
            try await a.setEndpointState(slot: 0, index: 1, up: true)
            try await b.setDownEndpoints(slot: 3, [])
            #expect(a.maglevTable(slot: 0) == full && b.maglevTable(slot: 3) == full)
            for port in UInt16(31_000)..<UInt16(31_060) {
                let t = tuple(port)
                let expected = Maglev.pick(table: full, source: t.source, destination: t.destination, sourcePort: port,
                                           destinationPort: 56002, proto: 6, seed: Self.seed)
                #expect(try pick(a, t) == expected)
            }
        }

        @Test func verdictsFollowTheEndpointAcrossReinstallsAndEndWithTheService() async throws {
            let dp = try await load()
            defer { Task { await dp.close() } }
            try await dp.install(service(.roundRobin), slot: 0, hashSeed: Self.seed)
            try await dp.setDownEndpoints(slot: 0, [2])
            // Reordered, one endpoint removed: eps[2] is now index 0 and stays down.
            try await dp.install(service(.roundRobin, endpoints: [Self.eps[2], Self.eps[0]]), slot: 0, hashSeed: Self.seed)
            #expect(await dp.downEndpoints(slot: 0) == [0])
            #expect(dp.endpointDownStates(slot: 0, count: 3) == [true, false, false])
            let picks = try (0..<6).map { try pick(dp, tuple(48_000 + UInt16($0))) }
            #expect(picks.allSatisfy { $0 == 0 }, "only eps[0] is up: \(picks)")
            await #expect(throws: DatapathError.self) { try await dp.setEndpointState(slot: 0, index: 2, up: false) }
            await #expect(throws: DatapathError.self) { try await dp.setDownEndpoints(slot: 9, [0]) }
            // By service key and address, as a monitor reports (weight ignored, strangers ignored).
            var reported = Self.eps[0]
            reported.weight = 9
            try await dp.setDownEndpoints(service(.roundRobin).key, [reported, Endpoint(ip: IPv4Address(192, 0, 2, 1), port: 80)])
            #expect(await dp.downEndpoints(slot: 0) == [1])
            try await dp.setDownEndpoints(service(.roundRobin).key, [])
            #expect(await dp.downEndpoints(slot: 0).isEmpty)
            try await dp.setDownEndpoints(slot: 0, [0])
            await #expect(throws: DatapathError.self) { try await dp.setDownEndpoints(service(.roundRobin, port: 1).key, []) }
            // A new service in the slot starts with every endpoint up.
            await dp.uninstall(service(.roundRobin).key, slot: 0)
            #expect(dp.endpointDownStates(slot: 0, count: 3) == [false, false, false])
            try await dp.install(service(.roundRobin, endpoints: [Self.eps[2], Self.eps[0]]), slot: 0, hashSeed: Self.seed)
            #expect(await dp.downEndpoints(slot: 0).isEmpty)
            #expect(Set(try (0..<4).map { try pick(dp, tuple(48_100 + UInt16($0))) }) == [0, 2])
        }

        @Test func establishedConnectionsAreKeptOrResetAsTheServiceAsks() async throws {
            let dp = try await load()
            defer { Task { await dp.close() } }
            let one = [Self.eps[0]], two = [Self.eps[0], Self.eps[1]]
            try await dp.install(service(.roundRobin, endpoints: one), slot: 0, hashSeed: Self.seed)
            try await dp.install(service(.roundRobin, port: 56003, endpoints: one, reset: true), slot: 1, hashSeed: Self.seed)
            try await dp.install(service(.roundRobin, port: 56004, proto: .udp, endpoints: two, reset: true), slot: 2,
                                 hashSeed: Self.seed)
            try await dp.install(service(.roundRobin, port: 56005, endpoints: two), slot: 3, hashSeed: Self.seed)
            let kept = tuple(49_000), reset = tuple(49_001, port: 56003)
            try establish(dp, kept)
            try establish(dp, reset)
            let udp = tuple(49_002, port: 56004, proto: 17)
            let udpFirst = try #require(try pick(dp, udp, flags: []))
            try await dp.setDownEndpoints(slot: 0, [0])
            try await dp.setDownEndpoints(slot: 1, [0])
            try await dp.setDownEndpoints(slot: 2, [udpFirst])

            // Default: the connection goes on to its endpoint until its own timeout.
            #expect(try pick(dp, kept, flags: [.psh, .ack]) == 0)
            #expect(dp.connectionEntries().contains { $0.key == kept })
            // Reset: a RST back to the client with seq = what the client acknowledged, and gone.
            let entries = dp.connectionEntries().count
            let out = try dp.testRun(packet: Packets.frame(reset, tcpFlags: [.psh, .ack], seq: 5000, ack: 0x1234_5678))
            let p = try #require(Packets.parse(out.packet))
            #expect(p.tuple == reset.reversed)
            #expect(p.ipChecksumOK && p.l4ChecksumOK)
            #expect(out.packet.count == 54, "headers only")
            #expect(out.packet[47] == TCPFlags.rst.rawValue)
            #expect(Array(out.packet[38..<42]) == [0x12, 0x34, 0x56, 0x78])
            #expect(!dp.connectionEntries().contains { $0.key == reset })
            #expect(dp.connectionEntries().count == entries - 2, "both halves forgotten")
            #expect(dp.serviceCounters(slot: 1).resetDown == 1)
            #expect(dp.serviceCounters(slot: 0).resetDown == 0)
            // UDP with the option: the flow moves to a live endpoint.
            let udpNext = try #require(try pick(dp, udp, flags: []))
            #expect(udpNext != udpFirst)
            #expect(dp.serviceCounters(slot: 2).resetDown == 1)
            #expect(dp.stats().resetsSent == 1)

            // An unanswered handshake on a down endpoint has nothing to keep: the retransmitted SYN
            // moves to a live one, even without the option.
            let syn = tuple(49_003, port: 56005)
            let firstTry = try #require(try pick(dp, syn))
            try await dp.setDownEndpoints(slot: 3, [firstTry])
            let retry = try #require(try pick(dp, syn))
            #expect(retry != firstTry)
            #expect(dp.connectionEntries().filter { $0.key == syn }.count == 1)
        }

        @Test func withNothingUpNewConnectionsAreRefusedAtOnceAndCounted() async throws {
            let dp = try await load()
            defer { Task { await dp.close() } }
            try await dp.install(service(.roundRobin), slot: 0, hashSeed: Self.seed)
            try await dp.install(service(.maglev, proto: .udp), slot: 1, hashSeed: Self.seed)
            try await dp.setDownEndpoints(slot: 0, [0, 1, 2])
            try await dp.setDownEndpoints(slot: 1, [0, 1, 2])

            // TCP SYN: RST|ACK acknowledging the SYN, from the service back to the client.
            let t = tuple(50_000)
            let out = try dp.testRun(packet: Packets.frame(t, tcpFlags: .syn, payload: [], seq: 777))
            let p = try #require(Packets.parse(out.packet))
            #expect(p.tuple == t.reversed)
            #expect(p.ipChecksumOK && p.l4ChecksumOK)
            #expect(out.packet[47] == TCPFlags.rst.rawValue | TCPFlags.ack.rawValue)
            #expect(Array(out.packet[42..<46]) == Packets.be32(778))
            // UDP: ICMP port unreachable quoting the datagram's IP header and first 8 bytes.
            let u = tuple(50_001, proto: 17)
            let frame = Packets.frame(u, payload: Array("a datagram".utf8))
            let icmp = try dp.testRun(packet: frame)
            let q = try #require(Packets.parse(icmp.packet))
            #expect(q.icmpType == 3 && icmp.packet[35] == 3, "port unreachable")
            #expect(q.tuple.source == Self.vip && q.tuple.destination == Self.client)
            #expect(q.ipChecksumOK && q.l4ChecksumOK)
            #expect(Array(icmp.packet[42..<70]) == Array(frame[14..<42]))

            #expect(dp.connectionEntries().isEmpty, "refusals create nothing")
            #expect(dp.serviceCounters(slot: 0).noEndpoint == 1)
            #expect(dp.serviceCounters(slot: 1).noEndpoint == 1)
            let s = dp.stats()
            #expect(s.noEndpoint == 2 && s.resetsSent == 1 && s.unreachablesSent == 1)
            // One endpoint back: served again.
            try await dp.setDownEndpoints(slot: 0, [0, 2])
            try await dp.setDownEndpoints(slot: 1, [0, 1])
            #expect(try pick(dp, tuple(50_002)) == 1)
            #expect(try pick(dp, tuple(50_003, proto: 17), flags: []) == 2)
        }

        /// With the XDP fast path in front, established packets bypass TC; a flow whose endpoint is
        /// down must still reach TC, which resets it (or, without the option, forwards it).
        @Test func xdpFastPathLeavesDownEndpointFlowsToTC() async throws {
            let bed = try TestBed()
            defer { bed.down() }
            let lib = Env.repo.appendingPathComponent("testbed/lib.sh").path
            let ready = try run(["bash", "-c", "source '\(lib)' && tb_xdp_ready llb1"], env: ["TB": bed.name])
            try #require(ready.ok, "tb_xdp_ready: \(ready.stderr)")
            let node = try await AttachedDatapath(bed: bed)
            let llb1 = bed.ns("llb1")
            var xdpIndex: Int32 = 0
            var sockets: [NetnsSocket] = []
            func cleanup() async {
                sockets.forEach { $0.close() }
                if xdpIndex > 0 {
                    let idx = xdpIndex
                    _ = try? inNetns(llb1) { bpf_xdp_detach(idx, UInt32(XDP_FLAGS_DRV_MODE), nil) }
                }
                await node.detach()
            }
            do {
                let fd = node.dp.fastPathProgramFD
                xdpIndex = try inNetns(llb1) { () throws -> Int32 in
                    let idx = Int32(bitPattern: if_nametoindex("eth0"))
                    let rc = bpf_xdp_attach(idx, fd, UInt32(XDP_FLAGS_DRV_MODE), nil)
                    guard idx > 0, rc == 0 else { throw TestFailure("XDP attach in \(llb1): \(rc)") }
                    return idx
                }
                let echo = [Endpoint(ip: IPv4Address(10, 0, 10, 21), port: 9000), Endpoint(ip: IPv4Address(10, 0, 10, 22), port: 9000)]
                try await node.dp.install(service(.roundRobin, port: 56003, endpoints: echo, reset: true), slot: 0, hashSeed: Self.seed)
                try await node.dp.install(service(.roundRobin, port: 56004, endpoints: echo), slot: 1, hashSeed: Self.seed)
                func connectEcho(_ port: UInt16) throws -> (NetnsSocket, Int) {
                    let s = try NetnsSocket(ns: bed.ns("client"))
                    sockets.append(s)
                    let rc = s.connect(Self.vip, port)
                    guard rc == 0 else { throw TestFailure("connect to :\(port): \(SocketErrno(rc))") }
                    for i in 0..<20 {
                        guard case .success("m\(i)") = s.exchange("m\(i)") else { throw TestFailure("no echo on :\(port)") }
                    }
                    let local = s.localPort
                    guard let e = node.dp.connectionEntries().first(where: {
                        $0.direction == .original && $0.key.sourcePort == local && $0.key.destinationPort == port
                    }) else { throw TestFailure("no connection entry for :\(local)") }
                    return (s, Int(e.endpointIndex))
                }
                let (resetConn, resetEP) = try connectEcho(56003)
                let (keptConn, keptEP) = try connectEcho(56004)
                let forwarded = node.dp.stats().xdpForwarded
                try #require(forwarded >= 20, "the fast path carries the established packets: \(forwarded)")
                try await node.dp.setEndpointState(slot: 0, index: resetEP, up: false)
                try await node.dp.setEndpointState(slot: 1, index: keptEP, up: false)
                #expect(resetConn.exchange("after") == .failure(SocketErrno(ECONNRESET)))
                #expect(keptConn.exchange("after") == .success("after"))
                #expect(node.dp.serviceCounters(slot: 0).resetDown == 1)
                #expect(node.dp.stats().resetsSent == 1)
            } catch {
                await cleanup()
                throw error
            }
            await cleanup()
        }

        /// Real connections through a node: rr skips a down endpoint; the reset option resets an
        /// established connection (ECONNRESET) while another service's keeps working; with every
        /// endpoint down TCP is refused and UDP gets ECONNREFUSED at once.
        @Test func realClientsSeeResetsAndRefusals() async throws {
            let bed = try TestBed()
            defer { bed.down() }
            let node = try await AttachedDatapath(bed: bed)
            let ns = bed.ns("client")
            var sockets: [NetnsSocket] = []
            defer { sockets.forEach { $0.close() } }
            do {
                let web = [Endpoint(ip: IPv4Address(10, 0, 10, 21), port: 80), Endpoint(ip: IPv4Address(10, 0, 10, 22), port: 80)]
                let echo = web.map { Endpoint(ip: $0.ip, port: 9000) }
                try await node.dp.install(service(.roundRobin, port: 56002, endpoints: web), slot: 0, hashSeed: Self.seed)
                try await node.dp.install(service(.roundRobin, port: 56003, endpoints: echo, reset: true), slot: 1, hashSeed: Self.seed)
                try await node.dp.install(service(.roundRobin, port: 56004, endpoints: echo), slot: 2, hashSeed: Self.seed)
                try await node.dp.install(service(.roundRobin, port: 56005, proto: .udp, endpoints: echo), slot: 3, hashSeed: Self.seed)

                try await node.dp.setEndpointState(slot: 0, index: 0, up: false)
                let whileDown = try (0..<4).map { _ in try bed.whoami(from: "10.0.20.10") }
                #expect(whileDown == ["ep2", "ep2", "ep2", "ep2"])
                try await node.dp.setEndpointState(slot: 0, index: 0, up: true)
                #expect(Set(try (0..<4).map { _ in try bed.whoami(from: "10.0.20.10") }) == ["ep1", "ep2"])

                func connectEcho(_ port: UInt16) throws -> (NetnsSocket, Int) {
                    let s = try NetnsSocket(ns: ns)
                    sockets.append(s)
                    let rc = s.connect(Self.vip, port)
                    guard rc == 0 else { throw TestFailure("connect to :\(port): \(SocketErrno(rc))") }
                    guard case .success("hello") = s.exchange("hello") else { throw TestFailure("no echo on :\(port)") }
                    let local = s.localPort
                    guard let e = node.dp.connectionEntries().first(where: {
                        $0.direction == .original && $0.key.sourcePort == local && $0.key.destinationPort == port
                    }) else { throw TestFailure("no connection entry for :\(local)") }
                    return (s, Int(e.endpointIndex))
                }
                let (resetConn, resetEP) = try connectEcho(56003)
                let (keptConn, keptEP) = try connectEcho(56004)
                try await node.dp.setEndpointState(slot: 1, index: resetEP, up: false)
                try await node.dp.setEndpointState(slot: 2, index: keptEP, up: false)
                #expect(resetConn.exchange("again") == .failure(SocketErrno(ECONNRESET)))
                #expect(keptConn.exchange("again") == .success("again"), "without the option it keeps working")
                #expect(node.dp.serviceCounters(slot: 1).resetDown == 1)
                // New connections of the reset service go to the live endpoint.
                let (_, nextEP) = try connectEcho(56003)
                #expect(nextEP != resetEP)

                // Everything down: refused at once, not a timeout.
                try await node.dp.setDownEndpoints(slot: 2, [0, 1])
                try await node.dp.setDownEndpoints(slot: 3, [0, 1])
                let tcp = try NetnsSocket(ns: ns)
                sockets.append(tcp)
                let started = Date()
                let rc = tcp.connect(Self.vip, 56004)
                let took = Date().timeIntervalSince(started)
                #expect(rc == ECONNREFUSED, "connect: \(SocketErrno(rc))")
                #expect(took < 0.5, "refused in \(took) s")
                #expect(keptConn.exchange("still") == .success("still"), "established ones are kept")
                let udp = try NetnsSocket(ns: ns, udp: true)
                sockets.append(udp)
                #expect(udp.connect(Self.vip, 56005) == 0)
                let udpStarted = Date()
                #expect(udp.exchange("anyone?") == .failure(SocketErrno(ECONNREFUSED)))
                #expect(Date().timeIntervalSince(udpStarted) < 0.5)
                #expect(node.dp.serviceCounters(slot: 2).noEndpoint >= 1)
                #expect(node.dp.serviceCounters(slot: 3).noEndpoint >= 1)
            } catch {
                await node.detach()
                throw error
            }
            await node.detach()
        }
    }
}
