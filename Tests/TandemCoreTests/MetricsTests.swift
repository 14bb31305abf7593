import Foundation
import Testing
import TandemHA
@testable import TandemNode

/// The Prometheus export: counters the node keeps are mirrored as counters that follow them.
@Suite struct MetricsTests {
    @Test func mirroredCountersFollowTheirSource() {
        NodeMetrics.bootstrap()
        let first = NodeMetrics.render(datapath: ["test_mirror_a": 3], replication: nil, cluster: nil)
        #expect(first.contains(#"tandem_datapath_total{counter="test_mirror_a"} 3"#))
        let second = NodeMetrics.render(datapath: ["test_mirror_a": 5], replication: nil, cluster: nil)
        #expect(second.contains(#"tandem_datapath_total{counter="test_mirror_a"} 5"#))
        #expect(second.contains("# TYPE tandem_datapath_total counter"))
    }

    @Test func clusterStateIsExported() {
        NodeMetrics.bootstrap()
        // As the API serves it (HAStatus's memberwise initializer is internal to TandemHA).
        let json = #"""
        {"node":1,"address":"10.0.0.1","provider":"l2","inSync":true,"incarnation":9,
         "members":[{"node":2,"address":"10.0.0.2","state":"dead","incarnation":3,"lastHeardMs":500,"roles":{},"terms":{}}],
         "instances":[{"name":"test-inst","role":"MASTER","term":7,"master":1,"priority":100,"external":false,
                       "vips":["10.0.0.9"],"transitions":[],"takeovers":2,"takeoverFailures":0}],
         "counters":{"probesSent":40},"drops":{"authFailed":1}}
        """#
        guard let status = try? JSONDecoder().decode(HAStatus.self, from: Data(json.utf8)) else {
            Issue.record("fixture does not decode")
            return
        }
        let text = NodeMetrics.render(datapath: [:], replication: nil, cluster: status)
        #expect(text.contains(#"tandem_ha_term{instance="test-inst"} 7.0"#))
        #expect(text.contains(#"tandem_ha_takeovers_total{instance="test-inst"} 2"#))
        #expect(text.contains(#"tandem_member_state{member="10.0.0.2",state="dead"} 1.0"#))
        #expect(text.contains(#"tandem_gossip_dropped_total{reason="authFailed"} 1"#))
    }
}
