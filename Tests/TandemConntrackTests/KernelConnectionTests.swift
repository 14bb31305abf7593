import CNetfilterConntrack
import TandemCore
import Testing
@testable import TandemConntrack

func ip(_ s: String) -> IPv4Address { IPv4Address(s)! }

/// Client 10.0.20.5:40000 to VIP 10.0.10.143:80, DNAT to 10.0.10.21:8080, SNAT to 10.0.10.141:61000.
func natTCP(state: TCPConntrackState = .established) -> KernelConnection {
    KernelConnection(original: .ports(6, ip("10.0.20.5"), 40000, ip("10.0.10.143"), 80),
                     reply: .ports(6, ip("10.0.10.21"), 8080, ip("10.0.10.141"), 61000),
                     tcp: TCPInfo(state: state, flagsOriginal: 0x23, flagsReply: 0x03,
                                  windowScaleOriginal: 7, windowScaleReply: 9),
                     status: [.seenReply, .assured, .confirmed, .srcNAT, .dstNAT, .srcNATDone, .dstNATDone],
                     mark: 0x42, zone: 3, timeout: 431_999, id: 0xdead_beef)
}

func plainUDP(_ n: UInt16 = 1) -> KernelConnection {
    KernelConnection(original: .ports(17, ip("10.0.20.9"), 5000 + n, ip("10.0.30.1"), 53),
                     reply: .ports(17, ip("10.0.30.1"), 53, ip("10.0.20.9"), 5000 + n),
                     status: [.confirmed], timeout: 30)
}

@Suite struct KernelConnectionMappingTests {
    /// Sets the attributes with nfct_set_attr_* and reads them back with nfct_get_attr_*.
    func roundTrip(_ c: KernelConnection) throws -> KernelConnection? {
        let ct = try #require(nfct_new())
        defer { nfct_destroy(ct) }
        c.write(to: ct)
        return KernelConnection(nfct: ct)
    }

    @Test func tcpWithNATRoundTrips() throws {
        let c = natTCP()
        let back = try roundTrip(c)
        #expect(back == c)
    }

    @Test func attributesAreInNetworkOrder() throws {
        let ct = try #require(nfct_new())
        defer { nfct_destroy(ct) }
        natTCP().write(to: ct)
        #expect(nfct_get_attr_u32(ct, ATTR_ORIG_IPV4_SRC) == ip("10.0.20.5").networkOrder)
        #expect(nfct_get_attr_u16(ct, ATTR_ORIG_PORT_DST) == UInt16(80).bigEndian)
        #expect(nfct_get_attr_u16(ct, ATTR_REPL_PORT_DST) == UInt16(61000).bigEndian)
        #expect(nfct_get_attr_u8(ct, ATTR_TCP_STATE) == 3)
        #expect(nfct_get_attr_u8(ct, ATTR_TCP_WSCALE_REPL) == 9)
        #expect(nfct_get_attr_u16(ct, ATTR_ZONE) == 3)
        #expect(nfct_get_attr_u32(ct, ATTR_MARK) == 0x42)
    }

    /// Built from attributes by libnetfilter_conntrack into a ctnetlink message (what the kernel
    /// sends), then parsed back the way the source parses events.
    @Test func throughACtnetlinkMessage() throws {
        var c = natTCP()
        c.id = 0   // CTA_ID is not built into requests
        let ct = try #require(nfct_new())
        defer { nfct_destroy(ct) }
        c.write(to: ct)
        var buf = [UInt8](repeating: 0, count: 8192)
        let len = buf.withUnsafeMutableBytes { tct_build($0.baseAddress, $0.count, ct, 0) }
        #expect(len > 0)
        let parsed = try #require(nfct_new())
        defer { nfct_destroy(parsed) }
        let rc = buf.withUnsafeBytes { tct_parse($0.baseAddress, parsed) }
        #expect(rc >= 0)
        var back = try #require(KernelConnection(nfct: parsed))
        // Requests carry TCP flags as flags+mask pairs; the rest must survive unchanged.
        back.tcp?.maskOriginal = c.tcp?.maskOriginal
        back.tcp?.maskReply = c.tcp?.maskReply
        #expect(back.original == c.original)
        #expect(back.reply == c.reply)
        #expect(back.tcp?.state == .established)
        #expect(back.mark == 0x42)
        #expect(back.zone == 3)
        #expect(back.status == c.status)
        #expect(back.timeout == 431_999)
        let kind = buf.withUnsafeBytes { raw -> NetlinkWalk.Kind? in
            let (msgs, bad) = NetlinkWalk.split(UnsafeRawBufferPointer(rebasing: raw[0..<Int(len)]))
            guard !bad, let m = msgs.first else { return nil }
            return NetlinkWalk.classify(m, in: raw)
        }
        #expect(kind == .event(.new))
    }

    @Test func udpAndICMPRoundTrip() throws {
        #expect(try roundTrip(plainUDP()) == plainUDP())
        let icmp = KernelConnection(original: KernelTuple(source: ip("10.0.20.5"), destination: ip("10.0.30.1"), proto: 1,
                                                          l4: .icmp(id: 777, type: 8, code: 0)),
                                    reply: KernelTuple(source: ip("10.0.30.1"), destination: ip("10.0.20.5"), proto: 1,
                                                       l4: .icmp(id: 777, type: 0, code: 0)),
                                    status: [.confirmed, .seenReply], timeout: 29)
        let back = try roundTrip(icmp)
        #expect(back == icmp)
        #expect(back?.nat.isNATed == false)
    }

    @Test func absentAttributesStayAbsent() throws {
        let ct = try #require(nfct_new())
        defer { nfct_destroy(ct) }
        var c = plainUDP()
        c.timeout = nil
        c.write(to: ct)
        nfct_attr_unset(ct, ATTR_TIMEOUT)
        let back = try #require(KernelConnection(nfct: ct))
        #expect(back.timeout == nil)
        #expect(back.tcp == nil)
        #expect(back.id == 0)
    }

    @Test func notIPv4OrIncompleteIsRejected() throws {
        let ct = try #require(nfct_new())
        defer { nfct_destroy(ct) }
        #expect(KernelConnection(nfct: ct) == nil)   // nothing set
        nfct_set_attr_u8(ct, ATTR_ORIG_L3PROTO, UInt8(AF_INET6))
        #expect(KernelConnection(nfct: ct) == nil)
        nfct_set_attr_u8(ct, ATTR_ORIG_L3PROTO, UInt8(AF_INET))
        nfct_set_attr_u32(ct, ATTR_ORIG_IPV4_SRC, 1)
        nfct_set_attr_u32(ct, ATTR_ORIG_IPV4_DST, 2)
        #expect(KernelConnection(nfct: ct) == nil)   // no reply tuple
    }
}

@Suite struct NATViewTests {
    @Test func fullNAT() {
        let n = natTCP().nat
        #expect(n.dnat == NATView.Target(address: ip("10.0.10.21"), port: 8080))
        #expect(n.snat == NATView.Target(address: ip("10.0.10.141"), port: 61000))
    }

    @Test func noNAT() {
        #expect(plainUDP().nat == NATView())
        #expect(!plainUDP().nat.isNATed)
    }

    @Test func masqueradeOnly() {
        let c = KernelConnection(original: .ports(6, ip("10.1.0.2"), 33000, ip("10.2.0.2"), 80),
                                 reply: .ports(6, ip("10.2.0.2"), 80, ip("10.2.0.1"), 33000))
        #expect(c.nat.snat == NATView.Target(address: ip("10.2.0.1"), port: 33000))
        #expect(c.nat.dnat == nil)
    }

    @Test func portOnlyDNAT() {
        let c = KernelConnection(original: .ports(6, ip("10.1.0.2"), 33000, ip("10.2.0.2"), 80),
                                 reply: .ports(6, ip("10.2.0.2"), 8080, ip("10.1.0.2"), 33000))
        #expect(c.nat.dnat == NATView.Target(address: ip("10.2.0.2"), port: 8080))
        #expect(c.nat.snat == nil)
    }

    @Test func sameStateIgnoresTimeoutAndID() {
        var a = natTCP(), b = natTCP()
        b.timeout = 5
        b.id = 1
        #expect(a.sameState(as: b))
        a.tcp?.state = .finWait
        #expect(!a.sameState(as: b))
    }
}

@Suite struct NetlinkWalkTests {
    func header(len: UInt32, type: UInt16, flags: UInt16) -> [UInt8] {
        var b: [UInt8] = []
        withUnsafeBytes(of: len) { b += $0 }
        withUnsafeBytes(of: type) { b += $0 }
        withUnsafeBytes(of: flags) { b += $0 }
        b += [UInt8](repeating: 0, count: 8)
        return b
    }

    @Test func splitsAndClassifies() {
        var d = header(len: 20, type: 0x100, flags: 0x600) + [2, 0, 0, 0]       // NEW, AF_INET
        d += header(len: 20, type: 0x100, flags: 0) + [2, 0, 0, 0]              // UPDATE
        d += header(len: 20, type: 0x102, flags: 0) + [2, 0, 0, 0]              // DESTROY
        d += header(len: 20, type: 0x100, flags: 0x600) + [10, 0, 0, 0]         // IPv6: other
        d += header(len: 16, type: 3, flags: 0)                                  // DONE
        d.withUnsafeBytes { raw in
            let (msgs, bad) = NetlinkWalk.split(raw)
            #expect(!bad)
            #expect(msgs.map { NetlinkWalk.classify($0, in: raw) } ==
                    [.event(.new), .event(.update), .event(.destroy), .other, .done])
        }
    }

    @Test func thePortIDTellsWhoCausedAChange() {
        var d = header(len: 20, type: 0x100, flags: 0x600) + [2, 0, 0, 0]       // the kernel's own: port 0
        var sink = header(len: 20, type: 0x100, flags: 0x600) + [2, 0, 0, 0]
        withUnsafeBytes(of: UInt32(0x1234_5678)) { p in for i in 0..<4 { sink[12 + i] = p[i] } }
        d += sink
        d.withUnsafeBytes { raw in
            #expect(NetlinkWalk.split(raw).messages.map(\.portID) == [0, 0x1234_5678])
        }
    }

    @Test func malformedLengthsStop() {
        let cases: [[UInt8]] = [
            header(len: 8, type: 0x100, flags: 0),                               // shorter than a header
            header(len: 400, type: 0x100, flags: 0) + [2, 0, 0, 0],             // longer than the datagram
            header(len: 16, type: 0x100, flags: 0) + [1, 2, 3],                 // stray trailing bytes
        ]
        for d in cases {
            d.withUnsafeBytes { raw in #expect(NetlinkWalk.split(raw).malformed) }
        }
        // A ctnetlink message too short for its nfgenmsg.
        header(len: 16, type: 0x100, flags: 0).withUnsafeBytes { raw in
            let (msgs, _) = NetlinkWalk.split(raw)
            #expect(msgs.count == 1)
            #expect(NetlinkWalk.classify(msgs[0], in: raw) == .malformed)
        }
    }

    @Test func errorMessageCarriesErrno() {
        var d = header(len: 20, type: 2, flags: 0)
        withUnsafeBytes(of: Int32(-105)) { d += $0 }   // -ENOBUFS
        d.withUnsafeBytes { raw in
            let (msgs, _) = NetlinkWalk.split(raw)
            #expect(NetlinkWalk.classify(msgs[0], in: raw) == .error(105))
        }
    }

    /// Garbage after a valid header: the library must refuse, not crash.
    @Test func parserRejectsGarbageAttributes() throws {
        var d = header(len: 32, type: 0x100, flags: 0x600) + [2, 0, 0, 0]
        d += [0xff, 0xff, 0x01, 0x00, 9, 9, 9, 9, 9, 9, 9, 9]   // attribute claiming 65535 bytes
        let ct = try #require(nfct_new())
        defer { nfct_destroy(ct) }
        let rc = d.withUnsafeBytes { tct_parse($0.baseAddress, ct) }
        #expect(rc < 0 || KernelConnection(nfct: ct) == nil)
    }
}
