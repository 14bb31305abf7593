import Foundation
import TandemCore

// The bodies of the control endpoints beside the load-balancer rules (node stop, cistate,
// endpoint hosts) and the API's paths, shared by the server and the CLI's client.

/// POST /netlox/v1/node/stop.
public struct NodeStopEntry: Codable, Sendable, Equatable {
    public var release: Bool
    public init(release: Bool) { self.release = release }
}

/// `GET /netlox/v1/config/cistate/all`, shaped like LoxiLB's answer.
public struct CIStateList: Codable, Sendable, Equatable {
    public var Attr: [CIStateGetEntry]
    public init(_ attr: [CIStateGetEntry]) { Attr = attr }
}

/// One instance of `GET config/cistate/all` (LoxiLB's CIStatusGetEntry; loxicmd's HAStateInfo):
/// `sync` is 1 while this node's connection table is in sync with its peers, else 0.
public struct CIStateGetEntry: Codable, Sendable, Equatable {
    public var instance: String
    public var state: String
    public var vip: String
    public var sync: Int
    public init(instance: String, state: String, vip: String, sync: Int) {
        self.instance = instance
        self.state = state
        self.vip = vip
        self.sync = sync
    }
}

/// `POST config/endpointhoststate`: an outside verdict on an endpoint host, as LoxiLB's clients
/// send it (`{"hostName": "10.0.0.5", "state": "red"}`). red takes the host's endpoints out of
/// rotation in every rule; green and yellow (degraded, still serving) put them back.
public struct EndpointHostStateEntry: Codable, Sendable, Equatable {
    public var hostName: String
    public var state: String
    public static let states: Set<String> = ["green", "yellow", "red"]
    public init(hostName: String, state: String) {
        self.hostName = hostName
        self.state = state
    }
}

/// One endpoint host of `GET config/endpoint/all` (LoxiLB's EndPointGetEntry, loxicmd's `get ep`).
public struct EndpointHostEntry: Codable, Sendable, Equatable {
    public var hostName: String
    public var name: String
    public var inactiveReTries: Int
    public var probeType: String
    public var probeReq: String
    public var probeResp: String
    public var probeDuration: Int
    public var probePort: Int
    public var minDelay: String
    public var avgDelay: String
    public var maxDelay: String
    public var currState: String
    /// Tandem's additions: the last probe's outcome, how long ago it ran, and how long the
    /// endpoint has been in its current state (seconds); nil when it is not probed.
    public var lastProbe: String?
    public var lastProbeSecondsAgo: Double?
    public var stateSeconds: Double?
    /// When this node's probes last changed the endpoint's state (wall clock, µs since 1970).
    public var stateChangedAtUnixMicros: UInt64?
    /// The verdict in force in this node's datapath ("up" or "down"), whose it is ("own", or the
    /// address of the MASTER whose published verdicts this node follows), when the deciding node
    /// marked it down, and when this node's datapath took the service's current down set (µs
    /// since 1970). `currState` beside it is this node's own probe state.
    public var verdict: String?
    public var verdictFrom: String?
    public var verdictSinceUnixMicros: UInt64?
    public var verdictAppliedUnixMicros: UInt64?
    /// The endpoint object (its name) whose settings this probe uses: a rule endpoint an object
    /// governs (LoxiLB's key rule), or the object itself.
    public var probeObject: String?

    public init(hostName: String, name: String, inactiveReTries: Int = 0, probeType: String, probeReq: String = "",
                probeResp: String = "", probeDuration: Int = 0, probePort: Int = 0, minDelay: String = "",
                avgDelay: String = "", maxDelay: String = "", currState: String) {
        self.hostName = hostName
        self.name = name
        self.inactiveReTries = inactiveReTries
        self.probeType = probeType
        self.probeReq = probeReq
        self.probeResp = probeResp
        self.probeDuration = probeDuration
        self.probePort = probePort
        self.minDelay = minDelay
        self.avgDelay = avgDelay
        self.maxDelay = maxDelay
        self.currState = currState
    }

    /// One entry per endpoint of each service, with the service's probe; until endpoints are
    /// probed, the state is each endpoint's state as the service lists it.
    public static func from(_ services: [LoadBalancerEntry]) -> [EndpointHostEntry] {
        var out: [EndpointHostEntry] = []
        for e in services {
            let a = e.serviceArguments
            let type = (a.probetype ?? "").isEmpty ? "none" : (a.probetype ?? "none")
            for ep in e.endpoints {
                out.append(EndpointHostEntry(hostName: ep.endpointIP, name: "\(a.externalIP):\(a.port)/\(a.protocol_)",
                                             inactiveReTries: a.probeRetries ?? 0, probeType: type,
                                             probeReq: a.probereq ?? "", probeResp: a.proberesp ?? "",
                                             probeDuration: a.probeTimeout ?? 0,
                                             probePort: (a.probeport ?? 0) == 0 ? ep.targetPort : (a.probeport ?? 0),
                                             currState: ep.state ?? "-"))
            }
        }
        return out.sorted { ($0.hostName, $0.probePort, $0.name) < ($1.hostName, $1.probePort, $1.name) }
    }
}

public struct EndpointHostList: Codable, Sendable, Equatable {
    public var Attr: [EndpointHostEntry]
    public init(_ attr: [EndpointHostEntry]) { Attr = attr }
}

public enum APIRoutes {
    public static let base = "/netlox/v1"
    public static let loadBalancer = "/netlox/v1/config/loadbalancer"
    public static let loadBalancerAll = "/netlox/v1/config/loadbalancer/all"
    public static let conntrackAll = "/netlox/v1/config/conntrack/all"
    public static let openAPI = "/netlox/v1/openapi.json"
    public static let status = "/netlox/v1/status"
    public static let sync = "/netlox/v1/sync"
    /// Tandem's own: the kernel conntrack table's replication (the same shape as sync).
    public static let syncConntrack = "/netlox/v1/sync/conntrack"
    public static let cluster = "/netlox/v1/cluster"
    public static let clusterServices = "/netlox/v1/cluster/services"
    public static let ciState = "/netlox/v1/config/cistate"
    public static let ciStateAll = "/netlox/v1/config/cistate/all"
    public static let metrics = "/netlox/v1/metrics"
    public static let endpointAll = "/netlox/v1/config/endpoint/all"
    public static let endpoint = "/netlox/v1/config/endpoint"

    /// LoxiLB's delete of an endpoint object: the host in the path; `name`, or `probe_type` and
    /// `probe_port`, in the query (loxicmd always sends all three).
    public static func endpointDeletePath(host: String, name: String? = nil, probeType: String? = nil,
                                          probePort: Int? = nil) -> String {
        var q: [String] = []
        if let name { q.append("name=\(name.addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed) ?? name)") }
        if let probeType { q.append("probe_type=\(probeType)") }
        if let probePort { q.append("probe_port=\(probePort)") }
        return "\(endpoint)/epipaddress/\(host)" + (q.isEmpty ? "" : "?" + q.joined(separator: "&"))
    }
    public static let endpointHostState = "/netlox/v1/config/endpointhoststate"
    /// Tandem's own: stop the daemon (body {"release": bool}).
    public static let nodeStop = "/netlox/v1/node/stop"
    /// Tandem's own: withdraw every BGP announcement (body {"drain": bool}); answers BGPStatus.
    public static let nodeDrain = "/netlox/v1/node/drain"
    /// Tandem's own: the BGP speaker, its sessions and announcements (BGPStatus).
    public static let bgp = "/netlox/v1/bgp"

    public static func deletePath(_ k: ServiceKey) -> String {
        "\(loadBalancer)/externalipaddress/\(k.vip)/port/\(k.port)/protocol/\(k.proto)"
    }
}
