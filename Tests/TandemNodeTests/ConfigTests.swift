import Testing
import TandemConntrack
@testable import TandemCore
@testable import TandemNode

@Suite struct ConfigTests {
    let good = """
    interfaces: [eth0]
    cluster: {seed: 7, nodeIndex: 1, nodeCount: 2}
    timeouts: {tcpEstablished: 30, udp: 5}
    services:
      - externalIP: 10.0.10.143
        port: 56002
        protocol: tcp
        mode: fullnat
        sel: hash
        endpoints:
          - {ip: 10.0.10.21, port: 80}
          - {ip: 10.0.10.22, port: 80, weight: 2}
    """

    @Test func parsesAGoodConfig() throws {
        let c = try NodeConfig.parse(yaml: good)
        #expect(c.interfaces == ["eth0"])
        let s = try c.validatedServices()
        #expect(s.count == 1)
        #expect(s[0].selection == .maglev)
        #expect(s[0].endpoints[1].weight == 2)
        #expect(c.resolvedTimeouts().established == 30)
        #expect(c.resolvedTimeouts().udpEstablished == 5)
        let slice = try c.portSlice()
        #expect(slice.low > PortSlice.rangeLow && slice.high == PortSlice.rangeHigh)
    }

    @Test(arguments: [
        ("mode: fullnat", "mode: dsr", "mode 'dsr' is unknown"),
        ("externalIP: 10.0.10.143", "externalIP: 10.0.10.300", "not an IPv4 address"),
        ("port: 56002", "port: 0", "port must be 1-65535"),
        ("sel: hash", "sel: random", "sel 'random' is unknown"),
        ("protocol: tcp", "protocol: sctp", "protocol 'sctp'"),
        ("{ip: 10.0.10.21, port: 80}", "{ip: 10.0.10.21, port: 0}", "port must be 1-65535"),
        ("weight: 2", "weight: 0", "weight must be 1-255"),
    ])
    func badServiceFieldsGiveClearErrors(_ old: String, _ new: String, _ expected: String) throws {
        let c = try NodeConfig.parse(yaml: good.replacingOccurrences(of: old, with: new))
        do {
            _ = try c.validatedServices()
            Issue.record("accepted: \(new)")
        } catch {
            #expect(error.message.contains(expected), "\(error.message)")
        }
    }

    @Test func duplicateServiceRefused() throws {
        let dup = good + """

          - externalIP: 10.0.10.143
            port: 56002
            endpoints: [{ip: 10.0.10.21, port: 80}]
        """
        let c = try NodeConfig.parse(yaml: dup)
        #expect(throws: ConfigError.self) { try c.validatedServices() }
    }

    @Test func malformedYAMLAndWrongTypes() {
        #expect(throws: ConfigError.self) { try NodeConfig.parse(yaml: "services: [ {") }
        #expect(throws: ConfigError.self) { try NodeConfig.parse(yaml: "services:\n  - externalIP: 10.0.10.143\n    port: eighty\n    endpoints: []") }
        #expect(throws: ConfigError.self) { try NodeConfig.parse(yaml: "services:\n  - port: 80\n    endpoints: []") }
    }

    @Test func eventRingSizeMustBeAPowerOfTwoInRange() throws {
        #expect(try NodeConfig.parse(yaml: "interfaces: [eth0]").validatedEventRingBytes() == 1 << 22)
        #expect(try NodeConfig.parse(yaml: "eventRingBytes: 33554432").validatedEventRingBytes() == 1 << 25)
        for bad in ["1000000", "4096", "2147483648", "0"] { // not a power of two, too small, too big
            let c = try NodeConfig.parse(yaml: "eventRingBytes: \(bad)")
            #expect(throws: ConfigError.self) { try c.validatedEventRingBytes() }
        }
        #expect(throws: ConfigError.self) { try NodeConfig.parse(yaml: "eventRingBytes: -1") }
    }

    @Test func badClusterSlice() throws {
        let c = try NodeConfig.parse(yaml: "cluster: {nodeIndex: 2, nodeCount: 2}")
        #expect(throws: ConfigError.self) { try c.portSlice() }
    }

    @Test func servicesAskForProbesInTheConfigFile() throws {
        let yaml = """
        services:
          - externalIP: 10.0.10.143
            port: 80
            probe: http:/healthz:200
            endpoints: [{ip: 10.0.10.21, port: 8080}]
          - externalIP: 10.0.10.143
            port: 53
            protocol: udp
            monitor: true
            endpoints: [{ip: 10.0.10.21, port: 53}]
          - externalIP: 10.0.10.143
            port: 81
            endpoints: [{ip: 10.0.10.21, port: 8080}]
        """
        let opts = try NodeConfig.parse(yaml: yaml).validatedServiceOptions()
        let vip = IPv4Address(10, 0, 10, 143)
        #expect(opts[ServiceKey(vip: vip, port: 80, proto: .tcp)] == ServiceOptions(monitor: true, probe: HealthProbe(spec: "http:/healthz:200")))
        #expect(opts[ServiceKey(vip: vip, port: 53, proto: .udp)] == ServiceOptions(monitor: true))
        #expect(opts[ServiceKey(vip: vip, port: 81, proto: .tcp)] == nil)
        let bad = yaml.replacingOccurrences(of: "http:/healthz:200", with: "http:/healthz:999")
        do {
            _ = try NodeConfig.parse(yaml: bad).validatedServiceOptions()
            Issue.record("a bad probe was accepted")
        } catch {
            #expect(error.description.contains("services[0]") && error.description.contains("999"), "\(error)")
        }
    }
}

@Suite struct ConntrackConfigTests {
    let cluster = """
    cluster: {peers: [10.0.0.2], keyFile: /etc/tandem/cluster.key}
    """

    @Test func defaultsAndFilter() throws {
        let c = try NodeConfig.parse(yaml: cluster + """

        conntrack:
          mode: hold
          filter: {protocols: [tcp, udp], exclude: [10.9.0.0/16], nat: snat}
        """)
        let s = try #require(try c.conntrackSettings())
        #expect(s.port == 11115 && s.mode == .hold && s.reconcileSeconds == 30 && s.reconcileMaxSeconds == 3600)
        let fixed = try NodeConfig.parse(yaml: cluster + "\nconntrack: {reconcileSeconds: 60, reconcileMaxSeconds: 60}")
        #expect(try fixed.conntrackSettings()?.reconcileMaxSeconds == 60)
        #expect(s.netlinkBufferBytes == 4 << 20 && s.netlinkBufferMaxBytes == 64 << 20)
        #expect(s.filter.protocols == [6, 17] && s.filter.nat == .snat && s.filter.exclude.count == 1)
        #expect(try NodeConfig.parse(yaml: cluster).conntrackSettings() == nil)
        #expect(try NodeConfig.parse(yaml: cluster + "\nconntrack: {}").conntrackSettings()?.mode == .inject)
        #expect(try NodeConfig.parse(yaml: cluster + "\nconntrack: {enabled: false}").conntrackSettings() == nil)
    }

    @Test func badSettingsAreRefusedWithTheReason() {
        let cases: [(String, String)] = [
            ("conntrack: {}", "cluster.peers"),
            (cluster + "\nconntrack: {mode: mirror}", "mode must be inject or hold"),
            (cluster + "\nconntrack: {syncPort: 11112}", "syncPort and cluster.syncPort must differ"),
            (cluster + "\nconntrack: {syncPort: 70000}", "1-65535"),
            (cluster + "\nconntrack: {reconcileSeconds: 0}", "reconcileSeconds"),
            (cluster + "\nconntrack: {reconcileSeconds: 60, reconcileMaxSeconds: 30}", "reconcileMaxSeconds must be at least reconcileSeconds"),
            (cluster + "\nconntrack: {reconcileMaxSeconds: 100000}", "at most 86400"),
            (cluster + "\nconntrack: {filter: {protocols: [sctpx]}}", "filter"),
            (cluster + "\nconntrack: {netlinkBufferBytes: 100}", "netlinkBufferBytes must be"),
            (cluster + "\nconntrack: {netlinkBufferBytes: 1048576, netlinkBufferMaxBytes: 65536}", "at least netlinkBufferBytes"),
        ]
        for (yaml, reason) in cases {
            do {
                _ = try NodeConfig.parse(yaml: yaml).conntrackSettings()
                Issue.record("accepted: \(yaml)")
            } catch {
                #expect(error.message.contains(reason), "\(error.message)")
            }
        }
    }
}

/// `datapath: false`: a conntrack-only node's config, checked without root or interfaces.
@Suite struct ConntrackOnlyNodeConfigTests {
    let base = """
    datapath: false
    nodeIP: 10.0.10.141
    cluster:
      peers: [10.0.10.88]
      keyFile: /etc/tandem/cluster.key
      cloud: l2
      l2Interface: eth0
      instances: [{name: natgw, vips: [10.0.10.143]}]
    conntrack: {mode: hold}
    """

    func plan(_ yaml: String, interfaces: [String] = [], address: IPv4Address? = nil) throws(ConfigError) -> ConntrackNodeRunner.Plan {
        try ConntrackNodeRunner.plan(NodeConfig.parse(yaml: yaml), interfaces: interfaces,
                                     interfaceAddress: { _ in address }, interfaceExists: { $0 == "eth0" })
    }

    @Test func aGoodConfigPlansTheKernelTableAndTheElection() throws {
        let p = try plan(base)
        #expect(p.nodeIP == IPv4Address("10.0.10.141"))
        #expect(p.conntrack.mode == .hold && p.conntrack.port == 11115)
        #expect(p.replication.peers == [IPv4Address("10.0.10.88")].compactMap { $0 })
        #expect(p.ha?.cloud == "l2" && p.ha?.instances.first?.vips == [IPv4Address("10.0.10.143")].compactMap { $0 })
        // The node IP may come from the first interface instead.
        let fromInterface = try plan(base.replacingOccurrences(of: "nodeIP: 10.0.10.141\n", with: ""),
                                     interfaces: ["eth0"], address: IPv4Address("10.0.10.99"))
        #expect(fromInterface.nodeIP == IPv4Address("10.0.10.99"))
        // No election: both nodes publish, nothing moves.
        let noElection = try plan(base.replacingOccurrences(of: "cloud: l2", with: "election: false")
            .replacingOccurrences(of: "mode: hold", with: "mode: inject"))
        #expect(noElection.ha == nil)
        // A datapath node's config does not have to list instance VIPs (services give them).
        #expect(try NodeConfig.parse(yaml: "cluster: {peers: [10.0.0.2], keyFile: k}").datapath == nil)
    }

    @Test func badConfigsAreRefusedWithTheReason() {
        let cases: [(String, String)] = [
            (base + "\nservices:\n  - {externalIP: 10.0.10.143, port: 80, endpoints: [{ip: 10.0.10.21, port: 80}]}",
             "serves no load-balancer services"),
            (base + "\nxdp: true", "remove xdp"),
            (base + "\npersistDatapath: true", "remove persistDatapath"),
            (base.replacingOccurrences(of: "conntrack: {mode: hold}", with: ""), "add a conntrack: section"),
            (base.replacingOccurrences(of: "conntrack: {mode: hold}", with: "conntrack: {enabled: false}"),
             "add a conntrack: section"),
            (base.replacingOccurrences(of: "nodeIP: 10.0.10.141\n", with: ""), "needs nodeIP"),
            (base.replacingOccurrences(of: "nodeIP: 10.0.10.141", with: "nodeIP: 10.0.10.1411"), "not an IPv4 address"),
            (base.replacingOccurrences(of: "instances: [{name: natgw, vips: [10.0.10.143]}]", with: "priority: 110"),
             "must list its floating IPs"),
            (base.replacingOccurrences(of: "vips: [10.0.10.143]", with: "vips: []"), "must list its floating IPs"),
            (base.replacingOccurrences(of: "l2Interface: eth0", with: "l2Interface: eth9"), "eth9 does not exist"),
            (base.replacingOccurrences(of: "  keyFile: /etc/tandem/cluster.key\n", with: ""), "keyFile"),
            (base.replacingOccurrences(of: "mode: hold", with: "mode: mirror"), "mode must be inject or hold"),
            // Held entries are written at a takeover, and without an election there is none.
            (base.replacingOccurrences(of: "cloud: l2", with: "election: false"), "use mode: inject"),
        ]
        for (yaml, reason) in cases {
            do {
                _ = try plan(yaml)
                Issue.record("accepted: \(yaml)")
            } catch {
                #expect(error.message.contains(reason), "\(reason): \(error.message)")
            }
        }
        // An interface that does not exist, and one without an address.
        #expect(throws: ConfigError.self) { try plan(base, interfaces: ["eth7"]) }
        do {
            _ = try plan(base.replacingOccurrences(of: "nodeIP: 10.0.10.141\n", with: ""), interfaces: ["eth0"], address: nil)
            Issue.record("accepted an interface without an address")
        } catch {
            #expect(error.message.contains("has no IPv4 address"))
        }
    }
}
