import Foundation
import Testing
import TandemStatus

/// The status values are what `GET /netlox/v1/sync`, `.../cluster/services` and the CLI exchange:
/// a CLI must read the JSON of a node one release older (fields added since are optional) and the
/// summaries it prints from them must be right.
@Suite struct StatusTests {
    @Test func digestsArePaddedToSixteenHexDigits() {
        #expect(digestHex(0) == "0000000000000000")
        #expect(digestHex(0xabc) == "0000000000000abc")
        #expect(digestHex(UInt64.max) == "ffffffffffffffff")
    }

    @Test func allAgreeOnlyWhenEveryPeerSaidSo() {
        func status(_ agrees: [Bool?]) -> ServiceSyncStatus {
            ServiceSyncStatus(node: 1, services: 3, digest: digestHex(7), tombstones: 0,
                              peers: agrees.enumerated().map { .init(node: UInt32($0.offset + 2), address: "10.0.0.\($0.offset + 2)", agrees: $0.element) },
                              counters: ServiceSyncCounters(), dropped: [:], refused: 0)
        }
        #expect(status([true, true]).allAgree)
        #expect(!status([true, false]).allAgree)
        // A peer not yet heard from is not agreement.
        #expect(!status([true, nil]).allAgree)
        #expect(status([]).allAgree)
    }

    @Test func replicationStatusRoundTripsThroughJSON() throws {
        let s = ReplicationStatus(nodeID: 1, epoch: 42, inSync: true, entries: 10, liveEntries: 9, nextSequence: 100,
                                  retransmitWindow: 5,
                                  peers: [.init(id: 2, address: "10.0.0.2", inSync: true, lastHeardMillisecondsAgo: 12,
                                                streamCumulative: 99, streamHasGap: false)],
                                  counters: ReplicationCounters(), dropped: ["authFailed": 3], datagramsSent: 7,
                                  datagramsReceived: 8, bytesSent: 900, installFailures: 0, lagP50Micros: 150,
                                  lagP99Micros: 400, lagMaxMicros: 900, socketRebinds: 1)
        let back = try JSONDecoder().decode(ReplicationStatus.self, from: JSONEncoder().encode(s))
        #expect(back == s)
    }

    @Test func aStatusWithoutTheNewerOptionalFieldsStillDecodes() throws {
        // An older node's answer: no socketRebinds.
        let s = ReplicationStatus(nodeID: 1, epoch: 42, inSync: false, entries: 0, liveEntries: 0, nextSequence: 1,
                                  retransmitWindow: 0, peers: [], counters: ReplicationCounters(), dropped: [:],
                                  datagramsSent: 0, datagramsReceived: 0, bytesSent: 0, installFailures: 0,
                                  lagP50Micros: 0, lagP99Micros: 0, lagMaxMicros: 0)
        var object = try #require(try JSONSerialization.jsonObject(with: JSONEncoder().encode(s)) as? [String: Any])
        object["socketRebinds"] = nil
        let older = try JSONSerialization.data(withJSONObject: object)
        let back = try JSONDecoder().decode(ReplicationStatus.self, from: older)
        #expect(back.socketRebinds == nil)
        #expect(back.nodeID == 1)
    }
}
