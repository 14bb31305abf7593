import TandemSyncWire

/// SWIM timing and dissemination knobs. The defaults are tuned for a LAN: a dead node is declared
/// by every survivor within 300 ms (probe within one period, 40 ms direct wait, indirect probes
/// until the period ends, 150 ms suspicion).
public struct SWIMSettings: Sendable, Hashable {
    /// One probe is started per period.
    public var protocolPeriodNanos: UInt64 = 50_000_000
    /// How long to wait for a direct ack before asking others to probe (ping-req).
    public var probeTimeoutNanos: UInt64 = 40_000_000
    /// Members asked to probe indirectly (needs at least 3 members including this node).
    public var indirectProbeCount = 2
    /// A suspect that does not refute within this long is declared dead.
    public var suspicionTimeoutNanos: UInt64 = 150_000_000
    /// Dead members are never forgotten: they are still probed this often, so a return is seen.
    public var deadProbePeriodNanos: UInt64 = 500_000_000
    /// Most piggybacked updates per message, besides the sender's own alive update.
    public var maxPiggybackUpdates = 12
    /// Each update is piggybacked retransmitMultiplier * ceil(log2(members + 1)) times.
    public var retransmitMultiplier = 3
    /// How often the shell calls onTick; only used to recognise this node's own stalls.
    public var tickNanos: UInt64 = 10_000_000
    /// A gap between ticks longer than stallFactor * tickNanos means this node was stalled.
    public var stallFactor: UInt64 = 3
    /// After start, until any member has answered one of this node's probes (a round trip), a
    /// missed probe raises no suspicion, for up to this long. A node that just (re)started may not
    /// be able to send yet (ARP, a proxy-ARP router's delay, a firewall still loading) while it
    /// already hears everyone: its silence about the others is its own problem, not theirs.
    public var startupGraceNanos: UInt64 = 2_000_000_000
    /// A member that announced `restarting` (a graceful daemon restart: its datapath keeps
    /// forwarding) is neither suspected nor elected around for this long; if it has not returned
    /// by then it is declared dead. Long enough for a restart (measured: docs/restart.md), short
    /// enough that a node that never comes back costs one bounded outage.
    public var restartHoldNanos: UInt64 = 10_000_000_000

    public init() {}

    /// Values the core can work with, whatever the caller set: never a trap on odd settings.
    var sanitized: SWIMSettings {
        var s = self
        s.protocolPeriodNanos = max(s.protocolPeriodNanos, 1)
        // The probe must finish within its period: the next period starts the next probe.
        s.probeTimeoutNanos = min(max(s.probeTimeoutNanos, 1), s.protocolPeriodNanos)
        s.indirectProbeCount = max(s.indirectProbeCount, 0)
        s.suspicionTimeoutNanos = max(s.suspicionTimeoutNanos, 1)
        s.deadProbePeriodNanos = max(s.deadProbePeriodNanos, 1)
        s.restartHoldNanos = max(s.restartHoldNanos, 1)
        // The codec carries at most maxGossipUpdates, our own update included.
        s.maxPiggybackUpdates = min(max(s.maxPiggybackUpdates, 0), SyncCodec.maxGossipUpdates - 1)
        s.retransmitMultiplier = max(s.retransmitMultiplier, 1)
        s.tickNanos = max(s.tickNanos, 1)
        s.stallFactor = max(s.stallFactor, 1)
        return s
    }
}
