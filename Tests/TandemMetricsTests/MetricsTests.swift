import Foundation
import Hummingbird
import Logging
import Metrics
import NIOCore
import NIOEmbedded
import Testing
import TandemCore
import TandemHA
import TandemMetrics
import TandemSync
@testable import TandemAPI
import TandemAPIModels
import TandemStatus

/// `GET /netlox/v1/metrics` through the real router, with a fake node behind it. Serialized: the
/// registry is the process's one, and a scrape removes the series the previous one wrote and this
/// one does not (a deleted service, a member gone).
@Suite(.serialized) struct MetricsTests {
    /// A node with fixed state, as the JSON routes would show it.
    struct FakeNode: LoadBalancerController {
        var datapath: [String: UInt64] = [:]
        var services: [LoadBalancerEntry] = []
        var replication: ReplicationStatus?
        var kernel: ReplicationStatus?
        var ha: HAStatus?

        func apply(_ request: LoadBalancerRequest) async throws {}
        func delete(_ key: ServiceKey) async throws {}
        func loadBalancers() async -> [LoadBalancerEntry] { services }
        func conntrack() async -> [ConntrackEntry] { [] }
        func status() async -> [String: UInt64] { datapath }
        func sync() async -> ReplicationStatus? { replication }
        func kernelSync() async -> ReplicationStatus? { kernel }
        func cluster() async -> HAStatus? { ha }
    }

    final class Collected: @unchecked Sendable {
        var buffer = ByteBuffer()
    }

    struct CollectingWriter: ResponseBodyWriter {
        let into: Collected
        mutating func write(_ buffer: ByteBuffer) async throws {
            var b = buffer
            into.buffer.writeBuffer(&b)
        }
        consuming func finish(_ trailingHeaders: HTTPFields?) async throws {}
    }

    /// Sends `GET /netlox/v1/metrics` through the router the daemon serves; returns status, content type, body.
    func scrape(_ node: FakeNode) async throws -> (HTTPResponse.Status, String?, String) {
        let responder = APIServer.makeRouter(controller: node).buildResponder()
        let channel = EmbeddedChannel()
        let context = BasicRequestContext(source: .init(channel: channel, logger: Logger(label: "metrics-test")))
        let request = Request(head: HTTPRequest(method: .get, scheme: "http", authority: "localhost", path: APIRoutes.metrics),
                              body: RequestBody(buffer: ByteBuffer()))
        let response = try await responder.respond(to: request, context: context)
        let collected = Collected()
        try await response.body.write(CollectingWriter(into: collected))
        return (response.status, response.headers[.contentType], String(buffer: collected.buffer))
    }

    func lines(_ text: String) -> Set<String> { Set(text.split(separator: "\n").map(String.init)) }

    func service(name: String, packets: UInt64, active: Int) throws -> LoadBalancerEntry {
        try JSONDecoder().decode(LoadBalancerEntry.self, from: Data("""
        {"serviceArguments":{"externalIP":"10.9.0.1","port":80,"protocol":"tcp","name":"\(name)"},
         "endpoints":[{"endpointIP":"10.9.0.21","targetPort":8080,"weight":1,"state":"active","counter":"7:700:2","healthTransitions":3},
                      {"endpointIP":"10.9.0.22","targetPort":8080,"weight":1,"state":"inactive","counter":"1:60:0"}],
         "counters":{"packets":\(packets),"bytes":4096,"newConnections":11,"activeConnections":\(active),"noEndpoint":6}}
        """.utf8))
    }

    func replication() -> ReplicationStatus {
        var counters = ReplicationCounters()
        counters.entriesSent = 120
        counters.entriesReceived = 80
        counters.entriesApplied = 78
        counters.retransmittedEntries = 5
        return ReplicationStatus(
            nodeID: 1, epoch: 1, inSync: true, entries: 64, liveEntries: 60, nextSequence: 9, retransmitWindow: 3,
            peers: [.init(id: 2, address: "10.9.0.2", inSync: false, lastHeardMillisecondsAgo: 250, streamCumulative: 8,
                          streamHasGap: true)],
            counters: counters, dropped: ["authFailed": 2], datagramsSent: 30, datagramsReceived: 20, bytesSent: 9000,
            installFailures: 0, lagP50Micros: 800, lagP99Micros: 2500, lagMaxMicros: 4000)
    }

    /// As the API serves it (HAStatus's memberwise initializer is internal to TandemHA).
    func cluster(instance: String) throws -> HAStatus {
        try JSONDecoder().decode(HAStatus.self, from: Data("""
        {"node":1,"address":"10.9.0.1","provider":"l2","inSync":true,"incarnation":9,
         "members":[{"node":1,"address":"10.9.0.1","state":"self","incarnation":9,"roles":{},"terms":{}},
                    {"node":2,"address":"10.9.0.2","state":"dead","incarnation":3,"lastHeardMs":1500,"roles":{},"terms":{}}],
         "instances":[{"name":"\(instance)","role":"MASTER","term":7,"master":1,"priority":100,"external":false,
                       "vips":["10.9.0.1"],"transitions":[],"takeovers":2,"takeoverFailures":0}],
         "counters":{"probesSent":40,"opened":33},"drops":{"replayed":1}}
        """.utf8))
    }

    @Test func routeServesTheNodeStateAsPrometheusText() async throws {
        TandemMetrics.bootstrap()
        let node = FakeNode(
            datapath: ["drop_no_endpoint": 4, "drop_table_full": 0, "events_stateChanged": 9, "events_lost": 1,
                       "icmp_replied": 2, "verdicts_received": 12, "verdicts_applied": 3],
            services: [try service(name: "metrics-web", packets: 100, active: 3)],
            replication: replication(), ha: try cluster(instance: "metrics-inst"))
        let (status, contentType, text) = try await scrape(node)
        #expect(status == .ok)
        #expect(contentType == "text/plain; version=0.0.4; charset=utf-8")
        let got = lines(text)
        let svc = #"service="metrics-web",vip="10.9.0.1",port="80",protocol="tcp""#
        for line in [
            "# TYPE tandem_datapath_dropped_packets_total counter",
            #"tandem_datapath_dropped_packets_total{reason="no_endpoint"} 4"#,
            #"tandem_datapath_dropped_packets_total{reason="table_full"} 0"#,
            #"tandem_datapath_events_total{kind="state_changed"} 9"#,
            "tandem_datapath_events_lost_total 1",
            "tandem_datapath_icmp_replies_total 2",
            #"tandem_cluster_verdicts_total{event="received"} 12"#,
            #"tandem_cluster_verdicts_total{event="applied"} 3"#,
            "# TYPE tandem_service_active_connections gauge",
            "tandem_service_active_connections{\(svc)} 3.0",
            "tandem_service_packets_total{\(svc)} 100",
            "tandem_service_bytes_total{\(svc)} 4096",
            "tandem_service_connections_total{\(svc)} 11",
            #"tandem_endpoint_active_connections{\#(svc),endpoint="10.9.0.21:8080"} 2.0"#,
            #"tandem_endpoint_bytes_total{\#(svc),endpoint="10.9.0.21:8080"} 700"#,
            #"tandem_endpoint_in_rotation{\#(svc),endpoint="10.9.0.21:8080"} 1.0"#,
            #"tandem_endpoint_in_rotation{\#(svc),endpoint="10.9.0.22:8080"} 0.0"#,
            #"tandem_endpoint_health_transitions_total{\#(svc),endpoint="10.9.0.21:8080"} 3"#,
            "tandem_service_no_endpoint_total{\(svc)} 6",
            "tandem_replication_in_sync 1.0",
            "tandem_replication_entries 64.0",
            "# TYPE tandem_replication_entries_sent_total counter",
            "tandem_replication_entries_sent_total 120",
            "tandem_replication_entries_received_total 80",
            "tandem_replication_entries_applied_total 78",
            "tandem_replication_retransmitted_entries_total 5",
            "tandem_replication_sent_bytes_total 9000",
            #"tandem_replication_dropped_messages_total{reason="auth_failed"} 2"#,
            "tandem_replication_lag_p50_seconds 0.0008",
            "tandem_replication_lag_p99_seconds 0.0025",
            #"tandem_replication_peer_in_sync{peer="10.9.0.2"} 0.0"#,
            #"tandem_replication_peer_stream_gap{peer="10.9.0.2"} 1.0"#,
            #"tandem_replication_peer_last_heard_seconds{peer="10.9.0.2"} 0.25"#,
            "# TYPE tandem_ha_role gauge",
            #"tandem_ha_role{instance="metrics-inst"} 1.0"#,
            #"tandem_ha_term{instance="metrics-inst"} 7.0"#,
            #"tandem_cluster_member_state{member="10.9.0.2",state="dead"} 1.0"#,
            #"tandem_cluster_member_state{member="10.9.0.2",state="alive"} 0.0"#,
            #"tandem_cluster_member_last_heard_seconds{member="10.9.0.2"} 1.5"#,
            "tandem_gossip_probes_sent_total 40",
            "tandem_gossip_messages_opened_total 33",
            #"tandem_gossip_dropped_messages_total{reason="replayed"} 1"#,
        ] {
            #expect(got.contains(line), "missing: \(line)")
        }
        // This node itself is not a member series.
        #expect(!text.contains(#"member="10.9.0.1""#))
        // Every sample line is `name{labels} value` with a snake_case tandem_ name.
        for line in got where !line.hasPrefix("#") {
            #expect(line.range(of: #"^tandem_[a-z0-9_]+(\{[^}]*\})? [0-9.e+-]+$"#, options: .regularExpression) != nil, "\(line)")
        }
    }

    @Test func countersFollowTheirSourceAndGoneSeriesDisappear() async throws {
        TandemMetrics.bootstrap()
        var node = FakeNode(datapath: ["drop_no_port": 5], services: [try service(name: "metrics-gone", packets: 50, active: 1)])
        var text = try await scrape(node).2
        #expect(lines(text).contains(#"tandem_datapath_dropped_packets_total{reason="no_port"} 5"#))
        #expect(text.contains(#"tandem_service_packets_total{service="metrics-gone""#))
        // The source went back (a service recreated in its slot): the counter shows its value, a reset to Prometheus.
        node.datapath["drop_no_port"] = 3
        node.services = []
        text = try await scrape(node).2
        #expect(lines(text).contains(#"tandem_datapath_dropped_packets_total{reason="no_port"} 3"#))
        #expect(!text.contains("metrics-gone"))
        // Not clustered: no replication or cluster series are left from earlier scrapes.
        #expect(!text.contains("tandem_replication_in_sync"))
        #expect(!text.contains(#"tandem_ha_term{instance="metrics-inst"}"#))
    }

    /// What TandemHA records through plain swift-metrics shows up in the same exposition.
    @Test func haEmissionPointsRender() async throws {
        TandemMetrics.bootstrap()
        let name = "metrics-ha"
        Timer(label: "tandem_takeover_duration_seconds", dimensions: [("instance", name), ("provider", "l2")])
            .recordNanoseconds(30_000_000)
        Timer(label: "tandem_takeover_duration_seconds", dimensions: [("instance", name), ("provider", "l2")])
            .recordNanoseconds(2_000_000_000)
        Counter(label: "tandem_role_changes_total", dimensions: [("instance", name), ("to", "MASTER")]).increment()
        Counter(label: "tandem_role_changes_total", dimensions: [("instance", name), ("to", "FAULT")]).increment()
        Gauge(label: "tandem_ha_role", dimensions: [("instance", name)]).record(2.0)
        Counter(label: "tandem_takeover_failures_total", dimensions: [("instance", name)]).increment()

        // Alongside a refreshed instance, so the HA gauge and the refresh share one family.
        let (status, _, text) = try await scrape(FakeNode(ha: try cluster(instance: "metrics-inst2")))
        #expect(status == .ok)
        let got = lines(text)
        let l2 = #"instance="metrics-ha",provider="l2""#
        for line in [
            "# TYPE tandem_takeover_duration_seconds histogram",
            #"tandem_takeover_duration_seconds_bucket{\#(l2),le="0.025"} 0"#,
            #"tandem_takeover_duration_seconds_bucket{\#(l2),le="0.05"} 1"#,
            #"tandem_takeover_duration_seconds_bucket{\#(l2),le="2.5"} 2"#,
            #"tandem_takeover_duration_seconds_bucket{\#(l2),le="+Inf"} 2"#,
            #"tandem_takeover_duration_seconds_count{\#(l2)} 2"#,
            #"tandem_takeover_duration_seconds_sum{\#(l2)} 2.03"#,
            "# TYPE tandem_role_changes_total counter",
            #"tandem_role_changes_total{instance="metrics-ha",to="MASTER"} 1"#,
            #"tandem_role_changes_total{instance="metrics-ha",to="FAULT"} 1"#,
            #"tandem_ha_role{instance="metrics-ha"} 2.0"#,
            #"tandem_ha_role{instance="metrics-inst2"} 1.0"#,
            "# TYPE tandem_takeover_failures_total counter",
            #"tandem_takeover_failures_total{instance="metrics-ha"} 1"#,
        ] {
            #expect(got.contains(line), "missing: \(line)")
        }
        #expect(got.filter { $0 == "# TYPE tandem_ha_role gauge" }.count == 1)
    }

    /// Kernel conntrack sync: its replication under its own prefix, the source's and sink's
    /// counters as counters, table sizes and the publish gate as gauges.
    @Test func kernelTableSyncRendersUnderItsOwnNames() async throws {
        TandemMetrics.bootstrap()
        let node = FakeNode(
            datapath: ["conntrack_source_newEvents": 41, "conntrack_sink_injected": 40, "conntrack_sink_failures_EINVAL": 1,
                       "conntrack_publishing": 1, "conntrack_source_entries": 39, "conntrack_sink_held": 0,
                       "conntrack_held_back_changes": 2],
            kernel: replication())
        let text = try await scrape(node).2
        let got = lines(text)
        for line in [
            "tandem_conntrack_source_new_events_total 41",
            "tandem_conntrack_sink_injected_total 40",
            #"tandem_conntrack_sink_failures_total{reason="EINVAL"} 1"#,
            "tandem_conntrack_held_back_changes_total 2",
            "# TYPE tandem_conntrack_publishing gauge",
            "tandem_conntrack_publishing 1.0",
            "tandem_conntrack_source_entries 39.0",
            "tandem_conntrack_sink_held 0.0",
            "tandem_conntrack_replication_in_sync 1.0",
            "tandem_conntrack_replication_entries_sent_total 120",
            "tandem_conntrack_replication_lag_p99_seconds 0.0025",
            #"tandem_conntrack_replication_peer_in_sync{peer="10.9.0.2"} 0.0"#,
        ] {
            #expect(got.contains(line), "missing: \(line)")
        }
        // The load balancer's own replication is absent here: only the kernel table replicates.
        #expect(!text.contains("tandem_replication_in_sync"))
    }

    @Test func bootstrapIsOncePerProcess() {
        TandemMetrics.bootstrap()
        #expect(TandemMetrics.bootstrap() == false)
    }
}
