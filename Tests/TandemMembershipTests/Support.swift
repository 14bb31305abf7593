import TandemMembership
import TandemSyncWire

/// Unit-test helpers: one SWIM instance driven by hand.
enum Unit {
    static let t0: UInt64 = 5_000_000_000
    static let ms: UInt64 = 1_000_000

    /// The hand-driven timelines start at the node's first tick with nobody heard yet; they test
    /// the detector proper, so the startup grace is off unless a test sets it (StartupTests).
    static var settings: SWIMSettings {
        var s = SWIMSettings()
        s.startupGraceNanos = 0
        return s
    }

    static func swim(_ selfID: UInt32 = 1, peers: [UInt32] = [2, 3], incarnation: UInt32 = 10,
                     settings: SWIMSettings = Unit.settings) -> SWIM {
        SWIM(selfID: selfID, peers: peers, incarnation: incarnation, settings: settings, seed: 7, nowNanos: t0)
    }

    static func gossip(_ updates: [MemberUpdate]) -> Gossip { Gossip(updates: updates, adverts: []) }

    static func probe(_ updates: [MemberUpdate] = [], id: UInt32 = 77, target: UInt32 = 1, requester: UInt32 = 0)
        -> SyncMessage
    {
        .probe(Probe(probeID: id, target: target, requester: requester, gossip: gossip(updates)))
    }

    static func ack(_ id: UInt32, target: UInt32, requester: UInt32 = 0, _ updates: [MemberUpdate] = [])
        -> SyncMessage
    {
        .probeAck(ProbeAck(probeID: id, target: target, requester: requester, gossip: gossip(updates)))
    }
}

extension Array where Element == SWIMAction {
    var sends: [(message: SyncMessage, to: UInt32)] {
        compactMap { if case .send(let m, let to) = $0 { (m, to) } else { nil } }
    }

    var probes: [(probe: Probe, to: UInt32)] {
        sends.compactMap { if case .probe(let p) = $0.message { (p, $0.to) } else { nil } }
    }

    var acks: [(ack: ProbeAck, to: UInt32)] {
        sends.compactMap { if case .probeAck(let a) = $0.message { (a, $0.to) } else { nil } }
    }

    var probeRequests: [(request: ProbeRequest, to: UInt32)] {
        sends.compactMap { if case .probeRequest(let r) = $0.message { (r, $0.to) } else { nil } }
    }

    var changes: [MemberUpdate] {
        compactMap { if case .memberChanged(let n, let s, let i) = $0 { MemberUpdate(node: n, incarnation: i, status: s) } else { nil } }
    }
}

extension SWIM {
    /// Ticks every 10 ms from `from` up to and including `to`, collecting the actions.
    mutating func tick(from: UInt64, to: UInt64) -> [SWIMAction] {
        var out: [SWIMAction] = []
        var t = from
        while t <= to {
            out += onTick(nowNanos: t)
            t += 10 * Unit.ms
        }
        return out
    }
}
