import Foundation
import Logging
import Testing
import TandemCore
import TandemServiceSync
import TandemSync
import TandemSyncWire
import TandemSealing
import TandemStatus

/// Two config-channel shells on loopback (127.0.0.1 and 127.0.0.2, one port) exchanging verdict
/// sets (proto/SPEC.md §14.5): a change is pushed at once, both ways, whole.
@Suite(.serialized, .timeLimit(.minutes(1))) struct VerdictExchangeTests {
    /// A node that publishes a set it is given and records every set it receives.
    actor Node: ServiceSyncTarget {
        var mine = VerdictSet(generation: 1, services: [], hosts: [])
        var received: [(peer: UInt32, set: VerdictSet)] = []

        func set(_ s: VerdictSet) { mine = s }
        func latest(from peer: UInt32) -> VerdictSet? { received.last { $0.peer == peer }?.set }

        func serviceSyncDigest() async -> ServiceDigest { ServiceDigest(count: 0, digest: 0, maxVersion: 0) }
        func serviceSyncRecords() async -> [ServiceRecord] { [] }
        func serviceSyncMerge(_ records: [ServiceRecord], peerMaxVersion: UInt64, from peer: UInt32) async {}
        func serviceSyncVerdicts() async -> VerdictSet { mine }
        func serviceSyncReceive(_ verdicts: VerdictSet, from peer: UInt32, epoch: UInt64) async {
            received.append((peer, verdicts))
        }
    }

    static func bigSet(generation: UInt64) -> VerdictSet {
        // More than one frame's worth: every endpoint of 100 services down.
        VerdictSet(generation: generation, services: (0..<100).map { i in
            ServiceVerdict(key: ServiceKey(vip: IPv4Address(UInt32(0xc633_6400 + i)), port: 80, proto: .tcp),
                           down: (0..<64).map { DownEndpoint(address: IPv4Address(UInt32(0x0a00_0001 + $0)), port: 80,
                                                             reasons: [.probe], sinceMicros: generation) })
        }, hosts: [HostVerdict(host: IPv4Address(10, 0, 0, 1), state: .red, version: generation, origin: 0x7f00_0001)])
    }

    func waitFor(_ seconds: Double, _ check: () async -> Bool) async -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if await check() { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return false
    }

    @Test func aChangedSetReachesThePeerAtOnceInParts() async throws {
        let key = try #require(ClusterKey(bytes: (0..<32).map { _ in UInt8.random(in: 0...255) }))
        let a = Node(), b = Node()
        let idA: UInt32 = 0x7f00_0001, idB: UInt32 = 0x7f00_0002
        var shells: [ServiceSyncShell] = []
        for _ in 0..<20 where shells.isEmpty {
            let port = UInt16.random(in: 20_000...60_000)
            func config(_ id: UInt32, _ peer: UInt32) -> ServiceSyncShellConfig {
                var c = ServiceSyncShellConfig(selfID: id, bindAddress: IPv4Address(id), port: port,
                                               peers: [ServiceSyncPeer(id: peer, address: IPv4Address(peer))], key: key)
                // No periodic rounds: only the start and changed() exchange.
                c.interval = .seconds(3600)
                return c
            }
            let sa = ServiceSyncShell(config: config(idA, idB), target: a, logger: Logger(label: "a"))
            let sb = ServiceSyncShell(config: config(idB, idA), target: b, logger: Logger(label: "b"))
            do {
                try await sa.start()
                try await sb.start()
                shells = [sa, sb]
            } catch {
                await sa.stop()
                await sb.stop()
            }
        }
        try #require(shells.count == 2)
        let (sa, sb) = (shells[0], shells[1])
        // The start-up rounds carry each side's initial set to the other.
        #expect(await waitFor(10) {
            let atB = await b.latest(from: idA)
            let atA = await a.latest(from: idB)
            return atB != nil && atA != nil
        })

        let big = Self.bigSet(generation: 1_000)
        #expect(big.parts().count == 2)
        await a.set(big)
        sa.changed()
        #expect(await waitFor(10) { await b.latest(from: idA) == big }, "the whole set, reassembled")
        // The exchange is symmetric: a's round also brought b's set back.
        #expect(await a.latest(from: idB) == VerdictSet(generation: 1, services: [], hosts: []))

        let status = sa.status(selfDigest: ServiceDigest(count: 0, digest: 0, maxVersion: 0), tombstones: 0,
                               counters: ServiceSyncCounters(), refused: 0)
        #expect(status.dropped.isEmpty, "\(status.dropped)")
        await sa.stop()
        await sb.stop()
    }
}
