import Logging
import NIOCore
import TandemCore

/// A UDP socket that stays bound for the life of its shell. NIO closes a datagram channel after
/// some send errors (a local firewall's EPERM, for one); the gossip and the replication shells
/// must not go deaf and mute over it, so a closed channel is bound again at once, and every
/// 100 ms while the bind keeps failing.
///
/// Loop-confined: after `start`, every method runs on `loop` (asserted), which is why the class
/// can be `@unchecked Sendable`. The channel's handler reports the close through `closed(_:)`.
public final class RebindingDatagramSocket: @unchecked Sendable {
    /// Makes and binds a new channel (the shell's bootstrap with its options and handler).
    public typealias Bind = @Sendable () -> EventLoopFuture<Channel>

    private let name: String
    private let loop: EventLoop
    private let logger: Logger
    private let bind: Bind
    private let retryDelay: TimeAmount
    private var warnings = WarningLimiter()
    private var stopped = false
    private var current: Channel?
    private var rebindCount: UInt64 = 0

    /// `name` goes into the log lines ("gossip", "sync").
    public init(name: String, loop: EventLoop, logger: Logger, retryDelay: TimeAmount = .milliseconds(100),
                bind: @escaping Bind) {
        self.name = name
        self.loop = loop
        self.logger = logger
        self.retryDelay = retryDelay
        self.bind = bind
    }

    /// Binds the first channel; a failure here is the caller's (a port in use is a config error).
    public func start() async throws {
        let channel = try await bind().get()
        try await loop.submit { [self] in adopt(channel) }.get()
    }

    /// The bound channel, nil while a bind is in flight or after `stop`.
    public var channel: Channel? {
        loop.assertInEventLoop()
        return current
    }

    /// Channels bound again after NIO closed one.
    public var rebinds: UInt64 {
        loop.assertInEventLoop()
        return rebindCount
    }

    /// The handler saw `channel` go inactive. Ignored for an old channel or once stopped.
    public func closed(_ channel: Channel) {
        loop.assertInEventLoop()
        guard current === channel, !stopped else { return }
        current = nil
        rebindCount += 1
        if let held = warnings.admit(nowMillis: monotonicNanoseconds() / 1_000_000) {
            logger.warning("\(name) socket closed after a send error; binding it again",
                           metadata: ["rebinds": "\(rebindCount)", "heldBack": "\(held)"])
        }
        rebind()
    }

    /// No more rebinding; returns the channel for the caller to close.
    public func stop() -> Channel? {
        loop.assertInEventLoop()
        stopped = true
        defer { current = nil }
        return current
    }

    private func adopt(_ channel: Channel) {
        loop.assertInEventLoop()
        if stopped {
            channel.close(promise: nil)
            return
        }
        current = channel
        // Closed before it was adopted: its close went unheard, so bind again now.
        if !channel.isActive { closed(channel) }
    }

    private func rebind() {
        bind().hop(to: loop).whenComplete { [self] result in
            switch result {
            case .success(let channel):
                adopt(channel)
            case .failure(let error):
                logger.error("\(name) socket could not be bound again", metadata: ["error": "\(error)"])
                loop.scheduleTask(in: retryDelay) { [self] in
                    guard current == nil, !stopped else { return }
                    rebind()
                }
            }
        }
    }
}
