// tandem-echo: the test bed's endpoint server and UDP load generator.
//
//   tandem-echo [serve] --address 0.0.0.0 --port 9000
//       TCP and UDP echo on the same port. Prints one line starting with "ready" once both are
//       bound ("ready tcp=ADDR:PORT udp=ADDR:PORT"), exits 0 on SIGTERM/SIGINT.
//       Open connections are dropped at exit; accepted sockets are not drained.
//   tandem-echo flood --target IP:PORT --size 64 --duration 10 --rate 0 [--flows 8] [--window 0]
//       UDP load generator: sends datagrams, counts the echoed ones, prints one JSON object.
//   tandem-echo probe --target IP:PORT [--udp] [--timeout 2]
//       Sends one message, expects it back byte for byte; exit 0 on success, 1 otherwise.

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

// MARK: - Shared helpers

/// Writes a line to stdout and flushes, so a parent reading a pipe sees it at once.
func emit(_ line: String) {
    print(line)
    fflush(nil)
}

func warn(_ line: String) {
    let bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}

/// "IP:PORT" (IPv4 only, the test bed is IPv4) parsed without touching DNS.
struct Endpoint: ExpressibleByArgument, CustomStringConvertible, Sendable {
    var host: String
    var port: Int

    init?(argument: String) {
        guard let colon = argument.lastIndex(of: ":") else { return nil }
        let host = String(argument[..<colon])
        guard let port = Int(argument[argument.index(after: colon)...]), (1...65535).contains(port),
              !host.isEmpty, IPv4.parse(host) != nil
        else { return nil }
        self.host = host
        self.port = port
    }

    var description: String { "\(host):\(port)" }
}

enum IPv4 {
    /// Network-order s_addr for a dotted quad, or nil.
    static func parse(_ s: String) -> in_addr_t? {
        var addr = in_addr()
        guard inet_pton(AF_INET, s, &addr) == 1 else { return nil }
        return addr.s_addr
    }
}

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

final class UDPEchoHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        let reply = AddressedEnvelope(remoteAddress: envelope.remoteAddress, data: envelope.data)
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

    func validate() throws {
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
                        try channel.pipeline.syncOperations.addHandler(UDPEchoHandler())
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
        emit("ready tcp=\(address):\(tcpPort) udp=\(address):\(udpPort)")

        var signo: Int32 = 0
        while sigwait(&stopSignals, &signo) != 0 {}
        tcp.close(promise: nil)
        udp.close(promise: nil)
        try? tcp.closeFuture.wait()
        try? udp.closeFuture.wait()
        try? group.syncShutdownGracefully()
    }
}

// MARK: - Raw UDP sockets for the load generator and probe

/// A connected, non-blocking IPv4 socket (UDP or TCP), closed on deinit.
final class RawSocket {
    let fd: Int32

    init(target: Endpoint, udp: Bool, nonBlocking: Bool) throws {
        #if canImport(Glibc)
        let type = Int32(udp ? SOCK_DGRAM.rawValue : SOCK_STREAM.rawValue)
        #else
        let type = udp ? SOCK_DGRAM : SOCK_STREAM
        #endif
        let fd = socket(AF_INET, type, 0)
        guard fd >= 0 else { throw RawSocket.error("socket") }
        self.fd = fd
        var size: Int32 = 4 << 20
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        guard let s = IPv4.parse(target.host) else { throw ValidationError("bad address \(target.host)") }
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = in_port_t(UInt16(target.port).bigEndian)
        sin.sin_addr = in_addr(s_addr: s)
        let rc = withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard rc == 0 else { throw RawSocket.error("connect \(target)") }
        if nonBlocking {
            let flags = fcntl(fd, F_GETFL)
            _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        }
    }

    deinit { close(fd) }

    static func error(_ what: String) -> Error {
        ValidationError("\(what): \(String(cString: strerror(errno)))")
    }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

// MARK: - Flood

struct Flood: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "UDP load generator: send datagrams to an echo service and count the replies.",
        discussion: """
            Prints one JSON object: sent, received, bad (replies of the wrong size), and sent_pps /
            recv_pps over the sending time. Always stops after --duration plus a short drain.
            """)

    @Option(help: "Echo service to hit, IPv4:PORT.")
    var target: Endpoint

    @Option(help: "Payload bytes per datagram.")
    var size: Int = 64

    @Option(help: "Seconds of sending (bounded to 1 hour).")
    var duration: Double = 10

    @Option(help: "Datagrams per second in total; 0 sends as fast as possible.")
    var rate: Int = 0

    @Option(help: "Source sockets (flows), each with its own source port.")
    var flows: Int = 8

    @Option(help: "Max datagrams in flight in total (closed loop); 0 for no limit.")
    var window: Int = 0

    @Option(help: "Seconds to wait for late replies after sending stops.")
    var drain: Double = 0.3

    func validate() throws {
        guard (1...65_507).contains(size) else { throw ValidationError("size must be 1...65507") }
        guard duration > 0, duration <= 3600 else { throw ValidationError("duration must be in (0, 3600]") }
        guard rate >= 0 else { throw ValidationError("rate must be >= 0") }
        guard (1...1024).contains(flows) else { throw ValidationError("flows must be 1...1024") }
        guard window >= 0 else { throw ValidationError("window must be >= 0") }
        guard drain >= 0, drain <= 10 else { throw ValidationError("drain must be in [0, 10]") }
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        let sockets = try (0..<flows).map { _ in try RawSocket(target: target, udp: true, nonBlocking: true) }
        var payload = [UInt8](repeating: 0x5a, count: size)
        var recvBuf = [UInt8](repeating: 0, count: 65_536)
        var pfds = sockets.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }

        var sent = 0, received = 0, bad = 0, sendErrors = 0
        var lostCredit = 0        // in-flight datagrams written off as lost (closed loop only)
        var lastProgress = 0.0
        let batch = 32
        let start = monotonicSeconds()
        let end = start + duration
        var now = start
        lastProgress = now
        var next = 0

        func drainReceives() {
            for s in sockets {
                while true {
                    let n = recvBuf.withUnsafeMutableBytes { recv(s.fd, $0.baseAddress, $0.count, 0) }
                    if n < 0 { break }  // EAGAIN, or an ICMP error reported on the socket
                    if n == size { received += 1 } else { bad += 1 }
                }
            }
        }

        while now < end {
            var allowed = batch
            if rate > 0 {
                let due = Int(Double(rate) * (now - start)) - sent
                allowed = min(allowed, max(0, due))
            }
            if window > 0 {
                let inFlight = sent - received - bad - lostCredit
                if inFlight >= window, now - lastProgress > 0.05 {
                    lostCredit += inFlight   // replies that never came: stop waiting for them
                    lastProgress = now
                }
                allowed = min(allowed, max(0, window - (sent - received - bad - lostCredit)))
            }
            if allowed > 0 {
                let s = sockets[next]
                next = (next + 1) % sockets.count
                for i in 0..<allowed {
                    // Sequence number in the first bytes, so the payload is not constant.
                    if size >= 4 {
                        let seq = UInt32(truncatingIfNeeded: sent + i)
                        payload[0] = UInt8(truncatingIfNeeded: seq >> 24)
                        payload[1] = UInt8(truncatingIfNeeded: seq >> 16)
                        payload[2] = UInt8(truncatingIfNeeded: seq >> 8)
                        payload[3] = UInt8(truncatingIfNeeded: seq)
                    }
                    let n = payload.withUnsafeBytes { send(s.fd, $0.baseAddress, $0.count, 0) }
                    if n == size { sent += 1 } else { sendErrors += 1; break }
                }
            }
            let before = received + bad
            drainReceives()
            if received + bad > before { lastProgress = now }
            if allowed == 0 {
                // Nothing may be sent now: wait for replies (or the rate) briefly.
                _ = poll(&pfds, nfds_t(pfds.count), 1)
            }
            now = monotonicSeconds()
        }
        let sendEnd = now
        let drainEnd = sendEnd + drain
        while now < drainEnd, received + bad < sent {
            _ = poll(&pfds, nfds_t(pfds.count), 10)
            drainReceives()
            now = monotonicSeconds()
        }
        let elapsed = max(sendEnd - start, 1e-9)
        let sentPps = Double(sent) / elapsed
        let recvPps = Double(received) / elapsed
        let loss = sent > 0 ? Double(sent - received) / Double(sent) : 0
        emit("""
            {"target":"\(target)","size":\(size),"flows":\(flows),"rate":\(rate),"window":\(window),\
            "duration":\(fmt(elapsed)),"sent":\(sent),"received":\(received),"bad":\(bad),\
            "send_errors":\(sendErrors),"sent_pps":\(fmt(sentPps)),"recv_pps":\(fmt(recvPps)),\
            "loss":\(fmt(loss))}
            """)
    }

    private func fmt(_ x: Double) -> String {
        String(Double(Int((x * 1000).rounded())) / 1000)
    }
}

// MARK: - Probe

struct Probe: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send one message to an echo service and check it comes back unchanged.")

    @Option(help: "Echo service, IPv4:PORT.")
    var target: Endpoint

    @Flag(help: "Use UDP instead of TCP.")
    var udp = false

    @Option(help: "Seconds to wait for the reply.")
    var timeout: Double = 2

    @Option(help: "Message to send.")
    var message: String = "tandem-probe"

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        let deadline = monotonicSeconds() + timeout
        let sock: RawSocket
        do {
            sock = try RawSocket(target: target, udp: udp, nonBlocking: false)
        } catch {
            warn("probe \(target): \(error)")
            throw ExitCode(1)
        }
        let bytes = Array(message.utf8)
        let n = bytes.withUnsafeBytes { send(sock.fd, $0.baseAddress, $0.count, 0) }
        guard n == bytes.count else {
            warn("probe \(target): send failed")
            throw ExitCode(1)
        }
        var got: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65_536)
        var pfd = pollfd(fd: sock.fd, events: Int16(POLLIN), revents: 0)
        while got.count < bytes.count {
            let left = deadline - monotonicSeconds()
            guard left > 0, poll(&pfd, 1, Int32(left * 1000) + 1) > 0 else {
                warn("probe \(target): timeout")
                throw ExitCode(1)
            }
            let r = buf.withUnsafeMutableBytes { recv(sock.fd, $0.baseAddress, $0.count, 0) }
            guard r > 0 else {
                warn("probe \(target): \(r == 0 ? "connection closed" : String(cString: strerror(errno)))")
                throw ExitCode(1)
            }
            got.append(contentsOf: buf[0..<r])
        }
        guard got == bytes else {
            warn("probe \(target): reply differs")
            throw ExitCode(1)
        }
        emit("ok \(udp ? "udp" : "tcp") \(target)")
    }
}

// MARK: - Entry point

struct TandemEcho: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tandem-echo",
        abstract: "Echo endpoint and UDP load generator for the Tandem test bed.",
        subcommands: [Serve.self, Flood.self, Probe.self],
        defaultSubcommand: Serve.self)
}

TandemEcho.main()
