import CTandemShim
import Foundation
import Logging
import NIOConcurrencyHelpers
import TandemCore
import TandemDatapath
import TandemReplication
import TandemSync
import TandemSyncWire

/// Service slots and endpoints by service key, readable from any thread: replication installs
/// flows from its own event loop and needs this node's slot for a peer's service.
public final class ServiceDirectory: Sendable {
    public init() {}
    private let box = NIOLockedValueBox<[ServiceKey: (slot: UInt32, endpoints: [Endpoint])]>([:])

    func set(_ key: ServiceKey, slot: UInt32, endpoints: [Endpoint]) {
        box.withLockedValue { $0[key] = (slot, endpoints) }
    }

    func remove(_ key: ServiceKey) {
        box.withLockedValue { $0[key] = nil }
    }

    /// Every configured service VIP (the HA shell's default instance holds them all).
    public func vips() -> Set<IPv4Address> {
        box.withLockedValue { Set($0.keys.map(\.vip)) }
    }

    /// This node's slot and endpoint index for each flow, matching the endpoint by address: the
    /// owner's index may differ if services were configured in another order. One lock per batch.
    func locate(_ records: [FlowRecord]) -> [(FlowRecord, UInt32, UInt8)] {
        box.withLockedValue { services in
            records.map { r in
                guard let key = r.serviceKey, let s = services[key] else {
                    // Unknown here: forwarded by its tuples alone, counted nowhere (an out-of-range slot).
                    return (r, UInt32(TDM_MAX_SERVICES), r.endpointIndex)
                }
                let ep = r.translated
                let index = s.endpoints.firstIndex { $0.ip == ep.destination && $0.port == ep.destinationPort }
                return (r, s.slot, index.map { UInt8($0) } ?? r.endpointIndex)
            }
        }
    }
}

/// Installs peers' flows into this node's BPF connection table.
struct DatapathReplicationTarget: ReplicationDatapath {
    typealias Entry = SyncEntry
    let datapath: Datapath
    let directory: ServiceDirectory
    let timeouts: Timeouts
    let logger: Logger

    func installReplicated(_ records: [FlowRecord]) -> Int {
        let result = datapath.installReplicated(directory.locate(records), timeouts: timeouts)
        if result.failed > 0 {
            logger.warning("replicated flows not installed", metadata: ["failed": "\(result.failed)"])
        }
        return result.failed
    }

    func removeReplicated(_ keys: [FlowTuple]) {
        for k in keys { datapath.removeConnection(k) }
    }
}

extension FlowRecord {
    /// A ring-buffer event as a replicated record: the state just changed, or a packet just came
    /// (a refresh), so it has its full timeout ahead of it.
    init(event e: ConnectionEvent, timeouts: Timeouts, nowNanoseconds now: UInt64) {
        let age = e.createdNanoseconds > 0 && now > e.createdNanoseconds ? (now - e.createdNanoseconds) / 1_000_000 : 0
        self.init(key: e.key, translated: e.translated, natMode: e.natMode, state: e.state, flags: e.flags,
                  endpointIndex: e.endpointIndex, ageMilliseconds: UInt32(clamping: age),
                  remainingMilliseconds: e.remainingMilliseconds(timeouts: timeouts))
    }

    /// A connection read by the periodic scan, with what is left of its idle timeout (its
    /// service's or the node's: `timeouts` should carry the per-service ones).
    init(connection c: Connection, timeouts: Timeouts) {
        let o = c.original
        self.init(key: o.key, translated: o.translated, natMode: o.natMode, state: o.state, flags: o.flags,
                  endpointIndex: o.endpointIndex, ageMilliseconds: UInt32(clamping: Int(o.ageSeconds * 1000)),
                  remainingMilliseconds: c.remainingMilliseconds(timeouts: timeouts))
    }
}
