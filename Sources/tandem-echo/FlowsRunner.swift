// The engine behind `tandem-echo flows`: long-lived TCP and UDP flows on one NIO event loop.
//
// Everything here is confined to that single event loop (the runner, the flows, their channel
// handlers), so none of it is Sendable: values cross to the main thread only through
// `NIOLoopBound` and the `done` future's Sendable `FlowsReport`.
//
// Two loop-wide timers drive all flows: the send tick (the interval is cut into up to 8 slots and
// each flow sends its next message once per interval in its own slot; a UDP flow only when its
// previous message has been echoed) and the housekeeping tick (every 10 ms: UDP resends after
// 50 ms, stall-limit checks).

import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

struct FlowsConfig: Sendable {
    var tcpTarget: SocketAddress?
    var udpTarget: SocketAddress?
    var tcp: Int
    var udp: Int
    var lateTCP: Int
    var lateUDP: Int
    var interval: TimeAmount
    var size: Int
    var duration: TimeAmount?
    var stallLimit: TimeAmount
    var connectTimeout: TimeAmount
    var readyFile: String?
}

struct FlowFailure: Sendable {
    var flow: String
    var reason: String
}

struct FlowsReport: Sendable {
    var tcpTotal = 0
    var tcpSurvived = 0
    var udpTotal = 0
    var udpSurvived = 0
    var lateTCP = 0
    var lateUDP = 0
    var lateSurvived = 0
    /// Longest time from opening a late flow to its first echo, nanoseconds.
    var lateFirstEcho: Int64 = 0
    /// Nanoseconds.
    var longestStall: Int64 = 0
    var longestStallTCP: Int64 = 0
    var longestStallUDP: Int64 = 0
    var messages = 0
    var bytes = 0
    var udpResends = 0
    var udpDuplicates = 0
    /// Longest delay of the runner's own timers, nanoseconds: large values mean this client was
    /// overloaded and its stall figures include its own delays.
    var loopLag: Int64 = 0
    /// Percentage of the due send ticks that ran: below 100 this client could not keep up.
    var sendRate = 100.0
    /// CPU time of the event loop thread over the run, percent of one core.
    var loopCPU = 0.0
    /// Chronological, all of them (the JSON carries the first 20).
    var failures: [FlowFailure] = []
    /// UDP endpoint name -> number of UDP flows answered by it.
    var udpEndpoints: [(name: String, flows: Int)] = []
    var durationS = 0.0
    /// Why the run is invalid (exit 2): the initial flows were not all established.
    var error: String?
    /// Stalls (gaps of three intervals or more) by flow index, for the timeline plot.
    struct Stall: Sendable {
        var flow: Int
        var tcp: Bool
        var startUnixMs: Double
        var endUnixMs: Double
    }
    var stalls: [Stall] = []
    static let maxStalls = 5000
    var startedAtUnixMs = 0.0
    var readyAtUnixMs: Double?
    var endedAtUnixMs = 0.0

    var exitCode: Int32 { error != nil ? 2 : (failures.isEmpty ? 0 : 1) }
}

// MARK: - Flows

/// State common to TCP and UDP flows. Subclasses override the protocol-specific parts.
class Flow {
    unowned let runner: FlowsRunner
    let name: String
    let id: UInt32
    let late: Bool
    let isTCP: Bool
    /// Which of the runner's send slots this flow sends in (flows are spread over the interval).
    let slot: Int
    let openedAt: NIODeadline
    var establishedAt: NIODeadline?
    /// Time of the last echo (or of establishment, or of opening before that).
    var lastEcho: NIODeadline
    /// Longest gap between consecutive echoes, nanoseconds, counting only time after `measureFrom`.
    var maxGap: Int64 = 0
    /// Start of stall measurement: for initial flows the moment all of them echo (so setting up
    /// hundreds of flows at once does not show up as a stall), for late flows their first echo.
    var measureFrom: NIODeadline?
    var gotFirstEcho = false
    /// From opening to the first echo, nanoseconds.
    var firstEchoDelay: Int64 = 0
    var failed = false
    /// Last non-fatal socket error, quoted in a stall failure.
    var lastError: String?

    init(runner: FlowsRunner, name: String, id: UInt32, late: Bool, isTCP: Bool, now: NIODeadline) {
        self.runner = runner
        self.name = name
        self.id = id
        self.late = late
        self.isTCP = isTCP
        self.slot = runner.slotFor(flowNumber: runner.flowCount)
        self.openedAt = now
        self.lastEcho = now
    }

    /// Messages sent and not yet echoed.
    var outstanding: Int { 0 }
    func sendTick(now: NIODeadline) {}
    func housekeeping(now: NIODeadline) {}
    func closeChannel() {}

    final func established(now: NIODeadline) {
        establishedAt = now
        lastEcho = now
    }

    /// Gaps longer than the runner's stall threshold, as (start, end), for the timeline plot.
    /// Bounded: the longest `maxStallsKept` of this flow.
    var stalls: [(from: NIODeadline, to: NIODeadline)] = []
    static let maxStallsKept = 8

    /// Counts the time without echo up to `now` into `maxGap` (from `measureFrom` on).
    final func noteGap(until now: NIODeadline) {
        guard let measureFrom else { return }
        let from = max(lastEcho, measureFrom)
        guard now > from else { return }
        let gap = (now - from).nanoseconds
        maxGap = max(maxGap, gap)
        if gap >= runner.stallThreshold.nanoseconds {
            stalls.append((from, now))
            if stalls.count > Self.maxStallsKept {
                stalls.sort { ($0.to - $0.from) > ($1.to - $1.from) }
                stalls.removeLast()
            }
        }
    }

    final func echoed(now: NIODeadline, bytes: Int) {
        let first = !gotFirstEcho
        if first {
            // The set-up time of late flows is reported on its own.
            firstEchoDelay = (now - openedAt).nanoseconds
            if late { measureFrom = now }
        } else {
            noteGap(until: now)
        }
        lastEcho = now
        gotFirstEcho = true
        runner.echoed(self, bytes: bytes, first: first)
    }

    /// Marks the flow failed (once), closes its socket and tells the runner.
    final func fail(_ reason: String, now: NIODeadline = .now()) {
        guard !failed, !runner.closing else { return }
        failed = true
        noteGap(until: now)
        closeChannel()
        runner.flowFailed(self, reason: reason)
    }
}

final class TCPFlow: Flow {
    private var channel: Channel?
    private var seq: UInt32 = 0
    /// Sent messages not yet fully echoed, oldest first; `headMatched` bytes of the first are in.
    private var pending = CircularBuffer<ByteBuffer>()
    private var pendingBytes = 0
    private var headMatched = 0
    /// Sending pauses while this much is unanswered (a stalled flow must not grow without bound).
    private static let maxPendingBytes = 256 << 10

    override var outstanding: Int { pending.count }

    func open(target: SocketAddress, timeout: TimeAmount) {
        let bound = NIOLoopBound(self, eventLoop: runner.loop)
        ClientBootstrap(group: runner.loop)
            .channelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(TCPFlowHandler(flow: bound.value))
                }
            }
            .connect(to: target)
            .assumeIsolated()
            .whenComplete { result in
                switch result {
                case .success(let channel): self.connected(channel)
                case .failure(let error): self.fail("connect: \(describe(error))")
                }
            }
    }

    private func connected(_ channel: Channel) {
        guard !failed, !runner.closing else {
            channel.close(promise: nil)
            return
        }
        self.channel = channel
        let now = NIODeadline.now()
        established(now: now)
        sendNext()
    }

    override func sendTick(now: NIODeadline) { sendNext() }

    private func sendNext() {
        guard !failed, let channel, channel.isWritable, pendingBytes < Self.maxPendingBytes else { return }
        seq &+= 1
        let message = FlowMessage.make(flowID: id, seq: seq, size: runner.config.size, allocator: runner.allocator)
        pending.append(message)
        pendingBytes += message.readableBytes
        channel.writeAndFlush(message, promise: nil)
    }

    /// Checks echoed bytes against the sent stream, in order.
    func received(_ buffer: ByteBuffer) {
        guard !failed else { return }
        let now = NIODeadline.now()
        let total = buffer.readableBytes
        var offset = 0
        while offset < total {
            guard let head = pending.first else {
                fail("\(total - offset) unexpected byte(s) with nothing outstanding", now: now)
                return
            }
            let n = min(head.readableBytes - headMatched, total - offset)
            guard sameBytes(head, headMatched, buffer, offset, count: n) else {
                let at = headMatched + firstDifference(head, headMatched, buffer, offset, count: n)
                let seq = head.getInteger(at: head.readerIndex + 8, as: UInt32.self) ?? 0
                fail("wrong bytes: echo of message seq \(seq) differs at byte \(at)", now: now)
                return
            }
            headMatched += n
            offset += n
            if headMatched == head.readableBytes {
                pending.removeFirst()
                pendingBytes -= head.readableBytes
                headMatched = 0
                echoed(now: now, bytes: head.readableBytes)
                if failed || runner.closing { return }
            }
        }
    }

    override func closeChannel() {
        channel?.close(promise: nil)
        channel = nil
    }
}

final class TCPFlowHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let flow: TCPFlow

    init(flow: TCPFlow) { self.flow = flow }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        flow.received(unwrapInboundIn(data))
    }

    func channelInactive(context: ChannelHandlerContext) {
        flow.fail("connection closed" + (flow.lastError.map { ": \($0)" } ?? " by the peer"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // Reset, timeout...: the connection is gone. Remember why for the inactive event.
        flow.lastError = describe(error)
        flow.fail(describe(error))
        context.close(promise: nil)
    }
}

final class UDPFlow: Flow {
    private let target: SocketAddress
    private var channel: Channel?
    private var seq: UInt32 = 0
    /// The message with number `seq`; unanswered while `acked` is false.
    private var current: ByteBuffer?
    private var acked = true
    private var lastSendAt: NIODeadline
    /// Name of the endpoint that answered the first echo.
    private(set) var endpoint: String?
    private static let resendAfter = TimeAmount.milliseconds(50)

    init(runner: FlowsRunner, name: String, id: UInt32, late: Bool, target: SocketAddress, now: NIODeadline) {
        self.target = target
        self.lastSendAt = now
        super.init(runner: runner, name: name, id: id, late: late, isTCP: false, now: now)
    }

    override var outstanding: Int { acked ? 0 : 1 }

    /// An unconnected socket bound to its own ephemeral port: unlike a connected one it does not
    /// get ICMP errors (which NIO would turn into a closed channel on the next write), and a
    /// dead path simply shows up as a stall.
    func open() {
        let bound = NIOLoopBound(self, eventLoop: runner.loop)
        let local: SocketAddress
        do {
            local = try SocketAddress(ipAddress: "0.0.0.0", port: 0)
        } catch {
            fail("bind: \(describe(error))")
            return
        }
        DatagramBootstrap(group: runner.loop)
            .channelOption(ChannelOptions.recvAllocator,
                           value: FixedSizeRecvByteBufferAllocator(capacity: runner.config.size + 512))
            .channelOption(ChannelOptions.maxMessagesPerRead, value: 4)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(UDPFlowHandler(flow: bound.value))
                }
            }
            .bind(to: local)
            .assumeIsolated()
            .whenComplete { result in
                switch result {
                case .success(let channel): self.bound(channel)
                case .failure(let error): self.fail("bind: \(describe(error))")
                }
            }
    }

    private func bound(_ channel: Channel) {
        guard !failed, !runner.closing else {
            channel.close(promise: nil)
            return
        }
        self.channel = channel
        let now = NIODeadline.now()
        established(now: now)
        sendNew(now: now)
    }

    override func sendTick(now: NIODeadline) { sendNew(now: now) }

    /// Stop-and-wait: the next message only once the previous one has been echoed.
    private func sendNew(now: NIODeadline) {
        guard !failed, channel != nil, acked else { return }
        seq &+= 1
        current = FlowMessage.make(flowID: id, seq: seq, size: runner.config.size, allocator: runner.allocator)
        acked = false
        transmit(now: now)
    }

    private func transmit(now: NIODeadline) {
        guard let channel, let current else { return }
        lastSendAt = now
        channel.writeAndFlush(AddressedEnvelope(remoteAddress: target, data: current), promise: nil)
    }

    override func housekeeping(now: NIODeadline) {
        if !acked, !failed, now - lastSendAt >= Self.resendAfter {
            runner.udpResends += 1
            transmit(now: now)
        }
    }

    func received(_ envelope: AddressedEnvelope<ByteBuffer>) {
        guard !failed else { return }
        // Not from the echo service (the socket is not connected): not ours to judge.
        guard envelope.remoteAddress == target else { return }
        let now = NIODeadline.now()
        let data = envelope.data
        let size = runner.config.size
        let base = data.readerIndex
        guard data.readableBytes >= FlowMessage.headerSize,
              data.getInteger(at: base, as: UInt32.self) == FlowMessage.magic,
              let flowID = data.getInteger(at: base + 4, as: UInt32.self),
              let echoSeq = data.getInteger(at: base + 8, as: UInt32.self)
        else {
            fail("wrong content: \(data.readableBytes)-byte datagram that is not a flows message", now: now)
            return
        }
        guard flowID == id, echoSeq >= 1, echoSeq <= seq else {
            fail("wrong content: echo of flow id \(flowID) seq \(echoSeq), sent flow id \(id) seqs 1...\(seq)",
                 now: now)
            return
        }
        let expected: ByteBuffer
        if echoSeq == seq, let current {
            expected = current
        } else {
            expected = FlowMessage.make(flowID: id, seq: echoSeq, size: size, allocator: runner.allocator)
        }
        guard data.readableBytes >= size else {
            fail("wrong content: \(data.readableBytes)-byte echo of the \(size)-byte message seq \(echoSeq)", now: now)
            return
        }
        guard sameBytes(expected, 0, data, 0, count: size) else {
            let at = firstDifference(expected, 0, data, 0, count: size)
            fail("wrong content in the echo of seq \(echoSeq) at byte \(at)", now: now)
            return
        }
        guard data.readableBytes > size,
              let nameLength = data.getInteger(at: base + size, as: UInt8.self),
              nameLength > 0, data.readableBytes == size + 1 + Int(nameLength),
              let name = data.getString(at: base + size + 1, length: Int(nameLength))
        else {
            let what = data.readableBytes == size
                ? "echo without the endpoint name (is the server an older tandem-echo?)"
                : "malformed endpoint name after the echo of seq \(echoSeq)"
            fail(what, now: now)
            return
        }
        if let endpoint {
            guard endpoint == name else {
                fail("endpoint changed from \(endpoint) to \(name)", now: now)
                return
            }
        } else {
            endpoint = name
        }
        if echoSeq == seq, !acked {
            acked = true
            echoed(now: now, bytes: size)
        } else {
            runner.udpDuplicates += 1   // a resend's second echo
        }
    }

    override func closeChannel() {
        channel?.close(promise: nil)
        channel = nil
    }
}

final class UDPFlowHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>

    private let flow: UDPFlow

    init(flow: UDPFlow) { self.flow = flow }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        flow.received(unwrapInboundIn(data))
    }

    func channelInactive(context: ChannelHandlerContext) {
        flow.fail("socket closed" + (flow.lastError.map { ": \($0)" } ?? ""))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // Non-fatal datagram errors (NIO closes the channel itself on fatal ones): keep resending.
        flow.lastError = describe(error)
    }
}

// MARK: - Runner

final class FlowsRunner {
    enum Phase { case establishing, running, draining, finished }

    let loop: EventLoop
    let config: FlowsConfig
    let done: EventLoopPromise<FlowsReport>
    let allocator = ByteBufferAllocator()

    private(set) var phase = Phase.establishing
    /// Set while the runner closes everything at the end: channel closes are not failures then.
    private(set) var closing = false
    var isFinished: Bool { phase == .finished }

    private var flows: [Flow] = []
    private var tcpCount = 0
    private var udpCount = 0
    private var initialWaiting = 0
    private var lateOpened = false
    private var lateWaiting = 0
    private var lateFileWritten = false

    private let startedAt: NIODeadline
    /// CPU time of the loop thread at the start (the runner is created on it).
    private let startCPU: Double
    private var readyAt: NIODeadline?
    private var stopAt: NIODeadline?

    private var failures: [FlowFailure] = []
    private var establishError: String?
    private var messages = 0
    private var bytes = 0
    var udpResends = 0
    var udpDuplicates = 0
    private var loopLag: Int64 = 0
    /// Send slots run while running (compared with those due, to see if sending kept up).
    private var ticksRun = 0

    private var sendTask: Scheduled<Void>?
    private var houseTask: Scheduled<Void>?
    private var connectTask: Scheduled<Void>?
    private var durationTask: Scheduled<Void>?
    private var drainTask: Scheduled<Void>?

    private static let housekeepingInterval = TimeAmount.milliseconds(10)
    private static let drainTime = TimeAmount.seconds(2)
    private static let liveFailureLines = 20

    init(loop: EventLoop, config: FlowsConfig) {
        self.loop = loop
        self.config = config
        self.done = loop.makePromise(of: FlowsReport.self)
        self.startedAt = .now()
        self.startCPU = threadCPUSeconds()
    }

    func start() {
        if let path = config.readyFile {
            unlink(path)
            unlink(path + ".late")
        }
        for _ in 0..<config.tcp { openTCP(late: false) }
        for _ in 0..<config.udp { openUDP(late: false) }
        initialWaiting = config.tcp + config.udp
        connectTask = loop.assumeIsolated().scheduleTask(in: config.connectTimeout) { [self] in
            guard phase == .establishing else { return }
            let total = config.tcp + config.udp
            establishError = "only \(total - initialWaiting) of \(total) initial flows established"
                + " (connected and echoed) within \(seconds(config.connectTimeout)) s"
            finish()
        }
        armSendTick(.now() + slotSpacing, slot: 0)
        armHousekeeping()
    }

    private func openTCP(late: Bool) {
        guard let target = config.tcpTarget else { return }
        let flow = TCPFlow(runner: self, name: "tcp-\(tcpCount)", id: UInt32(tcpCount), late: late, isTCP: true,
                           now: .now())
        tcpCount += 1
        flows.append(flow)
        // A late flow may be opened during a failover: give its handshake as long as a stall.
        flow.open(target: target, timeout: late ? config.stallLimit : config.connectTimeout)
    }

    private func openUDP(late: Bool) {
        guard let target = config.udpTarget else { return }
        let flow = UDPFlow(runner: self, name: "udp-\(udpCount)", id: FlowMessage.udpFlowBit | UInt32(udpCount),
                           late: late, target: target, now: .now())
        udpCount += 1
        flows.append(flow)
        flow.open()
    }

    // MARK: Timers

    /// The interval is cut into slots (5 ms or more apart, at most 8) and each flow sends in its
    /// own slot: hundreds of flows do not all send in one burst, which keeps the echo timing
    /// even and leaves the loop room to read in between.
    /// A gap this long is a stall on the timeline: three send intervals, at least 50 ms.
    var stallThreshold: TimeAmount { .nanoseconds(max(3 * config.interval.nanoseconds, 50_000_000)) }
    /// Wall clock of NIODeadline's zero, so stalls are reported in Unix milliseconds (the test-bed
    /// scripts mark their events in the same clock).
    let wallClockOffsetMs: Double = {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) * 1000 + Double(ts.tv_nsec) / 1e6 - Double(NIODeadline.now().uptimeNanoseconds) / 1e6
    }()

    func unixMs(_ d: NIODeadline) -> Double { wallClockOffsetMs + Double(d.uptimeNanoseconds) / 1e6 }

    private lazy var slots = max(1, min(8, Int(config.interval.nanoseconds / 5_000_000)))
    private var slotSpacing: TimeAmount { .nanoseconds(config.interval.nanoseconds / Int64(slots)) }
    var flowCount: Int { flows.count }

    func slotFor(flowNumber: Int) -> Int { flowNumber % slots }

    private func armSendTick(_ deadline: NIODeadline, slot: Int) {
        sendTask = loop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            guard phase == .establishing || phase == .running else { return }
            let now = NIODeadline.now()
            noteLag(now - deadline)
            if phase == .running { ticksRun += 1 }
            for flow in flows where flow.slot == slot && !flow.failed && flow.establishedAt != nil {
                flow.sendTick(now: now)
                if phase == .finished { return }
            }
            // NIO runs due tasks until none is due before it looks at I/O again: if this tick
            // overran, leave a gap rather than starve the reads (and skip ticks, don't burst).
            let after = NIODeadline.now()
            var next = deadline + slotSpacing
            if next <= after { next = after + .nanoseconds(max(slotSpacing.nanoseconds / 4, 1_000_000)) }
            armSendTick(next, slot: (slot + 1) % slots)
        }
    }

    private func armHousekeeping() {
        let deadline = NIODeadline.now() + Self.housekeepingInterval
        houseTask = loop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            guard phase != .finished else { return }
            let now = NIODeadline.now()
            noteLag(now - deadline)
            let limit = config.stallLimit
            for flow in flows where !flow.failed {
                flow.housekeeping(now: now)
                // Initial flows that are still being established are up to the connect timeout.
                guard flow.gotFirstEcho || flow.late,
                      flow.outstanding > 0 || flow.establishedAt == nil,
                      now - flow.lastEcho > limit
                else { continue }
                let what = flow.establishedAt == nil ? "not established" : "no echo"
                flow.fail("\(what) for more than \(seconds(limit)) s"
                          + (flow.lastError.map { " (last error: \($0))" } ?? ""), now: now)
                if phase == .finished { return }
            }
            armHousekeeping()
        }
    }

    /// Timer lateness counts once the initial flows are up (their set-up is a burst of work).
    private func noteLag(_ lag: TimeAmount) {
        if phase == .running || phase == .draining { loopLag = max(loopLag, lag.nanoseconds) }
    }

    // MARK: Events from the flows

    func echoed(_ flow: Flow, bytes: Int, first: Bool) {
        messages += 1
        self.bytes += bytes
        if first {
            if flow.late {
                lateSettled()
            } else {
                initialWaiting -= 1
                if initialWaiting == 0, phase == .establishing { becomeRunning() }
            }
        }
        if phase == .draining { finishIfDrained() }
    }

    func flowFailed(_ flow: Flow, reason: String) {
        let why = flow.late ? "late flow: \(reason)" : reason
        failures.append(FlowFailure(flow: flow.name, reason: why))
        if phase == .finished { return }
        if failures.count <= Self.liveFailureLines {
            warn("flows: \(flow.name) failed: \(why)")
        } else if failures.count == Self.liveFailureLines + 1 {
            warn("flows: more failures (not shown as they happen)")
        }
        if flow.late, !flow.gotFirstEcho { lateSettled() }
        switch phase {
        case .establishing where !flow.late:
            establishError = "initial flow \(flow.name) failed before all were established: \(reason)"
            finish()
        case .draining:
            finishIfDrained()
        default:
            break
        }
    }

    // MARK: Phases

    private func becomeRunning() {
        let now = NIODeadline.now()
        phase = .running
        readyAt = now
        for flow in flows where !flow.late { flow.measureFrom = now }
        connectTask?.cancel()
        warn("flows: \(config.tcp) tcp + \(config.udp) udp flows established in \(seconds(now - startedAt)) s")
        if let path = config.readyFile {
            if let error = writeTextFile(path, "ready tcp=\(config.tcp) udp=\(config.udp)\n") {
                warn("flows: cannot write \(path): \(error)")
            }
        }
        if let duration = config.duration {
            durationTask = loop.assumeIsolated().scheduleTask(in: duration) { [self] in
                stop(reason: "duration elapsed")
            }
        }
    }

    /// SIGUSR1: open the late flows (once).
    func openLate() {
        guard phase == .establishing || phase == .running else {
            warn("flows: SIGUSR1 ignored: already stopping")
            return
        }
        guard !lateOpened else {
            warn("flows: SIGUSR1 ignored: the late flows are already open")
            return
        }
        lateOpened = true
        lateWaiting = config.lateTCP + config.lateUDP
        for _ in 0..<config.lateTCP { openTCP(late: true) }
        for _ in 0..<config.lateUDP { openUDP(late: true) }
        warn("flows: SIGUSR1: opened \(config.lateTCP) late tcp + \(config.lateUDP) late udp flows")
        if lateWaiting == 0 { writeLateFile() }
    }

    /// A late flow got its first echo or failed before it.
    private func lateSettled() {
        lateWaiting -= 1
        if lateWaiting == 0 { writeLateFile() }
    }

    private func writeLateFile() {
        guard !lateFileWritten else { return }
        lateFileWritten = true
        let late = flows.filter { $0.late }
        let ready = late.filter { $0.gotFirstEcho && !$0.failed }.count
        warn("flows: late flows settled: \(ready) of \(late.count) echoing")
        guard let path = config.readyFile else { return }
        let text = "late tcp=\(config.lateTCP) udp=\(config.lateUDP) ready=\(ready) failed=\(late.count - ready)\n"
        if let error = writeTextFile(path + ".late", text) {
            warn("flows: cannot write \(path).late: \(error)")
        }
    }

    /// SIGTERM/SIGINT or --duration: stop sending, drain for up to 2 s, then finish.
    func stop(reason: String) {
        switch phase {
        case .establishing:
            establishError = "stopped (\(reason)) before the initial flows were established"
            finish()
        case .running:
            phase = .draining
            stopAt = .now()
            sendTask?.cancel()
            durationTask?.cancel()
            warn("flows: \(reason): stopped sending, waiting up to \(seconds(Self.drainTime)) s for outstanding echoes")
            drainTask = loop.assumeIsolated().scheduleTask(in: Self.drainTime) { [self] in finish() }
            finishIfDrained()
        case .draining, .finished:
            break
        }
    }

    private func finishIfDrained() {
        if flows.allSatisfy({ $0.failed || ($0.establishedAt != nil && $0.outstanding == 0) }) { finish() }
    }

    private func finish() {
        guard phase != .finished else { return }
        phase = .finished
        for task in [sendTask, houseTask, connectTask, durationTask, drainTask] { task?.cancel() }
        let now = NIODeadline.now()
        let end = stopAt ?? now
        for flow in flows where !flow.failed {
            if flow.establishedAt == nil || (establishError != nil && !flow.gotFirstEcho) {
                flow.fail("not established" + (flow.lastError.map { " (last error: \($0))" } ?? ""), now: now)
            } else if flow.outstanding > 0 {
                let ms = millis((now - flow.lastEcho).nanoseconds)
                flow.fail("\(flow.outstanding) message(s) never echoed (no echo in the last \(ms) ms)"
                          + (flow.lastError.map { ", last error: \($0)" } ?? ""), now: now)
            } else if !flow.gotFirstEcho {
                flow.fail("no echo received", now: now)
            } else {
                flow.noteGap(until: end)
            }
        }
        closing = true
        for flow in flows { flow.closeChannel() }
        done.succeed(makeReport(end: end))
    }

    private func makeReport(end: NIODeadline) -> FlowsReport {
        var report = FlowsReport()
        var endpoints: [String: Int] = [:]
        for flow in flows {
            if flow.isTCP {
                report.tcpTotal += 1
                if !flow.failed { report.tcpSurvived += 1 }
                report.longestStallTCP = max(report.longestStallTCP, flow.maxGap)
            } else {
                report.udpTotal += 1
                if !flow.failed { report.udpSurvived += 1 }
                report.longestStallUDP = max(report.longestStallUDP, flow.maxGap)
                if let name = (flow as? UDPFlow)?.endpoint { endpoints[name, default: 0] += 1 }
            }
            if flow.late {
                if flow.isTCP { report.lateTCP += 1 } else { report.lateUDP += 1 }
                if !flow.failed { report.lateSurvived += 1 }
                if flow.gotFirstEcho { report.lateFirstEcho = max(report.lateFirstEcho, flow.firstEchoDelay) }
            }
        }
        report.longestStall = max(report.longestStallTCP, report.longestStallUDP)
        for (i, flow) in flows.enumerated() {
            for st in flow.stalls {
                report.stalls.append(.init(flow: i, tcp: flow.isTCP, startUnixMs: unixMs(st.from), endUnixMs: unixMs(st.to)))
            }
        }
        if report.stalls.count > FlowsReport.maxStalls {
            report.stalls.sort { ($0.endUnixMs - $0.startUnixMs) > ($1.endUnixMs - $1.startUnixMs) }
            report.stalls.removeLast(report.stalls.count - FlowsReport.maxStalls)
        }
        report.startedAtUnixMs = unixMs(startedAt)
        report.readyAtUnixMs = readyAt.map(unixMs)
        report.endedAtUnixMs = unixMs(end)
        report.messages = messages
        report.bytes = bytes
        report.udpResends = udpResends
        report.udpDuplicates = udpDuplicates
        report.loopLag = loopLag
        if let readyAt {
            let due = Double(((stopAt ?? end) - readyAt).nanoseconds) / Double(slotSpacing.nanoseconds)
            report.sendRate = due >= 1 ? min(100, Double(ticksRun) / due.rounded(.down) * 100) : 100
        }
        report.loopCPU = (threadCPUSeconds() - startCPU) / max(Double((NIODeadline.now() - startedAt).nanoseconds) / 1e9, 1e-3) * 100
        report.failures = failures
        report.udpEndpoints = endpoints.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        report.durationS = Double((end - startedAt).nanoseconds) / 1e9
        report.error = establishError
        return report
    }
}

// MARK: - Helpers

/// An error as a short string: an IOError's text without the call it came from.
func describe(_ error: Error) -> String {
    if let io = error as? IOError {
        return String(cString: strerror(io.errnoCode))
    }
    if let channel = error as? ChannelError {
        switch channel {
        case .connectTimeout: return "connect timed out"
        case .ioOnClosedChannel: return "I/O on a closed channel"
        case .eof: return "end of file"
        default: return "\(channel)"
        }
    }
    return "\(error)"
}

func seconds(_ amount: TimeAmount) -> String {
    formatFixed(Double(amount.nanoseconds) / 1e9, decimals: 3)
}

func millis(_ nanoseconds: Int64) -> String {
    formatFixed(Double(nanoseconds) / 1e6, decimals: 1)
}

/// A non-negative-or-negative number with a fixed number of decimals, no exponent.
func formatFixed(_ x: Double, decimals: Int) -> String {
    guard x.isFinite else { return "0" }
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let scaled = Int64((abs(x) * scale).rounded())
    let whole = scaled / Int64(scale)
    var frac = String(scaled % Int64(scale))
    while frac.count < decimals { frac = "0" + frac }
    let sign = x < 0 && scaled != 0 ? "-" : ""
    return decimals == 0 ? "\(sign)\(whole)" : "\(sign)\(whole).\(frac)"
}

/// Writes a file atomically (temporary file + rename). Returns an error text or nil.
func writeTextFile(_ path: String, _ text: String) -> String? {
    let tmp = path + ".tmp\(getpid())"
    let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { return String(cString: strerror(errno)) }
    let bytes = Array(text.utf8)
    let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    let writeErrno = errno
    close(fd)
    guard n == bytes.count else {
        unlink(tmp)
        return n < 0 ? String(cString: strerror(writeErrno)) : "short write"
    }
    guard rename(tmp, path) == 0 else {
        let e = String(cString: strerror(errno))
        unlink(tmp)
        return e
    }
    return nil
}

/// CPU seconds (user + system) used by the calling thread so far.
func threadCPUSeconds() -> Double {
    var ts = timespec()
    guard clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0 else { return 0 }
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
