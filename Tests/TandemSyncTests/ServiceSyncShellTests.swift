import Foundation
import Logging
import Testing
import TandemCore
import TandemServiceSync
import TandemSync
import TandemSyncWire

/// The config-channel server against strangers that connect and say nothing. Loopback only.
@Suite(.serialized, .timeLimit(.minutes(1))) struct ServiceSyncShellTests {
    struct EmptyTable: ServiceSyncTarget {
        func serviceSyncDigest() async -> ServiceDigest { ServiceDigest(count: 0, digest: 0, maxVersion: 0) }
        func serviceSyncRecords() async -> [ServiceRecord] { [] }
        func serviceSyncMerge(_ records: [ServiceRecord], peerMaxVersion: UInt64, from peer: UInt32) async {}
    }

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
    /// Data the server sends first (its digest frame) is read and ignored.
    static func secondsUntilClosed(_ fd: Int32, limit: Double) -> Double? {
        let start = Date()
        var tv = timeval(tv_sec: 0, tv_usec: 20_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var buf = [UInt8](repeating: 0, count: 256)
        while Date().timeIntervalSince(start) < limit {
            let n = recv(fd, &buf, buf.count, 0)
            if n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) { return Date().timeIntervalSince(start) }
        }
        return nil
    }

    @Test func silentStrangersAreCappedAndTimedOut() async throws {
        let key = try #require(ClusterKey(bytes: (0..<32).map { _ in UInt8.random(in: 0...255) }))
        var started: (ServiceSyncShell, UInt16)?
        for _ in 0..<20 where started == nil {
            let port = UInt16.random(in: 20_000...60_000)
            var config = ServiceSyncShellConfig(selfID: 0x7f00_0001, bindAddress: IPv4Address(127, 0, 0, 1), port: port,
                                                peers: [], key: key)
            config.maxServedConnections = 2
            config.exchangeTimeout = .milliseconds(300)
            config.interval = .seconds(3600)
            let shell = ServiceSyncShell(config: config, target: EmptyTable(), logger: Logger(label: "test"))
            do {
                try await shell.start()
                started = (shell, port)
            } catch {
                await shell.stop()
            }
        }
        let (shell, port) = try #require(started)
        var fds: [Int32] = []
        defer { for fd in fds { close(fd) } }
        for _ in 0..<2 { fds.append(try Self.connect(port: port)) }
        try await Task.sleep(for: .milliseconds(100))  // both admitted before the next two arrive
        for _ in 0..<2 { fds.append(try Self.connect(port: port)) }
        // The last two are over the cap: closed at once (measured first, while the first two are
        // still being served); the first two after the exchange timeout.
        let overCap = [fds[2], fds[3]].map { Self.secondsUntilClosed($0, limit: 3) }
        let served = [fds[0], fds[1]].map { Self.secondsUntilClosed($0, limit: 3) }
        #expect(overCap.allSatisfy { $0.map { $0 < 0.15 } == true }, "over the cap: \(overCap)")
        #expect(served.allSatisfy { $0 != nil }, "served: \(served)")
        let status = shell.status(selfDigest: ServiceDigest(count: 0, digest: 0, maxVersion: 0), tombstones: 0,
                                  counters: ServiceSyncCounters(), refused: 0)
        #expect(status.dropped["connectionsOverCap"] == 2, "\(status.dropped)")
        await shell.stop()
        await shell.stop()  // idempotent
    }
}
