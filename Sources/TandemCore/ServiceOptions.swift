/// How an endpoint's health is probed (LoxiLB's probetype, probeport, probereq, proberesp,
/// probeTimeout, probeRetries). Stored and listed back; the health monitor acts on it.
public struct HealthProbe: Hashable, Sendable, Codable {
    public enum Kind: String, Sendable, Codable, CaseIterable {
        case none, ping, tcp, udp, http, https
    }

    public var kind: Kind?
    /// 0: the endpoint's own target port.
    public var port: UInt16
    public var request: String
    public var response: String
    /// Seconds; 0 means the monitor's default.
    public var timeoutSeconds: UInt32
    /// Consecutive failures before an endpoint is marked down; 0 means the monitor's default.
    public var retries: UInt32
    /// Tandem's own probe syntax (`http:/healthz:200`, `https:/ready:200:insecure`, docs/health.md):
    /// when set it says what to probe, and LoxiLB's fields above only give the timing.
    public var spec: String?

    public init(kind: Kind? = nil, port: UInt16 = 0, request: String = "", response: String = "",
                timeoutSeconds: UInt32 = 0, retries: UInt32 = 0, spec: String? = nil) {
        self.spec = spec
        self.kind = kind
        self.port = port
        self.request = request
        self.response = response
        self.timeoutSeconds = timeoutSeconds
        self.retries = retries
    }
}

/// What a service carries beside its datapath definition: LoxiLB's fields that the control plane
/// keeps and lists back.
public struct ServiceOptions: Hashable, Sendable {
    /// Endpoint health monitoring asked for (LoxiLB's `Monitor`).
    public var monitor: Bool
    public var probe: HealthProbe
    /// Managed by an external controller such as kube-loxilb (shown, not acted on).
    public var managed: Bool

    public init(monitor: Bool = false, probe: HealthProbe = HealthProbe(), managed: Bool = false) {
        self.monitor = monitor
        self.probe = probe
        self.managed = managed
    }
}

extension ServiceKey {
    /// Parses the form `description` prints: "10.0.10.143:56002/tcp".
    public init?(text: String) {
        let slash = text.split(separator: "/", omittingEmptySubsequences: false)
        guard slash.count == 2, let proto = L4Protocol(name: String(slash[1])) else { return nil }
        let colon = slash[0].split(separator: ":", omittingEmptySubsequences: false)
        guard colon.count == 2, let vip = IPv4Address(colon[0]), let port = UInt16(colon[1]), port > 0 else { return nil }
        self.init(vip: vip, port: port, proto: proto)
    }
}
