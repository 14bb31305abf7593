import Testing
@testable import TandemHealth

/// The shell's byte-level helpers: HTTP response parsing and ICMP echo packets.
@Suite struct WireHelpers {
    @Test func httpStatusAndBody() {
        let r = Array("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy".utf8)
        #expect(HTTPProbeHandler.status(r) == 503)
        #expect(HTTPProbeHandler.body(r) == Array("busy".utf8))
        #expect(HTTPProbeHandler.status(Array("HTTP/1.1 20".utf8)) == nil)
        #expect(HTTPProbeHandler.status(Array("SSH-2.0-OpenSSH\r\n".utf8)) == -1)
        #expect(HTTPProbeHandler.contains(Array("hello world".utf8), Array("o w".utf8)))
        #expect(!HTTPProbeHandler.contains(Array("hello".utf8), Array("help".utf8)))
    }

    @Test func pingPacket() {
        let req = PingHandler.echoRequest(id: 0x1234, sequence: 7)
        #expect(req[0] == 8 && req[4] == 0x12 && req[5] == 0x34 && req[7] == 7)
        // A correct checksum sums to zero.
        #expect(PingHandler.checksum(req) == 0)
        // The reply as a raw socket sees it: a 20-byte IP header, then type 0 with our id/seq.
        var reply = [UInt8](repeating: 0, count: 20) + req
        reply[0] = 0x45
        reply[20] = 0
        #expect(PingHandler.parseReply(reply, id: 0x1234, sequence: 7) == .reply)
        #expect(PingHandler.parseReply(reply, id: 0x1235, sequence: 7) == .other)
        #expect(PingHandler.parseReply(reply, id: 0x1234, sequence: 8) == .other)
        #expect(PingHandler.parseReply(Array(reply.prefix(10)), id: 0x1234, sequence: 7) == .other)
    }
}
