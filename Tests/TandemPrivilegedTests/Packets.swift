import TandemCore

/// Builds and parses Ethernet/IPv4/TCP|UDP|ICMP frames with correct checksums, for driving the
/// datapath through BPF_PROG_TEST_RUN.
enum Packets {
    static func checksum(_ bytes: ArraySlice<UInt8>, initial: UInt32 = 0) -> UInt16 {
        var sum = initial
        var i = bytes.startIndex
        while i + 1 < bytes.endIndex {
            sum += UInt32(bytes[i]) << 8 | UInt32(bytes[i + 1])
            i += 2
        }
        if i < bytes.endIndex { sum += UInt32(bytes[i]) << 8 }
        while sum >> 16 != 0 { sum = (sum & 0xffff) + (sum >> 16) }
        return ~UInt16(sum)
    }

    static func pseudoSum(src: IPv4Address, dst: IPv4Address, proto: UInt8, length: Int) -> UInt32 {
        (src.value >> 16) + (src.value & 0xffff) + (dst.value >> 16) + (dst.value & 0xffff) + UInt32(proto) + UInt32(length)
    }

    static func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xff)] }
    static func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 0xff), UInt8(v >> 8 & 0xff), UInt8(v & 0xff)] }

    static func frame(_ t: FlowTuple, tcpFlags: TCPFlags = .ack, payload: [UInt8] = Array("hello".utf8),
                      icmpType: UInt8 = 8, seq: UInt32 = 1000, ack: UInt32 = 0) -> [UInt8] {
        var l4: [UInt8]
        switch t.proto {
        case 6:
            l4 = be16(t.sourcePort) + be16(t.destinationPort) + be32(seq) + be32(ack) + [0x50, tcpFlags.rawValue] + be16(65535)
                + [0, 0] + [0, 0] + payload
        case 17:
            l4 = be16(t.sourcePort) + be16(t.destinationPort) + be16(UInt16(8 + payload.count)) + [0, 0] + payload
        default:
            l4 = [icmpType, 0, 0, 0] + be16(t.sourcePort) + be16(1) + payload
        }
        let csumOffset = t.proto == 6 ? 16 : t.proto == 17 ? 6 : 2
        let initial = t.proto == 1 ? 0 : pseudoSum(src: t.source, dst: t.destination, proto: t.proto, length: l4.count)
        var c = checksum(l4[...], initial: initial)
        if t.proto == 17 && c == 0 { c = 0xffff }
        l4[csumOffset] = UInt8(c >> 8)
        l4[csumOffset + 1] = UInt8(c & 0xff)
        var ip: [UInt8] = [0x45, 0] + be16(UInt16(20 + l4.count)) + [0, 1, 0x40, 0, 64, t.proto, 0, 0]
            + be32(t.source.value) + be32(t.destination.value)
        let ic = checksum(ip[...])
        ip[10] = UInt8(ic >> 8)
        ip[11] = UInt8(ic & 0xff)
        let eth: [UInt8] = [0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00]
        return eth + ip + l4
    }

    struct Parsed {
        var tuple: FlowTuple
        var ipChecksumOK: Bool
        var l4ChecksumOK: Bool
        var icmpType: UInt8?
    }

    static func parse(_ f: [UInt8]) -> Parsed? {
        guard f.count >= 34, f[12] == 0x08, f[13] == 0 else { return nil }
        let ip = Array(f[14..<34])
        let total = Int(ip[2]) << 8 | Int(ip[3])
        guard f.count >= 14 + total else { return nil }
        let proto = ip[9]
        let src = IPv4Address(UInt32(ip[12]) << 24 | UInt32(ip[13]) << 16 | UInt32(ip[14]) << 8 | UInt32(ip[15]))
        let dst = IPv4Address(UInt32(ip[16]) << 24 | UInt32(ip[17]) << 16 | UInt32(ip[18]) << 8 | UInt32(ip[19]))
        let l4 = f[34..<(14 + total)]
        let b = l4.startIndex
        let sport = proto == 1 ? UInt16(l4[b + 4]) << 8 | UInt16(l4[b + 5]) : UInt16(l4[b]) << 8 | UInt16(l4[b + 1])
        let dport = proto == 1 ? sport : UInt16(l4[b + 2]) << 8 | UInt16(l4[b + 3])
        let initial = proto == 1 ? 0 : pseudoSum(src: src, dst: dst, proto: proto, length: l4.count)
        return Parsed(tuple: FlowTuple(source: src, destination: dst, sourcePort: sport, destinationPort: dport, proto: proto),
                      ipChecksumOK: checksum(ip[...]) == 0, l4ChecksumOK: checksum(l4, initial: initial) == 0,
                      icmpType: proto == 1 ? l4[b] : nil)
    }
}
