import TandemSyncWire

/// What this node believes about one peer, as the shell and the election see it.
public struct MemberInfo: Sendable, Hashable {
    public var node: UInt32
    public var status: MemberStatus
    /// 0 until the member is heard of: peers start as "alive at 0, never heard".
    public var incarnation: UInt32
    /// Whether any message has come directly from this member.
    public var heard: Bool
    /// Local monotonic time of the last message directly from it; 0 while `heard` is false.
    public var lastHeardNanos: UInt64

    public init(node: UInt32, status: MemberStatus, incarnation: UInt32, heard: Bool, lastHeardNanos: UInt64) {
        self.node = node
        self.status = status
        self.incarnation = incarnation
        self.heard = heard
        self.lastHeardNanos = lastHeardNanos
    }
}

/// One peer's state inside the SWIM instance.
struct Member: Sendable {
    let node: UInt32
    var status: MemberStatus = .alive
    var incarnation: UInt32 = 0
    var heard = false
    var lastHeardNanos: UInt64 = 0
    /// Last evidence of life: a direct message or an indirect ack. Picks the next probe target.
    var lastConfirmedNanos: UInt64
    /// When a suspicion turns into death (meaningful while suspect).
    var suspicionDeadline: UInt64 = 0
    /// When this node began to hold the member suspect (its own miss or a peer's gossip).
    var suspectedAtNanos: UInt64 = 0
    /// When a dead (or restarting) member is probed next.
    var nextDeadProbeNanos: UInt64 = 0
    /// When a restarting member that has not returned is declared dead (meaningful while restarting).
    var holdDeadline: UInt64 = 0
    /// Random order among members confirmed at the same instant; redrawn after each probe.
    var tiebreak: UInt64

    init(node: UInt32, nowNanos: UInt64, tiebreak: UInt64) {
        self.node = node
        self.lastConfirmedNanos = nowNanos
        self.tiebreak = tiebreak
    }

    /// Alive or suspect: probed every period, may help with indirect probes, hears announcements.
    var isLive: Bool { status == .alive || status == .suspect }

    var update: MemberUpdate { MemberUpdate(node: node, incarnation: incarnation, status: status) }

    var info: MemberInfo {
        MemberInfo(node: node, status: status, incarnation: incarnation, heard: heard, lastHeardNanos: lastHeardNanos)
    }
}

extension MemberStatus {
    /// Precedence at equal incarnation: left (said by the node itself) > dead > restarting (said
    /// by the node itself; a hold that expired is declared dead at the same incarnation) >
    /// suspect > alive.
    var precedence: Int {
        switch self {
        case .alive: 0
        case .suspect: 1
        case .restarting: 2
        case .dead: 3
        case .left: 4
        }
    }
}

extension MemberUpdate {
    /// SWIM's ordering: a higher incarnation wins; at equal incarnation the stronger status wins.
    func supersedes(incarnation current: UInt32, status currentStatus: MemberStatus) -> Bool {
        incarnation > current || (incarnation == current && status.precedence > currentStatus.precedence)
    }
}

extension UInt64 {
    /// Deadlines saturate instead of trapping near the top of the clock.
    func plus(_ x: UInt64) -> UInt64 {
        let (r, overflow) = addingReportingOverflow(x)
        return overflow ? .max : r
    }
}
