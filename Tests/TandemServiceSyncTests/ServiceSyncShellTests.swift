import Foundation
import TandemTestSupport
import Logging
import Testing
import TandemCore
import TandemServiceSync
import TandemSync
import TandemSyncWire
import TandemSealing
import TandemStatus

/// The config-channel server against strangers that connect and say nothing. Loopback only.
@Suite(.serialized, .timeLimit(.minutes(1))) struct ServiceSyncShellTests {
    struct EmptyTable: ServiceSyncTarget {
        func serviceSyncDigest() async -> ServiceDigest { ServiceDigest(count: 0, digest: 0, maxVersion: 0) }
        func serviceSyncRecords() async -> [ServiceRecord] { [] }
        func serviceSyncMerge(_ records: [ServiceRecord], peerMaxVersion: UInt64, from peer: UInt32) async {}
    }

    @Test func silentStrangersAreCappedAndTimedOut() async throws {
        let key = try #require(ClusterKey(bytes: (0..<32).map { _ in UInt8.random(in: 0...255) }))
        var started: (ServiceSyncShell, UInt16)?
        for _ in 0..<20 where started == nil {
            let port = UInt16.random(in: 20_000...60_000)
            var config = ServiceSyncShellConfig(selfID: 0x7f00_0001, bindAddress: IPv4Address(127, 0, 0, 1), port: port,
                                                peers: [], key: key)
            config.maxServedConnections = 2
            config.exchangeTimeout = .seconds(2)
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
        for _ in 0..<4 { fds.append(try LoopbackClient.connect(port: port)) }
        // An admitted connection is sent this node's digest first; one over the cap is closed
        // without a byte. So: the last two get EOF with nothing, the first two a frame, then EOF
        // after the exchange timeout. Order and bytes, not timings (the unit tests run in parallel).
        var bytes: [Int?] = []
        for fd in fds { bytes.append(await LoopbackClient.waitBytesUntilClosed(fd, limit: 10)) }
        #expect(bytes[0].map { $0 >= SyncWire.headerSize } == true && bytes[1].map { $0 >= SyncWire.headerSize } == true,
                "admitted: \(bytes)")
        #expect(bytes[2] == 0 && bytes[3] == 0, "over the cap: \(bytes)")
        let status = shell.status(selfDigest: ServiceDigest(count: 0, digest: 0, maxVersion: 0), tombstones: 0,
                                  counters: ServiceSyncCounters(), refused: 0)
        #expect(status.dropped["connectionsOverCap"] == 2, "\(status.dropped)")
        await shell.stop()
        await shell.stop()  // idempotent
    }
}
