// The I/O side of one probe attempt, per kind, on a SwiftNIO event loop. Every socket is made on
// the loop's own thread, so a caller that moved its loop threads into a network namespace gets
// probes from that namespace.

import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Runs probe attempts. One per monitor; holds the TLS contexts (expensive to build).
final class Prober: Sendable {
    private let verifyingTLS: NIOSSLContext?
    private let insecureTLS: NIOSSLContext?
    private let tlsError: String?
    /// ICMP echo identifiers: a random base per monitor plus a counter, so two monitors (or a
    /// ping(8) next door) are unlikely to share one.
    private let icmpIDs: NIOLockedValueBox<UInt16>

    /// Longest response an HTTP probe reads; the expected text must be within it.
    static let maxHTTPResponse = 64 * 1024

    init(icmpIDBase: UInt16) {
        var verify = TLSConfiguration.makeClientConfiguration()
        // Endpoints are addressed by IP: the chain is verified, the name cannot be.
        verify.certificateVerification = .noHostnameVerification
        var insecure = TLSConfiguration.makeClientConfiguration()
        insecure.certificateVerification = .none
        var contexts: (NIOSSLContext, NIOSSLContext)?
        var failure: String?
        do {
            contexts = (try NIOSSLContext(configuration: verify), try NIOSSLContext(configuration: insecure))
        } catch {
            failure = "tls setup failed: \(error)"
        }
        tlsError = failure
        verifyingTLS = contexts?.0
        insecureTLS = contexts?.1
        icmpIDs = NIOLockedValueBox(icmpIDBase)
    }

    /// One probe: `attempts` attempts at once; succeeds with the first success, fails when all
    /// have failed (reporting the first failure's reason).
    func probe(_ spec: ProbeSpec, address: SocketAddress, on loop: EventLoop) -> EventLoopFuture<ProbeResult> {
        let promise = loop.makePromise(of: ProbeResult.self)
        let start = ContinuousClock.now
        loop.execute {
            // udp without an expected reply: loss only turns into silence, which is success, so
            // extra attempts add nothing but spend the endpoint's ICMP rate-limit tokens.
            let silentUDP = spec.kind == .udp && spec.expectedBody == nil
            let n = silentUDP ? 1 : max(1, spec.timing.attempts)
            // udp without an expected reply: one unreachable settles it (loss cannot fake one).
            let race = AttemptRace(count: n, failureDecides: silentUDP)
            for _ in 0..<n {
                self.attempt(spec, address: address, on: loop).whenComplete { r in
                    var result: ProbeResult
                    switch r {
                    case .success(let x): result = x
                    case .failure(let e): result = .failed("\(e)")
                    }
                    result.latency = ContinuousClock.now - start
                    if let decided = race.record(result) { promise.succeed(decided) }
                }
            }
        }
        return promise.futureResult
    }

    /// One attempt; never fails the future (failures are results).
    func attempt(_ spec: ProbeSpec, address: SocketAddress, on loop: EventLoop) -> EventLoopFuture<ProbeResult> {
        loop.assertInEventLoop()
        let timeout = TimeAmount.nanoseconds(Int64(spec.timing.timeout.components.seconds) * 1_000_000_000
            + spec.timing.timeout.components.attoseconds / 1_000_000_000)
        switch spec.kind {
        case .none:
            return loop.makeSucceededFuture(.ok("not probed"))
        case .tcp:
            return tcp(address, timeout: timeout, on: loop)
        case .http:
            return http(spec, address: address, tls: nil, timeout: timeout, on: loop)
        case .https:
            guard let ctx = spec.tlsVerify ? verifyingTLS : insecureTLS else {
                return loop.makeSucceededFuture(.failed(tlsError ?? "tls unavailable"))
            }
            return http(spec, address: address, tls: ctx, timeout: timeout, on: loop)
        case .udp:
            return udp(spec, address: address, timeout: timeout, on: loop)
        case .ping:
            let id = icmpIDs.withLockedValue { v -> UInt16 in
                v &+= 1
                return v
            }
            return ping(address, id: id, timeout: timeout, on: loop)
        }
    }

    // MARK: tcp

    private func tcp(_ address: SocketAddress, timeout: TimeAmount, on loop: EventLoop) -> EventLoopFuture<ProbeResult> {
        ClientBootstrap(group: loop)
            .connectTimeout(timeout)
            .connect(to: address)
            .map { channel -> ProbeResult in
                // Established is all a tcp probe asks; close at once.
                channel.close(promise: nil)
                return .ok("connected")
            }
            .recover { .failed(Self.describe($0)) }
    }

    // MARK: http, https

    private func http(_ spec: ProbeSpec, address: SocketAddress, tls: NIOSSLContext?, timeout: TimeAmount,
                      on loop: EventLoop) -> EventLoopFuture<ProbeResult> {
        let promise = loop.makePromise(of: ProbeResult.self)
        let host = address.ipAddress.map { ip in
            let h = ip.contains(":") ? "[\(ip)]" : ip
            return "\(h):\(address.port ?? 0)"
        } ?? "localhost"
        let request = "GET \(spec.path) HTTP/1.1\r\nHost: \(host)\r\nUser-Agent: tandem-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        let handler = HTTPProbeHandler(request: request, expectedStatus: spec.expectedStatus,
                                       expectedBody: spec.expectedBody, promise: promise)
        let connect = ClientBootstrap(group: loop)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        let ssl = try NIOSSLClientHandler(context: tls, serverHostname: nil)
                        try channel.pipeline.syncOperations.addHandler(ssl)
                    }
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
            .connect(to: address)
        connect.whenFailure { promise.succeed(.failed(Self.describe($0))) }
        // The whole exchange, not just the connect, must finish within the timeout.
        let timer = loop.scheduleTask(in: timeout) {
            promise.succeed(.failed("timeout"))
        }
        promise.futureResult.whenComplete { _ in
            timer.cancel()
            connect.whenSuccess { $0.close(promise: nil) }
        }
        return promise.futureResult
    }

    // MARK: udp

    private func udp(_ spec: ProbeSpec, address: SocketAddress, timeout: TimeAmount, on loop: EventLoop) -> EventLoopFuture<ProbeResult> {
        let promise = loop.makePromise(of: ProbeResult.self)
        let payload = spec.request.isEmpty ? ProbeSpec.defaultUDPPayload : spec.request
        let handler = UDPProbeHandler(expected: spec.expectedBody, promise: promise)
        // A connected UDP socket: the kernel reports an ICMP port unreachable for it as
        // ECONNREFUSED, which NIO hands to errorCaught without closing the channel.
        let connect = DatagramBootstrap(group: loop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(handler) }
            }
            .connect(to: address)
        connect.whenComplete { r in
            switch r {
            case .failure(let e): promise.succeed(.failed(Self.describe(e)))
            case .success(let channel):
                var buf = channel.allocator.buffer(capacity: payload.utf8.count)
                buf.writeString(payload)
                channel.writeAndFlush(AddressedEnvelope(remoteAddress: address, data: buf)).whenFailure { e in
                    promise.succeed(.failed(Self.describe(e)))
                }
            }
        }
        let expectsReply = spec.expectedBody != nil
        let timer = loop.scheduleTask(in: timeout) {
            // LoxiLB's rule: without an expected reply, silence (no ICMP unreachable) is health.
            promise.succeed(expectsReply ? .failed("timeout") : .ok(ProbeResult.noUnreachable))
        }
        promise.futureResult.whenComplete { _ in
            timer.cancel()
            connect.whenSuccess { $0.close(promise: nil) }
        }
        return promise.futureResult
    }

    // MARK: ping

    private func ping(_ address: SocketAddress, id: UInt16, timeout: TimeAmount, on loop: EventLoop) -> EventLoopFuture<ProbeResult> {
        guard case .v4(let v4) = address else {
            return loop.makeSucceededFuture(.failed("ping supports IPv4 endpoints only"))
        }
        // A raw ICMP socket (we run as root), connected to the endpoint so the kernel hands it
        // only that host's ICMP; the echo id and sequence pick our reply out of those.
        let fd = socket(AF_INET, Int32(SOCK_RAW.rawValue), Int32(IPPROTO_ICMP))
        guard fd >= 0 else { return loop.makeSucceededFuture(.failed("raw socket: \(String(cString: strerror(errno)))")) }
        var sin = v4.address
        let rc = withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else {
            let err = String(cString: strerror(errno))
            close(fd)
            return loop.makeSucceededFuture(.failed("raw socket connect: \(err)"))
        }
        let promise = loop.makePromise(of: ProbeResult.self)
        let seq: UInt16 = 1
        let handler = PingHandler(id: id, sequence: seq, promise: promise)
        let channelFuture = DatagramBootstrap(group: loop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(handler) }
            }
            .withBoundSocket(fd)
        channelFuture.whenComplete { r in
            switch r {
            case .failure(let e):
                promise.succeed(.failed("ping: \(e)"))
            case .success(let channel):
                var buf = channel.allocator.buffer(capacity: 64)
                buf.writeBytes(PingHandler.echoRequest(id: id, sequence: seq))
                channel.writeAndFlush(AddressedEnvelope(remoteAddress: address, data: buf)).whenFailure { e in
                    promise.succeed(.failed(Self.describe(e)))
                }
            }
        }
        let timer = loop.scheduleTask(in: timeout) { promise.succeed(.failed("timeout")) }
        promise.futureResult.whenComplete { _ in
            timer.cancel()
            channelFuture.whenSuccess { $0.close(promise: nil) }
        }
        return promise.futureResult
    }

    /// A short reason for a failed connect or I/O.
    static func describe(_ error: Error) -> String {
        if let e = error as? ChannelError, case .connectTimeout = e { return "timeout" }
        if let e = error as? IOError { return errnoName(e.errnoCode) }
        if let e = error as? NIOConnectionError {
            if let first = e.connectionErrors.first { return describe(first.error) }
            return "connect failed"
        }
        if let e = error as? NIOSSLError { return "tls: \(e)" }
        if let e = error as? BoringSSLError { return "tls: \(e)" }
        return "\(error)"
    }

    static func errnoName(_ code: CInt) -> String {
        switch code {
        case ECONNREFUSED: return "refused"
        case EHOSTUNREACH: return "host unreachable"
        case ENETUNREACH: return "network unreachable"
        case ETIMEDOUT: return "timeout"
        case ECONNRESET: return "reset"
        default: return String(cString: strerror(code))
        }
    }
}

/// Outcome of parallel attempts: the first success, or the first failure once all failed.
/// Touched only on one event loop (the attempts complete there).
final class AttemptRace: @unchecked Sendable {
    private let count: Int
    private let failureDecides: Bool
    private var failures: [ProbeResult] = []
    private var done = false

    init(count: Int, failureDecides: Bool = false) {
        self.count = count
        self.failureDecides = failureDecides
    }

    /// The probe's result when this attempt decides it, else nil.
    func record(_ r: ProbeResult) -> ProbeResult? {
        guard !done else { return nil }
        if r.success {
            done = true
            return r
        }
        failures.append(r)
        guard failures.count == count || failureDecides else { return nil }
        done = true
        return failures[0]
    }
}

// MARK: - Handlers

/// Writes the request on connect, collects the response until the server closes (or the
/// response is complete enough to decide), then judges status and body.
final class HTTPProbeHandler: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked: used only on its channel's event loop.
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let request: String
    private let expectedStatus: Int?
    private let expectedBody: [UInt8]?
    private let promise: EventLoopPromise<ProbeResult>
    private var response: [UInt8] = []
    private var decided = false

    init(request: String, expectedStatus: Int?, expectedBody: String?, promise: EventLoopPromise<ProbeResult>) {
        self.request = request
        self.expectedStatus = expectedStatus
        self.expectedBody = expectedBody.map { Array($0.utf8) }
        self.promise = promise
    }

    func channelActive(context: ChannelHandlerContext) {
        var buf = context.channel.allocator.buffer(capacity: request.utf8.count)
        buf.writeString(request)
        context.writeAndFlush(wrapOutboundOut(buf), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buf = unwrapInboundIn(data)
        if let bytes = buf.readBytes(length: min(buf.readableBytes, Prober.maxHTTPResponse - response.count)) {
            response += bytes
        }
        // Enough to decide before the close: the status alone when no body text is asked for,
        // or the text once it has arrived.
        if let status = Self.status(response) {
            if expectedBody == nil {
                finish(context, judge(status: status, body: nil))
            } else if let body = Self.body(response), let want = expectedBody, Self.contains(body, want) {
                finish(context, judge(status: status, body: body))
            } else if response.count >= Prober.maxHTTPResponse {
                finish(context, judge(status: status, body: Self.body(response) ?? []))
            }
        } else if response.count >= Prober.maxHTTPResponse {
            finish(context, .failed("no HTTP status line"))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !decided {
            if let status = Self.status(response) {
                finish(context, judge(status: status, body: Self.body(response) ?? []))
            } else {
                finish(context, .failed(response.isEmpty ? "closed without response" : "no HTTP status line"))
            }
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        finish(context, .failed(Prober.describe(error)))
    }

    private func finish(_ context: ChannelHandlerContext, _ r: ProbeResult) {
        guard !decided else { return }
        decided = true
        promise.succeed(r)
        context.close(promise: nil)
    }

    private func judge(status: Int, body: [UInt8]?) -> ProbeResult {
        if let want = expectedStatus {
            guard status == want else { return .failed("status \(status)") }
        } else {
            guard (200..<400).contains(status) else { return .failed("status \(status)") }
        }
        if let want = expectedBody {
            guard let body, Self.contains(body, want) else { return .failed("status \(status), body mismatch") }
        }
        return .ok("status \(status)")
    }

    /// "HTTP/1.x NNN ..." once the first line is complete.
    static func status(_ r: [UInt8]) -> Int? {
        guard let eol = r.firstIndex(of: UInt8(ascii: "\n")) else { return nil }
        let line = String(decoding: r[..<eol], as: UTF8.self)
        let parts = line.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/"), let code = Int(parts[1]), (100...999).contains(code) else {
            return -1
        }
        return code
    }

    static func body(_ r: [UInt8]) -> [UInt8]? {
        let sep: [UInt8] = [13, 10, 13, 10]
        guard r.count >= 4 else { return nil }
        for i in 0...(r.count - 4) where r[i] == 13 && Array(r[i..<i + 4]) == sep {
            return Array(r[(i + 4)...])
        }
        return nil
    }

    static func contains(_ hay: [UInt8], _ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty else { return true }
        guard hay.count >= needle.count else { return false }
        for i in 0...(hay.count - needle.count) where hay[i] == needle[0] {
            if hay[i..<i + needle.count].elementsEqual(needle) { return true }
        }
        return false
    }
}

/// A reply (matching if asked) is success; ECONNREFUSED (ICMP port unreachable) is failure.
final class UDPProbeHandler: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked: used only on its channel's event loop.
    typealias InboundIn = AddressedEnvelope<ByteBuffer>

    private let expected: [UInt8]?
    private let promise: EventLoopPromise<ProbeResult>

    init(expected: String?, promise: EventLoopPromise<ProbeResult>) {
        self.expected = expected.map { Array($0.utf8) }
        self.promise = promise
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var env = unwrapInboundIn(data)
        let bytes = env.data.readBytes(length: env.data.readableBytes) ?? []
        if let expected {
            // A reply without the text may be a stray; keep waiting for a matching one.
            if HTTPProbeHandler.contains(bytes, expected) { promise.succeed(.ok("reply")) }
        } else {
            promise.succeed(.ok("reply"))
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let e = error as? IOError, e.errnoCode == ECONNREFUSED {
            promise.succeed(.failed(ProbeResult.portUnreachable))
        } else {
            promise.succeed(.failed(Prober.describe(error)))
        }
    }
}

/// Sends one ICMP echo request and waits for the reply with our id and sequence.
final class PingHandler: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked: used only on its channel's event loop.
    typealias InboundIn = AddressedEnvelope<ByteBuffer>

    private let id: UInt16
    private let sequence: UInt16
    private let promise: EventLoopPromise<ProbeResult>

    init(id: UInt16, sequence: UInt16, promise: EventLoopPromise<ProbeResult>) {
        self.id = id
        self.sequence = sequence
        self.promise = promise
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var env = unwrapInboundIn(data)
        let bytes = env.data.readBytes(length: env.data.readableBytes) ?? []
        switch Self.parseReply(bytes, id: id, sequence: sequence) {
        case .reply: promise.succeed(.ok("echo reply"))
        case .unreachable: promise.succeed(.failed("unreachable"))
        case .other: break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        promise.succeed(.failed(Prober.describe(error)))
    }

    enum Parsed: Equatable { case reply, unreachable, other }

    /// A raw IPv4 ICMP socket delivers the IP header too.
    static func parseReply(_ p: [UInt8], id: UInt16, sequence: UInt16) -> Parsed {
        guard p.count >= 20, p[0] >> 4 == 4 else { return .other }
        let ihl = Int(p[0] & 0x0f) * 4
        guard p.count >= ihl + 8 else { return .other }
        let icmp = Array(p[ihl...])
        let type = icmp[0]
        if type == 0 {
            let rid = UInt16(icmp[4]) << 8 | UInt16(icmp[5])
            let rseq = UInt16(icmp[6]) << 8 | UInt16(icmp[7])
            return rid == id && rseq == sequence ? .reply : .other
        }
        if type == 3, icmp.count >= 8 + 20 + 8 {
            // Destination unreachable quoting our request: inner IP header, then our ICMP header.
            let inner = Array(icmp[8...])
            let innerIHL = Int(inner[0] & 0x0f) * 4
            guard inner.count >= innerIHL + 8, inner[innerIHL] == 8 else { return .other }
            let rid = UInt16(inner[innerIHL + 4]) << 8 | UInt16(inner[innerIHL + 5])
            return rid == id ? .unreachable : .other
        }
        return .other
    }

    static func echoRequest(id: UInt16, sequence: UInt16) -> [UInt8] {
        var p: [UInt8] = [8, 0, 0, 0, UInt8(id >> 8), UInt8(id & 0xff), UInt8(sequence >> 8), UInt8(sequence & 0xff)]
        p += Array("tandem-health-ping".utf8)
        let sum = checksum(p)
        p[2] = UInt8(sum >> 8)
        p[3] = UInt8(sum & 0xff)
        return p
    }

    static func checksum(_ b: [UInt8]) -> UInt16 {
        var sum: UInt32 = 0
        var i = 0
        while i + 1 < b.count {
            sum += UInt32(b[i]) << 8 | UInt32(b[i + 1])
            i += 2
        }
        if i < b.count { sum += UInt32(b[i]) << 8 }
        while sum >> 16 != 0 { sum = (sum & 0xffff) + (sum >> 16) }
        return ~UInt16(sum)
    }
}
