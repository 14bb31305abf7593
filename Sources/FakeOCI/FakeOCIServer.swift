import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// The fake's HTTP/1.1 server (plain SwiftNIO, so it can see the raw request-target and drop
/// connections on purpose). Listens on loopback unless told otherwise.
public final class FakeOCIServer: Sendable {
    public let store: FakeOCIStore
    public let host: String
    public let port: Int
    let serverChannel: Channel
    let connections: NIOLockedValueBox<[ObjectIdentifier: Channel]>
    let serveTask: Task<Void, Never>

    public var baseURL: String { "http://\(host):\(port)" }
    /// IMDS base URL for one instance of the seed.
    public func imdsURL(instance: String) -> String { "\(baseURL)/imds/\(instance)" }

    init(store: FakeOCIStore, host: String, port: Int, serverChannel: Channel,
         connections: NIOLockedValueBox<[ObjectIdentifier: Channel]>, serveTask: Task<Void, Never>) {
        self.store = store
        self.host = host
        self.port = port
        self.serverChannel = serverChannel
        self.connections = connections
        self.serveTask = serveTask
    }

    /// Binds (port 0 = ephemeral) and starts serving.
    public static func start(store: FakeOCIStore, host: String = "127.0.0.1", port: Int = 0,
                             group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> FakeOCIServer {
        let server = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .bind(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(wrappingChannelSynchronously: channel)
                }
            }
        let boundPort = server.channel.localAddress?.port ?? port
        let connections = NIOLockedValueBox<[ObjectIdentifier: Channel]>([:])
        let task = Task<Void, Never> {
            _ = try? await server.executeThenClose { inbound in
                await withDiscardingTaskGroup { group in
                    do {
                        for try await connection in inbound {
                            let id = ObjectIdentifier(connection.channel)
                            connections.withLockedValue { $0[id] = connection.channel }
                            group.addTask {
                                await serve(connection, store: store)
                                connections.withLockedValue { _ = $0.removeValue(forKey: id) }
                            }
                        }
                    } catch {
                        // The listening socket closed: stop accepting.
                    }
                }
            }
        }
        return FakeOCIServer(store: store, host: host, port: boundPort, serverChannel: server.channel,
                             connections: connections, serveTask: task)
    }

    /// Closes the listener and every open connection, then waits for the handlers to finish.
    public func stop() async {
        try? await serverChannel.close()
        for channel in connections.withLockedValue({ Array($0.values) }) { try? await channel.close() }
        await serveTask.value
    }

    static func serve(_ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, store: FakeOCIStore) async {
        try? await connection.executeThenClose { inbound, outbound in
            var head: HTTPRequestHead?
            var body: [UInt8] = []
            for try await part in inbound {
                switch part {
                case .head(let h):
                    head = h
                    body = []
                case .body(let buffer):
                    body += buffer.readableBytesView
                case .end:
                    guard let h = head else { continue }
                    var headers: [String: String] = [:]
                    for (name, value) in h.headers {
                        let key = name.lowercased()
                        headers[key] = headers[key].map { "\($0), \(value)" } ?? value
                    }
                    let reply = await store.handle(FakeRequest(method: h.method.rawValue, target: h.uri, headers: headers, body: body))
                    if reply.drop { return }
                    if let delay = reply.delay { try await Task.sleep(for: delay) }
                    var responseHead = HTTPResponseHead(version: h.version, status: HTTPResponseStatus(statusCode: reply.status))
                    for (name, value) in reply.headers { responseHead.headers.add(name: name, value: value) }
                    responseHead.headers.replaceOrAdd(name: "content-length", value: String(reply.body.count))
                    try await outbound.write(.head(responseHead))
                    if !reply.body.isEmpty {
                        try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: reply.body))))
                    }
                    try await outbound.write(.end(nil))
                    head = nil
                }
            }
        }
    }
}
