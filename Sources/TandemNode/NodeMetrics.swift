import Metrics
import NIOConcurrencyHelpers
import Prometheus
import TandemHA
import TandemSync

/// Metrics: code everywhere records through the swift-metrics API; one Prometheus registry
/// exports them at `GET /netlox/v1/metrics`. Counters the node already keeps (datapath, replication,
/// gossip) are mirrored into Prometheus counters on each scrape by adding what grew since the last.
public enum NodeMetrics {
    public static let registry = PrometheusCollectorRegistry()
    private static let bootstrapped = NIOLockedValueBox(false)
    private static let mirrored = NIOLockedValueBox<[String: UInt64]>([:])

    /// swift-metrics takes one bootstrap per process; later calls (a second node in one test
    /// process) are no-ops.
    public static func bootstrap() {
        let first = bootstrapped.withLockedValue { done -> Bool in
            defer { done = true }
            return !done
        }
        if first { MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry)) }
    }

    /// Prometheus text exposition (format 0.0.4) after refreshing the mirrored values.
    static func render(datapath: [String: UInt64], replication: ReplicationStatus?, cluster: HAStatus?) -> String {
        for (name, value) in datapath { mirror("tandem_datapath_total", [("counter", name)], value) }
        if let r = replication {
            Gauge(label: "tandem_replication_in_sync").record(r.inSync ? 1 : 0)
            Gauge(label: "tandem_replication_entries").record(r.liveEntries)
            Gauge(label: "tandem_replication_lag_p50_seconds").record(Double(r.lagP50Micros) / 1e6)
            Gauge(label: "tandem_replication_lag_p99_seconds").record(Double(r.lagP99Micros) / 1e6)
            for child in Mirror(reflecting: r.counters).children {
                guard let name = child.label, let value = child.value as? UInt64 else { continue }
                mirror("tandem_replication_total", [("counter", name)], value)
            }
            for (reason, n) in r.dropped { mirror("tandem_replication_dropped_total", [("reason", reason)], n) }
        }
        if let c = cluster {
            for i in c.instances {
                Gauge(label: "tandem_ha_term", dimensions: [("instance", i.name)]).record(Double(i.term))
                mirror("tandem_ha_takeovers_total", [("instance", i.name)], i.takeovers)
            }
            for m in c.members where m.state != "self" {
                for state in ["alive", "suspect", "dead", "left"] {
                    Gauge(label: "tandem_member_state", dimensions: [("member", m.address), ("state", state)])
                        .record(m.state == state ? 1 : 0)
                }
            }
            for (name, n) in c.counters { mirror("tandem_gossip_total", [("counter", name)], n) }
            for (reason, n) in c.drops { mirror("tandem_gossip_dropped_total", [("reason", reason)], n) }
        }
        return registry.emitToString()
    }

    /// Adds to a Prometheus counter whatever `value` grew by since the last scrape.
    private static func mirror(_ label: String, _ dimensions: [(String, String)], _ value: UInt64) {
        let key = label + dimensions.map { "|\($0.0)=\($0.1)" }.joined()
        let delta = mirrored.withLockedValue { seen -> UInt64 in
            let last = seen[key] ?? 0
            seen[key] = value
            return value >= last ? value - last : value  // a restarted source starts over
        }
        let counter = Counter(label: label, dimensions: dimensions)
        if delta > 0 { counter.increment(by: Int64(clamping: delta)) }
    }
}
