// tandem-echo serve: TCP and UDP echo on one port.

import ArgumentParser
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Echo server

/// Echoes every byte back. Stops reading while the peer does not take our writes, so a slow
/// reader cannot make the server buffer without bound. Honours half-close: once the peer has
/// shut its write side and everything has been echoed, the connection is closed.
final class TCPEchoHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        context.channel.setOption(ChannelOptions.autoRead, value: writable).whenFailure { _ in }
        if writable { context.read() }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            // Writes complete in order: once this empty write is done, all echoes are out.
            let done = context.eventLoop.makePromise(of: Void.self)
            context.writeAndFlush(wrapOutboundOut(ByteBuffer()), promise: done)
            let channel = context.channel
            done.futureResult.whenComplete { _ in channel.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A reset peer is routine under load; just drop the connection.
        context.close(promise: nil)
    }
}

/// Echoes every datagram back byte for byte, except datagrams starting with the flows magic
/// "TDMF" (see `FlowMessage`): those come back followed by a 1-byte length and the server's
/// name, so a `flows` client can tell when its flow moved to another endpoint.
final class UDPEchoHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    /// Length byte followed by the name, appended to "TDMF" datagrams.
    private let nameSuffix: [UInt8]

    init(name: String) {
        let bytes = Array(name.utf8.prefix(255))
        nameSuffix = [UInt8(bytes.count)] + bytes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        var payload = envelope.data
        if payload.getInteger(at: payload.readerIndex, as: UInt32.self) == FlowMessage.magic {
            payload.writeBytes(nameSuffix)
        }
        let reply = AddressedEnvelope(remoteAddress: envelope.remoteAddress, data: payload)
        context.write(wrapOutboundOut(reply), promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // ICMP errors (port unreachable for a vanished client) surface here: keep serving.
    }
}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "TCP and UDP echo server on one port (the default subcommand).")

    @Option(help: "Address to bind.")
    var address: String = "0.0.0.0"

    @Option(help: "Port for both TCP and UDP (0 picks a free port for each).")
    var port: Int = 9000

    @Option(help: "Event loop threads.")
    var threads: Int = 1

    // Network namespaces share the hostname: give each endpoint of a test bed its own --name.
    @Option(help: "Name (1...255 bytes) appended to UDP echoes of datagrams starting with \"TDMF\" (flows mode); default: the hostname.")
    var name: String?

    func validate() throws {
        if let name {
            guard (1...255).contains(name.utf8.count) else { throw ValidationError("name must be 1...255 bytes") }
        }
        guard (0...65535).contains(port) else { throw ValidationError("port out of range: \(port)") }
        guard (1...64).contains(threads) else { throw ValidationError("threads must be 1...64") }
    }

    func run() throws {
        // Block SIGTERM/SIGINT before any thread exists (threads inherit the mask), then take
        // them synchronously with sigwait on this thread once the server is up.
        signal(SIGPIPE, SIG_IGN)
        var stopSignals = sigset_t()
        sigemptyset(&stopSignals)
        sigaddset(&stopSignals, SIGTERM)
        sigaddset(&stopSignals, SIGINT)
        pthread_sigmask(SIG_BLOCK, &stopSignals, nil)

        let serverName = name ?? hostName()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)

        let tcp: Channel
        let udp: Channel
        do {
            tcp = try ServerBootstrap(group: group)
                .serverChannelOption(ChannelOptions.backlog, value: 4096)
                .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
                .childChannelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
                .childChannelOption(ChannelOptions.maxMessagesPerRead, value: 16)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(TCPEchoHandler())
                    }
                }
                .bind(host: address, port: port)
                .wait()
            udp = try DatagramBootstrap(group: group)
                .channelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
                .channelOption(ChannelOptions.socketOption(.so_rcvbuf), value: 4 << 20)
                .channelOption(ChannelOptions.socketOption(.so_sndbuf), value: 4 << 20)
                // Whole datagrams up to 64 KiB. (No vector reads: NIO splits the buffer between
                // the messages of a vector read, which would truncate large datagrams.)
                .channelOption(ChannelOptions.recvAllocator,
                               value: FixedSizeRecvByteBufferAllocator(capacity: 65_536))
                .channelOption(ChannelOptions.maxMessagesPerRead, value: 16)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(UDPEchoHandler(name: serverName))
                    }
                }
                .bind(host: address, port: port)
                .wait()
        } catch {
            warn("tandem-echo: cannot bind \(address):\(port): \(error)")
            try? group.syncShutdownGracefully()
            throw ExitCode(2)
        }

        let tcpPort = tcp.localAddress?.port ?? port
        let udpPort = udp.localAddress?.port ?? port
        emit("ready tcp=\(address):\(tcpPort) udp=\(address):\(udpPort) name=\(serverName)")

        var signo: Int32 = 0
        while sigwait(&stopSignals, &signo) != 0 {}
        tcp.close(promise: nil)
        udp.close(promise: nil)
        try? tcp.closeFuture.wait()
        try? udp.closeFuture.wait()
        try? group.syncShutdownGracefully()
    }
}

/// The hostname, or "unknown".
func hostName() -> String {
    var buf = [CChar](repeating: 0, count: 256)
    guard gethostname(&buf, buf.count - 1) == 0 else { return "unknown" }
    let bytes = buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    let name = String(decoding: bytes, as: UTF8.self)
    return name.isEmpty ? "unknown" : name
}
