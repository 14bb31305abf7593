// The message a `flows` flow sends every interval, TCP and UDP alike:
//
//   offset 0   4 bytes  magic "TDMF"
//   offset 4   4 bytes  flow id, big endian (TCP flows 0..., UDP flows 0x8000_0000 + index)
//   offset 8   4 bytes  sequence number, big endian, from 1
//   offset 12  size-12  filler: splitmix64 stream seeded by (flow id, sequence number)
//
// So every message is distinct and can be regenerated from its header. Over UDP, `serve` answers
// a datagram that starts with the magic with the datagram followed by a 1-byte length and the
// server's name; TCP is echoed byte for byte.

import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

enum FlowMessage {
    /// "TDMF" read as a big-endian UInt32.
    static let magic: UInt32 = 0x5444_4D46
    static let headerSize = 12
    static let udpFlowBit: UInt32 = 0x8000_0000

    static func make(flowID: UInt32, seq: UInt32, size: Int, allocator: ByteBufferAllocator) -> ByteBuffer {
        // One raw fill instead of a ByteBuffer call per integer: much cheaper in debug builds.
        var buffer = allocator.buffer(capacity: size)
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: size) { raw in
            fill(raw, flowID: flowID, seq: seq, size: size)
            return size
        }
        return buffer
    }

    private static func fill(_ raw: UnsafeMutableRawBufferPointer, flowID: UInt32, seq: UInt32, size: Int) {
        precondition(raw.count >= size && size >= headerSize)
        raw.storeBytes(of: magic.bigEndian, toByteOffset: 0, as: UInt32.self)
        raw.storeBytes(of: flowID.bigEndian, toByteOffset: 4, as: UInt32.self)
        raw.storeBytes(of: seq.bigEndian, toByteOffset: 8, as: UInt32.self)
        var state = (UInt64(flowID) << 32 | UInt64(seq)) ^ 0x6A09_E667_F3BC_C908
        var offset = headerSize
        while offset + 8 <= size {
            raw.storeBytes(of: splitmix(&state), toByteOffset: offset, as: UInt64.self)
            offset += 8
        }
        if offset < size {
            var x = splitmix(&state)
            while offset < size {
                raw[offset] = UInt8(truncatingIfNeeded: x)
                x >>= 8
                offset += 1
            }
        }
    }

    private static func splitmix(_ state: inout UInt64) -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Whether `count` readable bytes of `a` from `aOffset` equal those of `b` from `bOffset`
/// (offsets relative to the reader indices). False if either range is out of bounds.
func sameBytes(_ a: ByteBuffer, _ aOffset: Int, _ b: ByteBuffer, _ bOffset: Int, count: Int) -> Bool {
    guard count > 0 else { return true }
    return a.withUnsafeReadableBytes { ap in
        b.withUnsafeReadableBytes { bp in
            guard aOffset >= 0, bOffset >= 0, aOffset + count <= ap.count, bOffset + count <= bp.count,
                  let ab = ap.baseAddress, let bb = bp.baseAddress
            else { return false }
            return memcmp(ab + aOffset, bb + bOffset, count) == 0
        }
    }
}

/// Offset of the first differing byte in the compared ranges (for error messages).
func firstDifference(_ a: ByteBuffer, _ aOffset: Int, _ b: ByteBuffer, _ bOffset: Int, count: Int) -> Int {
    for i in 0..<count {
        let x = a.getInteger(at: a.readerIndex + aOffset + i, as: UInt8.self)
        let y = b.getInteger(at: b.readerIndex + bOffset + i, as: UInt8.self)
        if x != y { return i }
    }
    return count
}
