import Metrics
import NIOConcurrencyHelpers
import Prometheus
import TandemStatus

/// The node's Prometheus metrics (`GET /netlox/v1/metrics`).
///
/// Two sources feed one `PrometheusCollectorRegistry`:
/// - events recorded where they happen through the plain swift-metrics API (`Counter`, `Gauge`,
///   `Timer`: role changes, takeover durations and failures in TandemHA), once `bootstrap()` has
///   made swift-prometheus the process's metrics backend;
/// - what the node already keeps and serves as JSON (datapath, services, replication, cluster),
///   copied into the registry on every scrape by `scrape(...)` just before it is rendered.
///
/// The copied counters keep Prometheus's `counter` type and the node's exact values (so they match
/// `/netlox/v1/status`, `/sync`, `/cluster`): a refresh sets each one absolutely (reset, then add
/// the value) under one lock together with the rendering, so no scrape ever sees the intermediate
/// zero, and a source that restarts from zero shows as an ordinary counter reset.
public enum TandemMetrics {
    /// The one registry of the process: the swift-metrics backend and every scrape render it.
    public static let registry = PrometheusCollectorRegistry()
    /// Prometheus text exposition format 0.0.4.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    /// Buckets for `tandem_takeover_duration_seconds` (`l2` moves take milliseconds, OCI's API
    /// hundreds of milliseconds to seconds).
    public static let takeoverBuckets: [Duration] = [
        .milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
        .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500),
        .seconds(5), .seconds(10), .seconds(30),
    ]

    private static let bootstrapped = NIOLockedValueBox(false)
    private static let exporter = Exporter(registry: registry)

    /// Makes swift-prometheus (over `registry`) the swift-metrics backend. swift-metrics takes one
    /// bootstrap per process, so only the first call does anything (a second node started in the
    /// same process, or a test, is fine). Returns whether this call did it.
    @discardableResult
    public static func bootstrap() -> Bool {
        let first = bootstrapped.withLockedValue { done -> Bool in
            defer { done = true }
            return !done
        }
        guard first else { return false }
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets["tandem_takeover_duration_seconds"] = takeoverBuckets
        MetricsSystem.bootstrap(factory)
        return true
    }

    /// One scrape: gathers the node's state through the closures, copies it into the registry and
    /// renders the registry. Scrapes may overlap (two Prometheus servers); a scrape whose state was
    /// gathered before that of one already applied does not apply its older state over it.
    public static func scrape(
        datapath: () async -> [String: UInt64],
        services: () async -> [ServiceSample],
        replication: () async -> ReplicationStatus?,
        kernelReplication: () async -> ReplicationStatus? = { nil },
        cluster: () async -> HAStatus?
    ) async -> String {
        let ticket = exporter.ticket()
        let snapshot = NodeSnapshot(datapath: await datapath(), services: await services(),
                                    replication: await replication(), kernelReplication: await kernelReplication(),
                                    cluster: await cluster())
        return exporter.render(snapshot, ticket: ticket)
    }
}

/// One service's counters as `GET /netlox/v1/config/loadbalancer/all` reports them.
public struct ServiceSample: Sendable, Equatable {
    public struct Endpoint: Sendable, Equatable {
        public var address: String
        public var packets: UInt64
        public var bytes: UInt64
        public var activeConnections: Int
        /// In the rotation (not held down by probes or an outside verdict); nil: not reported.
        public var inRotation: Bool?
        /// Health state changes since the endpoint was first probed; nil: not probed.
        public var healthTransitions: UInt64?
        public init(address: String, packets: UInt64, bytes: UInt64, activeConnections: Int, inRotation: Bool? = nil,
                    healthTransitions: UInt64? = nil) {
            self.address = address
            self.packets = packets
            self.bytes = bytes
            self.activeConnections = activeConnections
            self.inRotation = inRotation
            self.healthTransitions = healthTransitions
        }
    }

    public var name: String
    public var vip: String
    public var port: Int
    public var proto: String
    public var packets: UInt64
    public var bytes: UInt64
    public var newConnections: UInt64
    public var activeConnections: Int
    /// New connections refused because their source is not in allowedSources.
    public var deniedSources: UInt64 = 0
    /// New connections refused (RST / ICMP unreachable) because no endpoint was in rotation.
    public var noEndpoint: UInt64 = 0
    public var endpoints: [Endpoint]

    public init(name: String, vip: String, port: Int, proto: String, packets: UInt64, bytes: UInt64,
                newConnections: UInt64, activeConnections: Int, endpoints: [Endpoint] = []) {
        self.name = name
        self.vip = vip
        self.port = port
        self.proto = proto
        self.packets = packets
        self.bytes = bytes
        self.newConnections = newConnections
        self.activeConnections = activeConnections
        self.endpoints = endpoints
    }
}

/// What one scrape copies into the registry.
struct NodeSnapshot: Sendable {
    var datapath: [String: UInt64]
    var services: [ServiceSample]
    var replication: ReplicationStatus?
    /// The kernel conntrack table's replication (tandem_conntrack_replication_*).
    var kernelReplication: ReplicationStatus? = nil
    var cluster: HAStatus?
}
