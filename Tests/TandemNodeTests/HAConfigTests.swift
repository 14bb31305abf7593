import Testing
@testable import TandemCore
import TandemHA
@testable import TandemNode

/// The cluster section's HA settings: defaults, flags' config equivalents, and every bad value
/// refused with a message that names it.
@Suite struct HAConfigTests {
    func ha(_ cluster: String, interfaces: [String] = ["eth0"]) throws(ConfigError) -> NodeConfig.HASettings? {
        try NodeConfig.parse(yaml: "cluster: \(cluster)").ha(interfaces: interfaces)
    }

    @Test func defaults() throws {
        let h = try #require(try ha("{peers: [10.0.10.88], keyFile: /k}"))
        #expect(h.gossipPort == 11113)
        #expect(h.cloud == "none")
        #expect(h.l2Interface == "eth0")
        #expect(h.instances == [HAInstanceConfig(name: "llb-inst0", priority: 100, vips: nil)])
    }

    @Test func notClusteredOrElectionOff() throws {
        #expect(try ha("{seed: 7}") == nil)
        #expect(try ha("{peers: [10.0.10.88], keyFile: /k, election: false}") == nil)
    }

    @Test func instancesAndSelf() throws {
        let cfg = try NodeConfig.parse(yaml: """
            cluster: {peers: [10.0.10.88], keyFile: /k, self: 1, cloud: L2, priority: 120,
                      instances: [{name: a, vips: [10.0.10.143]}, {name: b, priority: 7}]}
            """)
        let h = try #require(try cfg.ha(interfaces: ["eth0"]))
        #expect(h.cloud == "l2")
        #expect(h.instances == [HAInstanceConfig(name: "a", priority: 120, vips: [IPv4Address("10.0.10.143")!]),
                                HAInstanceConfig(name: "b", priority: 7, vips: nil)])
        // self: 1 of a two-node cluster takes the upper half of the SNAT ports.
        #expect(try cfg.portSlice() == PortSlice(nodeIndex: 1, nodeCount: 2))
    }

    @Test(arguments: [
        ("{peers: [10.0.10.88], keyFile: /k, cloud: aws}", "cloud 'aws' is unknown"),
        ("{peers: [10.0.10.88], keyFile: /k, gossipPort: 11112}", "gossipPort and syncPort must differ"),
        ("{peers: [10.0.10.88], keyFile: /k, gossipPort: 0}", "gossipPort must be 1-65535"),
        ("{peers: [10.0.10.88], keyFile: /k, priority: 0}", "priority must be 1-255"),
        ("{peers: [10.0.10.88], keyFile: /k, instances: [{name: a}, {name: a}]}", "listed twice"),
        ("{peers: [10.0.10.88], keyFile: /k, instances: [{name: a}, {name: b}]}", "only one instance may leave out 'vips'"),
        ("{peers: [10.0.10.88], keyFile: /k, instances: [{name: a, vips: [10.0.10.300]}]}", "is not an IPv4 address"),
        ("{peers: [10.0.10.88], keyFile: /k, instances: [{name: '', vips: []}]}", "name must be 1-64 bytes"),
    ])
    func badHASettingsRefused(_ cluster: String, _ expected: String) {
        #expect {
            _ = try ha(cluster)
        } throws: { error in
            (error as? ConfigError)?.message.contains(expected) == true
        }
    }

    @Test func l2NeedsAnInterface() {
        #expect(throws: ConfigError.self) { _ = try ha("{peers: [10.0.10.88], keyFile: /k, cloud: l2}", interfaces: []) }
    }
}
