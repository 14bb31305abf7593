import TandemCore
import TandemElection
import TandemMembership
import TandemSealing

/// One HA instance: a group of floating IPs that move together, as LoxiLB's "llb-inst0".
public struct HAInstanceConfig: Sendable, Equatable {
    public var name: String
    /// This node's priority in the instance's election (higher wins when nobody is MASTER).
    public var priority: UInt8
    /// The instance's floating IPs; nil: every service VIP not listed by another instance.
    public var vips: [IPv4Address]?

    public init(name: String, priority: UInt8 = 100, vips: [IPv4Address]? = nil) {
        self.name = name
        self.priority = priority
        self.vips = vips
    }

    /// kube-loxilb's default instance name.
    public static let defaultName = "llb-inst0"
}

public struct HAPeer: Sendable, Equatable {
    public var id: UInt32
    public var address: IPv4Address
    public init(id: UInt32, address: IPv4Address) {
        self.id = id
        self.address = address
    }
}

public struct HAShellConfig: Sendable {
    public var selfID: UInt32
    public var bindAddress: IPv4Address
    /// The gossip UDP port, the same on every node.
    public var port: UInt16
    public var peers: [HAPeer]
    public var key: ClusterKey
    public var instances: [HAInstanceConfig]
    public var swim: SWIMSettings
    public var election: ElectionSettings
    /// Run the gossip thread under SCHED_RR, so saturated cores do not delay probes and acks
    /// (a late ack is what a false "dead" is made of).
    public var realtime: Bool = true

    public init(selfID: UInt32, bindAddress: IPv4Address, port: UInt16, peers: [HAPeer], key: ClusterKey,
                instances: [HAInstanceConfig], swim: SWIMSettings = HAShellConfig.defaultSWIM,
                election: ElectionSettings = ElectionSettings(instanceName: HAInstanceConfig.defaultName)) {
        self.selfID = selfID
        self.bindAddress = bindAddress
        self.port = port
        self.peers = peers
        self.key = key
        self.instances = instances
        self.swim = swim
        self.election = election
    }

    /// SWIM settings for HA: dead members are probed every 200 ms (not 500), so in a one-way cut the
    /// node that can still hear a MASTER it holds as dead hears that MASTER's advert well within
    /// the election's window for such adverts (its candidate timeout) and stays BACKUP.
    public static var defaultSWIM: SWIMSettings {
        var s = SWIMSettings()
        s.deadProbePeriodNanos = 200_000_000
        return s
    }
}

/// What the HA shell needs from the node, as closures so the shell does not depend on the
/// datapath or the service table.
public struct HAHooks: Sendable {
    /// Every service VIP currently configured.
    public var serviceVIPs: @Sendable () -> Set<IPv4Address>
    /// Makes exactly these VIPs the ones the datapath answers for. Called on the gossip loop, so
    /// it must be quick (a few map updates).
    public var setActiveVIPs: @Sendable (Set<IPv4Address>) throws -> Void
    /// Whether the replication layer holds the cluster's connection table.
    public var replicationInSync: @Sendable () -> Bool
    /// Runs after this node became MASTER and before its cloud provider moves the floating IPs:
    /// whatever must be in place before traffic arrives goes here (a held kernel conntrack table
    /// is committed, so no established flow meets a table without it: keepalived #2254). The
    /// move waits for it, then runs only if the node is still MASTER in that term.
    public var prepareTakeover: @Sendable (_ vips: [IPv4Address], _ term: UInt64) async -> Void

    public init(serviceVIPs: @escaping @Sendable () -> Set<IPv4Address>,
                setActiveVIPs: @escaping @Sendable (Set<IPv4Address>) throws -> Void,
                replicationInSync: @escaping @Sendable () -> Bool,
                prepareTakeover: @escaping @Sendable (_ vips: [IPv4Address], _ term: UInt64) async -> Void = { _, _ in }) {
        self.serviceVIPs = serviceVIPs
        self.setActiveVIPs = setActiveVIPs
        self.replicationInSync = replicationInSync
        self.prepareTakeover = prepareTakeover
    }
}
