import NIOConcurrencyHelpers
import Prometheus
import TandemStatus

/// Copies a node snapshot into the registry and renders it, under one lock.
///
/// Every series a refresh writes is remembered; one the next refresh does not write (a deleted
/// service, a member or peer gone) is unregistered, so it stops being exported. No HELP text is
/// attached: the registry refuses (fatally) two registrations of one name with different help, and
/// swift-metrics registers with none, so any of these names can also be recorded through
/// swift-metrics elsewhere without conflict.
final class Exporter: Sendable {
    private enum Series: Sendable {
        case counter(Prometheus.Counter)
        case gauge(Prometheus.Gauge)
    }

    private struct State: Sendable {
        var issued: UInt64 = 0
        var applied: UInt64 = 0
        var series: [String: Series] = [:]
    }

    private let registry: PrometheusCollectorRegistry
    private let state = NIOLockedValueBox(State())

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
    }

    /// Taken before a scrape gathers its state; orders overlapping scrapes.
    func ticket() -> UInt64 {
        state.withLockedValue { s in
            s.issued += 1
            return s.issued
        }
    }

    func render(_ snapshot: NodeSnapshot, ticket: UInt64) -> String {
        state.withLockedValue { s in
            if ticket > s.applied {
                var w = Writer(registry: registry)
                w.write(snapshot)
                for (key, old) in s.series where w.written[key] == nil {
                    switch old {
                    case .counter(let c): registry.unregisterCounter(c)
                    case .gauge(let g): registry.unregisterGauge(g)
                    }
                }
                s.series = w.written
                s.applied = ticket
            }
            return registry.emitToString()
        }
    }

    /// One refresh: the mapping from the node's JSON-shaped state to metric names.
    private struct Writer {
        let registry: PrometheusCollectorRegistry
        var written: [String: Series] = [:]

        init(registry: PrometheusCollectorRegistry) {
            self.registry = registry
        }

        mutating func write(_ s: NodeSnapshot) {
            datapath(s.datapath)
            for svc in s.services { service(svc) }
            if let r = s.replication { replication(r) }
            if let r = s.kernelReplication { replication(r, prefix: "tandem_conntrack_replication") }
            if let c = s.cluster { cluster(c) }
        }

        // MARK: Datapath (`GET /netlox/v1/status`)

        mutating func datapath(_ stats: [String: UInt64]) {
            for (key, value) in stats {
                // States among the counters: kernel conntrack sync's table sizes and whether this
                // node sends its kernel table's changes.
                if Self.conntrackGauges.contains(key) {
                    gauge("tandem_\(snake(key))", [], Double(value))
                    continue
                }
                let (name, labels) = Self.datapathSeries(key)
                counter(name, labels, value)
            }
        }

        static let conntrackGauges: Set<String> = [
            "conntrack_publishing", "conntrack_source_entries", "conntrack_source_bufferSize",
            "conntrack_source_dumped_entries", "conntrack_sink_held",
        ]

        static func datapathSeries(_ key: String) -> (String, [(String, String)]) {
            switch key {
            case "events_lost": return ("tandem_datapath_events_lost_total", [])
            case "redirect_failed": return ("tandem_datapath_redirect_failures_total", [])
            case "icmp_replied": return ("tandem_datapath_icmp_replies_total", [])
            case "expired_reused": return ("tandem_datapath_expired_entries_reused_total", [])
            case "picked_up": return ("tandem_datapath_picked_up_flows_total", [])
            default:
                // Kernel conntrack sync (KernelTableSync.counters): the source's, sink's and
                // publish gate's counters.
                if key.hasPrefix("conntrack_sink_failures_") {
                    return ("tandem_conntrack_sink_failures_total", [("reason", String(key.dropFirst(24)))])
                }
                if key.hasPrefix("conntrack_") {
                    return ("tandem_conntrack_\(snake(String(key.dropFirst(10))))_total", [])
                }
                if key.hasPrefix("drop_") {
                    return ("tandem_datapath_dropped_packets_total", [("reason", snake(String(key.dropFirst(5))))])
                }
                if key.hasPrefix("events_") {
                    return ("tandem_datapath_events_total", [("kind", snake(String(key.dropFirst(7))))])
                }
                // Endpoint verdict sharing (proto/SPEC.md §14.5): sets received, outdated,
                // applied (a peer's verdict changed the datapath), host states merged.
                if key.hasPrefix("verdicts_") {
                    return ("tandem_cluster_verdicts_total", [("event", snake(String(key.dropFirst(9))))])
                }
                return ("tandem_datapath_\(snake(key))_total", [])
            }
        }

        // MARK: Services (`GET /netlox/v1/config/loadbalancer/all`)

        mutating func service(_ s: ServiceSample) {
            let labels = [("service", s.name.isEmpty ? "\(s.vip):\(s.port)/\(s.proto)" : s.name),
                          ("vip", s.vip), ("port", "\(s.port)"), ("protocol", s.proto)]
            gauge("tandem_service_active_connections", labels, Double(s.activeConnections))
            counter("tandem_service_packets_total", labels, s.packets)
            counter("tandem_service_bytes_total", labels, s.bytes)
            counter("tandem_service_connections_total", labels, s.newConnections)
            counter("tandem_service_denied_sources_total", labels, s.deniedSources)
            counter("tandem_service_no_endpoint_total", labels, s.noEndpoint)
            for e in s.endpoints {
                let el = labels + [("endpoint", e.address)]
                gauge("tandem_endpoint_active_connections", el, Double(e.activeConnections))
                counter("tandem_endpoint_packets_total", el, e.packets)
                counter("tandem_endpoint_bytes_total", el, e.bytes)
                if let r = e.inRotation { gauge("tandem_endpoint_in_rotation", el, r ? 1 : 0) }
                if let t = e.healthTransitions { counter("tandem_endpoint_health_transitions_total", el, t) }
            }
        }

        // MARK: Replication (`GET /netlox/v1/sync`)

        mutating func replication(_ r: ReplicationStatus, prefix: String = "tandem_replication") {
            gauge("\(prefix)_in_sync", [], r.inSync ? 1 : 0)
            gauge("\(prefix)_entries", [], Double(r.entries))
            gauge("\(prefix)_live_entries", [], Double(r.liveEntries))
            gauge("\(prefix)_retransmit_window_entries", [], Double(r.retransmitWindow))
            gauge("\(prefix)_lag_p50_seconds", [], Double(r.lagP50Micros) / 1e6)
            gauge("\(prefix)_lag_p99_seconds", [], Double(r.lagP99Micros) / 1e6)
            gauge("\(prefix)_lag_max_seconds", [], Double(r.lagMaxMicros) / 1e6)
            // Every field of the core's counters, so one added there is exported too.
            for child in Mirror(reflecting: r.counters).children {
                guard let label = child.label, let value = child.value as? UInt64 else { continue }
                counter("\(prefix)_\(snake(label))_total", [], value)
            }
            counter("\(prefix)_datagrams_sent_total", [], r.datagramsSent)
            counter("\(prefix)_datagrams_received_total", [], r.datagramsReceived)
            counter("\(prefix)_sent_bytes_total", [], r.bytesSent)
            counter("\(prefix)_install_failures_total", [], r.installFailures)
            if let n = r.socketRebinds { counter("\(prefix)_socket_rebinds_total", [], n) }
            if let n = r.sendErrors { counter("\(prefix)_send_errors_total", [], n) }
            for (reason, n) in r.dropped {
                counter("\(prefix)_dropped_messages_total", [("reason", snake(reason))], n)
            }
            for p in r.peers {
                let labels = [("peer", p.address)]
                gauge("\(prefix)_peer_in_sync", labels, p.inSync ? 1 : 0)
                gauge("\(prefix)_peer_stream_gap", labels, p.streamHasGap ? 1 : 0)
                if let ms = p.lastHeardMillisecondsAgo {
                    gauge("\(prefix)_peer_last_heard_seconds", labels, Double(ms) / 1000)
                }
            }
        }

        // MARK: Cluster (`GET /netlox/v1/cluster`)

        /// MASTER 1, BACKUP 0, FAULT 2: the values TandemHA records into `tandem_ha_role` on every
        /// transition; a refresh writes the same series, so it is right from the first scrape.
        static func roleValue(_ role: String) -> Double {
            switch role.uppercased() {
            case "MASTER": return 1
            case "FAULT": return 2
            default: return 0
            }
        }

        static let memberStates = ["alive", "suspect", "dead", "left"]

        mutating func cluster(_ c: HAStatus) {
            for i in c.instances {
                let labels = [("instance", i.name)]
                gauge("tandem_ha_role", labels, Self.roleValue(i.role))
                gauge("tandem_ha_term", labels, Double(i.term))
            }
            for m in c.members where m.state != "self" {
                let states = Self.memberStates.contains(m.state) ? Self.memberStates : Self.memberStates + [m.state]
                for state in states {
                    gauge("tandem_cluster_member_state", [("member", m.address), ("state", state)], m.state == state ? 1 : 0)
                }
                if let ms = m.lastHeardMs {
                    gauge("tandem_cluster_member_last_heard_seconds", [("member", m.address)], Double(ms) / 1000)
                }
            }
            for (key, n) in c.counters {
                switch key {
                case "opened": counter("tandem_gossip_messages_opened_total", [], n)
                case "gateErrors": counter("tandem_ha_gate_errors_total", [], n)
                default: counter("tandem_gossip_\(snake(key))_total", [], n)
                }
            }
            for (reason, n) in c.drops {
                counter("tandem_gossip_dropped_messages_total", [("reason", snake(reason))], n)
            }
        }

        // MARK: Writing series

        private mutating func counter(_ name: String, _ labels: [(String, String)], _ value: UInt64) {
            let key = Self.key(name, labels)
            let c: Prometheus.Counter
            if case .counter(let known) = written[key] { c = known } else {
                c = registry.makeCounter(descriptor: Self.descriptor(name), labels: labels)
            }
            c.reset()
            c.increment(by: Int64(clamping: value))
            written[key] = .counter(c)
        }

        private mutating func gauge(_ name: String, _ labels: [(String, String)], _ value: Double) {
            let key = Self.key(name, labels)
            let g: Prometheus.Gauge
            if case .gauge(let known) = written[key] { g = known } else {
                g = registry.makeGauge(descriptor: Self.descriptor(name), labels: labels)
            }
            g.set(value)
            written[key] = .gauge(g)
        }

        /// The full name and no help text: what swift-metrics registers, so the two never clash.
        private static func descriptor(_ name: String) -> MetricNameDescriptor {
            MetricNameDescriptor(metricName: name, unitName: "", helpText: "")
        }

        private static func key(_ name: String, _ labels: [(String, String)]) -> String {
            labels.isEmpty ? name : name + "{" + labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",") + "}"
        }
    }
}

/// `stateChanged` -> `state_changed`; anything outside [a-z0-9_] becomes `_`.
func snake(_ s: String) -> String {
    var out = ""
    for ch in s {
        if ch.isUppercase {
            if !out.isEmpty, out.last != "_" { out.append("_") }
            out.append(contentsOf: ch.lowercased())
        } else if ch.isASCII, ch.isLetter || ch.isNumber || ch == "_" {
            out.append(ch)
        } else {
            out.append("_")
        }
    }
    return out
}
