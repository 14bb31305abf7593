import TandemSyncWire

/// The dissemination queue: the newest update per member, each piggybacked on outgoing messages
/// until it has been sent `budget` times (retransmitMultiplier * ceil(log2(n + 1)), enough for
/// epidemic spread to every member with high probability), least-sent first.
struct Piggyback: Sendable {
    struct Entry: Sendable {
        var update: MemberUpdate
        var transmissions: Int
        /// Enqueue order: among equally-sent updates the newest goes first.
        var sequence: UInt64
    }

    let budget: Int
    private(set) var entries: [UInt32: Entry] = [:]
    private var nextSequence: UInt64 = 0

    init(members: Int, multiplier: Int) {
        // ceil(log2(x)) for x >= 2 is the bit width of x - 1.
        let x = max(members + 1, 2)
        let ceilLog2 = UInt64.bitWidth - UInt64(x - 1).leadingZeroBitCount
        budget = max(multiplier, 1) * max(ceilLog2, 1)
    }

    var count: Int { entries.count }

    /// A newer fact about a member replaces the older one, and starts its budget afresh.
    mutating func enqueue(_ u: MemberUpdate) {
        nextSequence &+= 1
        entries[u.node] = Entry(update: u, transmissions: 0, sequence: nextSequence)
    }

    mutating func remove(node: UInt32) {
        entries[node] = nil
    }

    func pending(for node: UInt32) -> MemberUpdate? { entries[node]?.update }

    /// Counts one transmission of the entry for `node` if it carries exactly `u` (sent outside
    /// `take`, e.g. as the recipient's own status).
    mutating func noteSent(_ u: MemberUpdate) {
        guard var e = entries[u.node], e.update == u else { return }
        e.transmissions += 1
        entries[u.node] = e.transmissions >= budget ? nil : e
    }

    /// Up to `limit` updates for one message, least-transmitted first; each is counted as sent and
    /// dropped once its budget is spent.
    mutating func take(_ limit: Int, excluding excluded: UInt32?) -> [MemberUpdate] {
        guard limit > 0, !entries.isEmpty else { return [] }
        let chosen = entries.values
            .filter { $0.update.node != excluded }
            .sorted { a, b in
                a.transmissions != b.transmissions ? a.transmissions < b.transmissions : a.sequence > b.sequence
            }
            .prefix(limit)
        var out: [MemberUpdate] = []
        out.reserveCapacity(chosen.count)
        for e in chosen {
            out.append(e.update)
            noteSent(e.update)
        }
        return out
    }
}
