import NIOCore
import TandemSyncWire

/// Splits the TCP (bulk) channel into sealed frames: a 28-byte header whose length field says how
/// many bytes follow. A frame longer than the protocol allows closes the connection.
public struct SyncFrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = [UInt8]
    public init() {}

    public func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard buffer.readableBytes >= SyncWire.headerSize,
              let length = buffer.getInteger(at: buffer.readerIndex + 6, endianness: .big, as: UInt16.self) else {
            return .needMoreData
        }
        let total = SyncWire.headerSize + Int(length)
        guard total <= SyncWire.maxStreamFrame else { throw SyncFrameError.oversized(total) }
        guard buffer.readableBytes >= total, let bytes = buffer.readBytes(length: total) else { return .needMoreData }
        context.fireChannelRead(Self.wrapInboundOut(bytes))
        return .continue
    }

    public func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }
}

enum SyncFrameError: Error, CustomStringConvertible {
    case oversized(Int)
    var description: String {
        switch self {
        case .oversized(let n): "stream frame of \(n) bytes exceeds \(SyncWire.maxStreamFrame)"
        }
    }
}
