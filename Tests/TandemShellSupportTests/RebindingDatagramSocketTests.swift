import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing
@testable import TandemShellSupport

/// The socket on real loopback UDP channels: NIO closing a channel (as after a refused send)
/// must leave the shell with a bound one, and a stopped socket must stay closed.
@Suite struct RebindingDatagramSocketTests {
    /// Reports the close to the socket, as the shells' handlers do.
    final class CloseReporter: ChannelInboundHandler, Sendable {
        typealias InboundIn = AddressedEnvelope<ByteBuffer>
        let socket: NIOLockedValueBox<RebindingDatagramSocket?>
        init(_ socket: NIOLockedValueBox<RebindingDatagramSocket?>) { self.socket = socket }
        func channelInactive(context: ChannelHandlerContext) {
            socket.withLockedValue { $0 }?.closed(context.channel)
            context.fireChannelInactive()
        }
    }

    struct Fixture {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let box = NIOLockedValueBox<RebindingDatagramSocket?>(nil)
        let binds = NIOLockedValueBox(0)
        var loop: EventLoop { group.next() }

        /// `failFirst`: how many binds after the first one fail before one succeeds.
        func makeSocket(failFirst: Int = 0) -> RebindingDatagramSocket {
            let loop = group.next()
            let socket = RebindingDatagramSocket(name: "test", loop: loop, logger: Logger(label: "test"),
                                                 retryDelay: .milliseconds(5)) { [group, box, binds] in
                let n = binds.withLockedValue { n -> Int in n += 1; return n }
                if n > 1 && n <= 1 + failFirst {
                    return loop.makeFailedFuture(IOError(errnoCode: EADDRINUSE, reason: "bind"))
                }
                return DatagramBootstrap(group: group)
                    .channelInitializer { channel in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandler(CloseReporter(box))
                        }
                    }
                    .bind(host: "127.0.0.1", port: 0)
            }
            box.withLockedValue { $0 = socket }
            return socket
        }

        func channel(_ s: RebindingDatagramSocket) async throws -> Channel? {
            try await loop.submit { s.channel }.get()
        }

        /// Polls until the socket holds an active channel other than `old`, for at most 2 s.
        func waitForNewChannel(_ s: RebindingDatagramSocket, replacing old: Channel) async throws -> Channel? {
            for _ in 0..<200 {
                if let c = try await channel(s), c !== old, c.isActive { return c }
                try await Task.sleep(for: .milliseconds(10))
            }
            return nil
        }

        func shutdown() async { try? await group.shutdownGracefully() }
    }

    @Test func aClosedChannelIsBoundAgain() async throws {
        let f = Fixture()
        let socket = f.makeSocket()
        try await socket.start()
        let first = try #require(try await f.channel(socket))
        try await first.close()
        let second = try await f.waitForNewChannel(socket, replacing: first)
        #expect(second != nil)
        #expect(try await f.loop.submit { socket.rebinds }.get() == 1)
        try await f.loop.submit { socket.stop() }.get()?.close()
        await f.shutdown()
    }

    @Test func aFailingBindIsRetriedUntilItSucceeds() async throws {
        let f = Fixture()
        let socket = f.makeSocket(failFirst: 3)
        try await socket.start()
        let first = try #require(try await f.channel(socket))
        try await first.close()
        let second = try await f.waitForNewChannel(socket, replacing: first)
        #expect(second != nil)
        // The first bind, three refused ones, then the one that took.
        #expect(f.binds.withLockedValue { $0 } == 5)
        try await f.loop.submit { socket.stop() }.get()?.close()
        await f.shutdown()
    }

    @Test func aStoppedSocketIsNotBoundAgain() async throws {
        let f = Fixture()
        let socket = f.makeSocket()
        try await socket.start()
        let channel = try #require(try await f.loop.submit { socket.stop() }.get())
        try await channel.close()
        try await Task.sleep(for: .milliseconds(50))
        #expect(try await f.channel(socket) == nil)
        #expect(f.binds.withLockedValue { $0 } == 1)
        #expect(try await f.loop.submit { socket.rebinds }.get() == 0)
        await f.shutdown()
    }

    @Test func aCloseOfAnOldChannelIsIgnored() async throws {
        let f = Fixture()
        let socket = f.makeSocket()
        try await socket.start()
        let first = try #require(try await f.channel(socket))
        try await first.close()
        let second = try #require(try await f.waitForNewChannel(socket, replacing: first))
        // A late report about the first channel must not unbind the second.
        try await f.loop.submit { socket.closed(first) }.get()
        #expect(try await f.channel(socket) === second)
        #expect(try await f.loop.submit { socket.rebinds }.get() == 1)
        try await f.loop.submit { socket.stop() }.get()?.close()
        await f.shutdown()
    }
}
