import Foundation
import Logging
import Testing
import TandemCore
import TandemReplication
import TandemSync

/// The bulk-transfer TCP server against clients that connect and never send (review defect b).
/// Loopback only.
@Suite(.serialized, .timeLimit(.minutes(1))) struct BulkServerTests {
    struct NoDatapath: ReplicationDatapath {
        func installReplicated(_ records: [FlowRecord]) -> Int { 0 }
        func removeReplicated(_ keys: [FlowTuple]) {}
    }

    /// A TCP connection to 127.0.0.1:port; the file descriptor.
    static func connect(port: UInt16) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EMFILE) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { close(fd); throw POSIXError(.ECONNREFUSED) }
        return fd
    }

    /// Seconds until the server closed `fd` (read returned 0 or an error), or nil within `limit`.
    static func secondsUntilClosed(_ fd: Int32, limit: Double) -> Double? {
        let start = Date()
        var tv = timeval(tv_sec: 0, tv_usec: 50_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var byte: UInt8 = 0
        while Date().timeIntervalSince(start) < limit {
            let n = recv(fd, &byte, 1, 0)
            if n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) { return Date().timeIntervalSince(start) }
        }
        return nil
    }

    func startShell(maxConnections: Int, requestTimeout: Int64) async throws -> ReplicationShell {
        let key = try #require(ClusterKey(bytes: (0..<32).map { _ in UInt8.random(in: 0...255) }))
        for _ in 0..<20 {
            let port = UInt16.random(in: 20_000...60_000)
            var config = ReplicationShellConfig(selfID: 0x7f00_0001, bindAddress: IPv4Address(127, 0, 0, 1), port: port,
                                                peers: [ReplicationPeer(id: 0x7f00_0002, address: IPv4Address(127, 0, 0, 1),
                                                                        port: port &+ 1)], key: key)
            config.maxBulkConnections = maxConnections
            config.bulkRequestTimeout = .milliseconds(requestTimeout)
            let shell = ReplicationShell(config: config, datapath: NoDatapath(), logger: Logger(label: "test"))
            do {
                try await shell.start()
                return shell
            } catch {
                await shell.stop()
            }
        }
        throw POSIXError(.EADDRINUSE)
    }

    @Test func silentClientsAreClosedAndConnectionsAreCapped() async throws {
        let shell = try await startShell(maxConnections: 3, requestTimeout: 300)
        var fds: [Int32] = []
        defer { for fd in fds { close(fd) } }
        for _ in 0..<5 { fds.append(try Self.connect(port: shell.config.port)) }
        let closedAfter = fds.map { Self.secondsUntilClosed($0, limit: 3) }
        // Every one is closed: two at once (over the cap), three after the request timeout.
        #expect(closedAfter.allSatisfy { $0 != nil }, "\(closedAfter)")
        let times = closedAfter.compactMap { $0 }
        #expect(times.filter { $0 < 0.25 }.count >= 2, "\(times)")
        var stats = shell.bulkServerStats
        for _ in 0..<20 where stats.open != 0 {
            try await Task.sleep(for: .milliseconds(50))
            stats = shell.bulkServerStats
        }
        #expect(stats.refusedOverCap == 2)
        #expect(stats.closedWithoutRequest == 3)
        #expect(stats.open == 0)
        // Once they are gone, a new client is admitted again (and closed in turn for its silence).
        let again = try Self.connect(port: shell.config.port)
        fds.append(again)
        let t = try #require(Self.secondsUntilClosed(again, limit: 3))
        #expect(t >= 0.2, "admitted, then closed after the request timeout: \(t)")
        await shell.stop()
    }
}
