import Foundation
import TandemTestSupport
import Logging
import Testing
import TandemCore
import TandemReplication
import TandemSync
import TandemSyncWire
import TandemSealing

/// The bulk-transfer TCP server against clients that connect and never send (review defect b).
/// Loopback only.
@Suite(.serialized, .timeLimit(.minutes(1))) struct BulkServerTests {
    struct NoDatapath: ReplicationDatapath {
        typealias Entry = SyncEntry
        func installReplicated(_ records: [FlowRecord]) -> Int { 0 }
        func removeReplicated(_ keys: [FlowTuple]) {}
    }

    func startShell(maxConnections: Int, requestTimeout: Int64) async throws -> FlowReplicationShell {
        let key = try #require(ClusterKey(bytes: (0..<32).map { _ in UInt8.random(in: 0...255) }))
        for _ in 0..<20 {
            let port = UInt16.random(in: 20_000...60_000)
            var config = ReplicationShellConfig(selfID: 0x7f00_0001, bindAddress: IPv4Address(127, 0, 0, 1), port: port,
                                                peers: [ReplicationPeer(id: 0x7f00_0002, address: IPv4Address(127, 0, 0, 1),
                                                                        port: port &+ 1)], key: key)
            config.maxBulkConnections = maxConnections
            config.bulkRequestTimeout = .milliseconds(requestTimeout)
            let shell = FlowReplicationShell(config: config, datapath: NoDatapath(), logger: Logger(label: "test"))
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
        // A request timeout long enough that the admitted three are still open when the last two
        // arrive, however loaded the machine (the unit tests run in parallel); the checks are on
        // order and counters, not on tight timings.
        let shell = try await startShell(maxConnections: 3, requestTimeout: 2000)
        var fds: [Int32] = []
        defer { for fd in fds { close(fd) } }
        for _ in 0..<5 { fds.append(try LoopbackClient.connect(port: shell.config.port)) }
        // The two over the cap are closed at once, while the three admitted are still open.
        var overCap: [Double?] = []
        for fd in fds[3...] { overCap.append(await LoopbackClient.waitSecondsUntilClosed(fd, limit: 5)) }
        #expect(overCap.allSatisfy { $0.map { $0 < 1.5 } == true }, "over the cap: \(overCap)")
        #expect(shell.bulkServerStats.open == 3)
        // The admitted ones are closed for their silence, after the request timeout.
        var admitted: [Double?] = []
        for fd in fds[..<3] { admitted.append(await LoopbackClient.waitSecondsUntilClosed(fd, limit: 10)) }
        #expect(admitted.allSatisfy { $0 != nil }, "admitted: \(admitted)")
        var stats = shell.bulkServerStats
        for _ in 0..<40 where stats.open != 0 {
            try await Task.sleep(for: .milliseconds(50))
            stats = shell.bulkServerStats
        }
        #expect(stats.refusedOverCap == 2)
        #expect(stats.closedWithoutRequest == 3)
        #expect(stats.open == 0)
        // Once they are gone, a new client is admitted again (and closed in turn for its silence).
        let again = try LoopbackClient.connect(port: shell.config.port)
        fds.append(again)
        try await Task.sleep(for: .milliseconds(200))
        #expect(shell.bulkServerStats.open == 1, "admitted again")
        #expect(await LoopbackClient.waitSecondsUntilClosed(again, limit: 10) != nil)
        await shell.stop()
    }
}
