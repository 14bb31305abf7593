import Foundation
import Logging
import NIOConcurrencyHelpers
import Testing
import TandemCore
import TandemReplication
import TandemShellSupport
import TandemSync
import TandemSyncWire
import TandemSealing

/// Local changes sent from the submitting thread (the direct path of `submit(changes:)`), between
/// two shells on loopback: they reach the peer's datapath, in order with deletes, and changes
/// submitted before start wait on the loop and go out once it runs.
@Suite(.serialized, .timeLimit(.minutes(1))) struct DirectSubmitTests {
    final class Recorder: ReplicationDatapath, @unchecked Sendable {
        typealias Entry = SyncEntry
        private let box = NIOLockedValueBox<(installed: [FlowTuple: FlowRecord], removed: Set<FlowTuple>)>(([:], []))
        func installReplicated(_ records: [FlowRecord]) -> Int {
            box.withLockedValue { s in for r in records { s.installed[r.key] = r; s.removed.remove(r.key) } }
            return 0
        }
        func removeReplicated(_ keys: [FlowTuple]) {
            box.withLockedValue { s in for k in keys { s.installed[k] = nil; s.removed.insert(k) } }
        }
        var installed: [FlowTuple: FlowRecord] { box.withLockedValue { $0.installed } }
        var removed: Set<FlowTuple> { box.withLockedValue { $0.removed } }
    }

    static func record(_ i: Int) -> FlowRecord {
        let key = FlowTuple(source: IPv4Address(10, 9, UInt8(i >> 8 & 0xff), UInt8(i & 0xff)), destination: IPv4Address(10, 0, 0, 1),
                            sourcePort: UInt16(20_000 + i % 40_000), destinationPort: 80, proto: 6)
        let xlate = FlowTuple(source: IPv4Address(10, 0, 0, 2), destination: IPv4Address(10, 1, 0, 5),
                              sourcePort: UInt16(30_000 + i % 30_000), destinationPort: 8080, proto: 6)
        return FlowRecord(key: key, translated: xlate, natMode: .fullnat, state: .established, flags: [],
                          endpointIndex: 0, ageMilliseconds: 10, remainingMilliseconds: 600_000)
    }

    /// Two shells on 127.0.0.1 at ports p and p+1, each the other's peer (not started).
    static func pair() throws -> (a: FlowReplicationShell, b: FlowReplicationShell, bTarget: Recorder) {
        let key = try #require(ClusterKey(bytes: (0..<32).map { _ in UInt8.random(in: 0...255) }))
        let port = UInt16.random(in: 20_000...60_000)
        let lo = IPv4Address(127, 0, 0, 1)
        let a = FlowReplicationShell(
            config: ReplicationShellConfig(selfID: 1, bindAddress: lo, port: port,
                                           peers: [ReplicationPeer(id: 2, address: lo, port: port &+ 1)], key: key),
            datapath: Recorder(), logger: Logger(label: "a"))
        let target = Recorder()
        let b = FlowReplicationShell(
            config: ReplicationShellConfig(selfID: 2, bindAddress: lo, port: port &+ 1,
                                           peers: [ReplicationPeer(id: 1, address: lo, port: port)], key: key),
            datapath: target, logger: Logger(label: "b"))
        return (a, b, target)
    }

    /// Submits from a thread of its own, as the ring-buffer reader does.
    static func submitOnThread(_ shell: FlowReplicationShell, _ changes: [(record: FlowRecord, deleted: Bool)]) async {
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            let t = Thread {
                shell.submit(changes: changes)
                done.resume()
            }
            t.start()
        }
    }

    static func wait(seconds: Double, until condition: () -> Bool) async throws -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            try await Task.sleep(for: .milliseconds(20))
        }
        return condition()
    }

    @Test func localChangesReachThePeerFromTheSubmittingThread() async throws {
        let (a, b, target) = try Self.pair()
        try await b.start()
        try await a.start()
        // More than one submit slice, so the lock is let go and taken again in between.
        let records = (0..<2_500).map(Self.record)
        await Self.submitOnThread(a, records.map { ($0, false) })
        // Sent before submit returned, from that thread: not queued for the loop.
        #expect(a.datagramsSentDirectly > 0)
        let all = try await Self.wait(seconds: 10) { target.installed.count == records.count }
        #expect(all, "peer holds \(target.installed.count) of \(records.count)")
        let seven = try #require(target.installed[records[7].key])
        #expect(seven.translated == records[7].translated && seven.state == .established && seven.flags.contains(.fromPeer))
        // Deletes follow the same path, after the upserts they delete.
        let gone = records.prefix(100)
        await Self.submitOnThread(a, gone.map { ($0, true) })
        let deleted = try await Self.wait(seconds: 10) { Set(gone.map(\.key)).isSubset(of: target.removed) }
        #expect(deleted)
        #expect(target.installed.count == records.count - gone.count)
        let status = try #require(await a.status())
        #expect(status.datagramsSent > 0)
        #expect(status.sendErrors == 0)
        await a.stop()
        await b.stop()
        // After stop, a submit is dropped without touching the closed loop.
        a.submit(changes: [(Self.record(9_999), false)])
    }

    @Test func changesSubmittedBeforeStartGoOutOnceStarted() async throws {
        let (a, b, target) = try Self.pair()
        let records = (0..<50).map(Self.record)
        await Self.submitOnThread(a, records.map { ($0, false) })
        #expect(a.datagramsSentDirectly == 0)
        try await b.start()
        try await a.start()
        let all = try await Self.wait(seconds: 10) { target.installed.count == records.count }
        #expect(all, "peer holds \(target.installed.count) of \(records.count)")
        await a.stop()
        await b.stop()
    }
}

/// The plain UDP socket of the direct path.
@Suite struct DirectDatagramSenderTests {
    @Test func sendsToALoopbackSocketAndRefusesAForeignBindAddress() throws {
        // 192.0.2.1 (TEST-NET-1) is on no interface here: the bind fails and the caller keeps its loop.
        #expect(DirectDatagramSender(bindAddress: IPv4Address(192, 0, 2, 1)) == nil)
        let sender = try #require(DirectDatagramSender(bindAddress: IPv4Address(127, 0, 0, 1)))
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        #expect(fd >= 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr = in_addr(s_addr: IPv4Address(127, 0, 0, 1).value.bigEndian)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { p -> Int32 in
                guard bind(fd, p, len) == 0 else { return -1 }
                return getsockname(fd, p, &len)
            }
        }
        #expect(bound == 0)
        let peer = DirectDatagramSender.peer(id: 1, address: IPv4Address(127, 0, 0, 1), port: UInt16(bigEndian: addr.sin_port))
        #expect(sender.send([1, 2, 3, 4], to: peer) == 0)
        var buf = [UInt8](repeating: 0, count: 16)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        #expect(n == 4)
        #expect(Array(buf.prefix(4)) == [1, 2, 3, 4])
        // Larger than any UDP datagram: refused with an errno, nothing sent, no crash.
        #expect(sender.send([UInt8](repeating: 0, count: 70_000), to: peer) == EMSGSIZE)
    }
}
