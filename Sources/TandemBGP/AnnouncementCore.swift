import TandemCore

/// Which VIPs a node announces, and with what attributes: only what it can serve. Pure: the shell
/// passes what the node knows and the time; the core says when to hand the speaker a new route
/// set, and retries a set the speaker refused.
///
/// - A VIP none of whose services has an endpoint in rotation is withdrawn (LoxiLB keeps
///   announcing it: its issue #1035).
/// - A draining node withdraws everything.
/// - active-active: a VIP is announced only once the node's connection table is in sync, so a
///   node that joins holds the flows ECMP is about to send it.
/// - master-backup: the MASTER announces with the primary attributes; the others, in sync, with
///   the backup ones, so routers fall back to them as soon as the MASTER's route goes.
public struct AnnouncementCore: Sendable {
    public struct VIPState: Hashable, Sendable {
        /// At least one service on the VIP has an endpoint in rotation.
        public var serving: Bool
        /// master-backup: this node is MASTER of the VIP's instance (unused in active-active).
        public var primary: Bool
        public init(serving: Bool, primary: Bool = false) {
            self.serving = serving
            self.primary = primary
        }
    }

    public struct Inputs: Hashable, Sendable {
        public var vips: [IPv4Address: VIPState]
        public var inSync: Bool
        public var draining: Bool
        public init(vips: [IPv4Address: VIPState], inSync: Bool, draining: Bool = false) {
            self.vips = vips
            self.inSync = inSync
            self.draining = draining
        }
    }

    public enum Action: Hashable, Sendable {
        /// Make exactly these routes the announced ones.
        case apply([BGPRoute])
    }

    public let mode: BGPMode
    public let primary: BGPAttributes
    public let backup: BGPAttributes
    /// active-active: this node's fullnat source address and its peers' (`BGPSettings`).
    public let snatAddress: IPv4Address?
    public let peerSNATAddresses: [IPv4Address]
    /// How long after a refused set the core asks again.
    public let retryNanos: UInt64
    /// What the speaker holds (nil until the first set is accepted).
    public private(set) var announced: [BGPRoute]?
    private var pending: [BGPRoute]?
    private var retryAtNanos: UInt64 = 0
    public private(set) var failures: UInt64 = 0

    public init(mode: BGPMode, primary: BGPAttributes = .primary, backup: BGPAttributes = .backup,
                snatAddress: IPv4Address? = nil, peerSNATAddresses: [IPv4Address] = [],
                retryNanos: UInt64 = 1_000_000_000) {
        self.mode = mode
        self.snatAddress = snatAddress
        self.peerSNATAddresses = peerSNATAddresses
        self.primary = primary
        self.backup = backup
        self.retryNanos = retryNanos
    }

    /// The routes these inputs call for, sorted by VIP.
    ///
    /// Source addresses (active-active) wait for the sync like the VIPs: a node that comes back
    /// must not draw the replies of flows its peers carried meanwhile before it holds them. A
    /// drain keeps the node's own (its established flows still get their replies) and gives up
    /// its peers'.
    public func desired(_ inputs: Inputs) -> [BGPRoute] {
        var routes: [BGPRoute] = []
        if mode == .activeActive, inputs.inSync {
            if let own = snatAddress { routes.append(BGPRoute(vip: own, attributes: primary)) }
            if !inputs.draining {
                for a in peerSNATAddresses { routes.append(BGPRoute(vip: a, attributes: backup)) }
            }
        }
        guard !inputs.draining else { return routes.sorted() }
        for (vip, state) in inputs.vips where state.serving {
            switch mode {
            case .activeActive:
                if inputs.inSync { routes.append(BGPRoute(vip: vip, attributes: primary)) }
            case .masterBackup:
                if state.primary {
                    routes.append(BGPRoute(vip: vip, attributes: primary))
                } else if inputs.inSync {
                    routes.append(BGPRoute(vip: vip, attributes: backup))
                }
            }
        }
        return routes.sorted()
    }

    /// Called whenever the inputs may have changed (and on a timer, for retries).
    public mutating func onInputs(_ inputs: Inputs, nowNanos: UInt64) -> Action? {
        let want = desired(inputs)
        guard want != announced else { return nil }
        if let p = pending, p == want { return nil }  // already with the speaker
        if pending == nil, failures > 0, nowNanos < retryAtNanos { return nil }
        pending = want
        return .apply(want)
    }

    /// The speaker's answer to an `apply`.
    public mutating func onApplied(_ routes: [BGPRoute], ok: Bool, nowNanos: UInt64) {
        if pending == routes { pending = nil }
        if ok {
            announced = routes
            failures = 0
        } else {
            failures &+= 1
            retryAtNanos = nowNanos &+ retryNanos
        }
    }
}
