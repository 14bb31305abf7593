import TandemBGP
import TandemCore
import TandemNode
import Testing

@Suite struct BGPConfigTests {
    let nodeIP = IPv4Address(10, 0, 10, 141)

    func settings(_ yaml: String) throws(ConfigError) -> NodeConfig.BGPConfigSettings? {
        try NodeConfig.parse(yaml: yaml).bgpSettings(nodeIP: nodeIP)
    }

    func message(_ yaml: String) -> String {
        do { _ = try settings(yaml); return "" } catch { return error.message }
    }

    let activeActive = """
        cluster: {peers: [10.0.10.88], keyFile: /k, election: false}
        bgp:
          asn: 65001
          neighbors: [{address: 10.0.10.1, asn: 65000, password: pw}]
          communities: ["65000:100", "1:2:3"]
          backup: {med: 30}
        """

    @Test func activeActiveDefaults() throws {
        let b = try #require(try settings(activeActive))
        #expect(b.settings.mode == .activeActive)
        #expect(b.settings.routerID == nodeIP && b.settings.sourceAddress == nodeIP)
        #expect(b.settings.neighbors == [BGPNeighbor(address: IPv4Address(10, 0, 10, 1), asn: 65000, password: "pw")])
        #expect(b.settings.holdSeconds == 9 && !b.settings.bfd)
        #expect(b.settings.communities == [.standard(65000, 100), .large(1, 2, 3)])
        #expect(b.settings.primary == .primary)
        #expect(b.settings.backup == BGPAttributes(localPref: 100, med: 30))
        #expect(b.speaker == "/usr/sbin/bird" && b.runDirectory == "/run/tandem/bgp-10.0.10.141")
    }

    @Test func masterBackupGoesWithCloudBGP() throws {
        let yaml = """
            cluster: {peers: [10.0.10.88], keyFile: /k, cloud: bgp}
            bgp: {asn: 65001, neighbors: [{address: 10.0.10.1, asn: 65000}], bfd: true, holdSeconds: 3}
            """
        let b = try #require(try settings(yaml))
        #expect(b.settings.mode == .masterBackup && b.settings.bfd && b.settings.holdSeconds == 3)
        let ha = try NodeConfig.parse(yaml: yaml).ha(interfaces: ["eth0"])
        #expect(ha?.cloud == "bgp")
    }

    @Test func badBGPConfigsSayWhat() {
        let cases: [(String, String)] = [
            ("bgp: {neighbors: [{address: 10.0.10.1, asn: 65000}]}", "asn is required"),
            ("bgp: {asn: 65001}", "neighbors is empty"),
            ("bgp: {asn: 65001, neighbors: [{address: ten, asn: 65000}]}", "is not an IPv4 address"),
            ("bgp: {asn: 65001, neighbors: [{address: 10.0.10.1, asn: 65000}, {address: 10.0.10.1, asn: 65000}]}", "listed twice"),
            ("bgp: {asn: 65001, neighbors: [{address: 10.0.10.1, asn: 65000, password: 'a\"b'}]}", "password must be"),
            ("bgp: {asn: 65001, holdSeconds: 2, neighbors: [{address: 10.0.10.1, asn: 65000}]}", "holdSeconds must be 3-65535"),
            ("bgp: {asn: 65001, communities: ['65536:1'], neighbors: [{address: 10.0.10.1, asn: 65000}]}", "community '65536:1'"),
            ("bgp: {asn: 65001, mode: ecmp, neighbors: [{address: 10.0.10.1, asn: 65000}]}", "mode must be"),
            ("bgp: {asn: 65001, mode: master-backup, neighbors: [{address: 10.0.10.1, asn: 65000}]}", "set cluster.cloud: bgp"),
            ("cluster: {peers: [10.0.10.88], keyFile: /k}\nbgp: {asn: 65001, mode: active-active, neighbors: [{address: 10.0.10.1, asn: 65000}]}",
             "set cluster.election: false"),
            ("cluster: {peers: [10.0.10.88], keyFile: /k, cloud: bgp}\nbgp: {asn: 65001, neighbors: [{address: 10.0.10.1, asn: 65000}], backup: {localPref: 5000, med: 10}}",
             "primary and backup attributes are equal"),
            ("bgp: {asn: 65001, primary: {prepend: 17}, neighbors: [{address: 10.0.10.1, asn: 65000}]}", "prepend must be 0-16"),
            ("bgp: {asn: 65001, runDirectory: relative, neighbors: [{address: 10.0.10.1, asn: 65000}]}", "absolute path"),
        ]
        for (yaml, want) in cases {
            #expect(message(yaml).contains(want), "\(yaml) -> \(message(yaml))")
        }
    }

    @Test func sourceAddressesOnePerNodeByIndex() throws {
        let yaml = """
            cluster: {peers: [10.0.10.88, 10.0.10.89], keyFile: /k, election: false, nodeIndex: 1}
            bgp: {asn: 65001, neighbors: [{address: 10.0.10.1, asn: 65000}], snatAddresses: [10.0.10.201, 10.0.10.202, 10.0.10.203]}
            """
        let b = try #require(try settings(yaml))
        #expect(b.settings.snatAddress == IPv4Address(10, 0, 10, 202))
        #expect(b.settings.peerSNATAddresses == [IPv4Address(10, 0, 10, 201), IPv4Address(10, 0, 10, 203)])
        #expect(message(yaml.replacingOccurrences(of: ", 10.0.10.203]", with: "]")).contains("one address per node (3"))
        #expect(message(yaml.replacingOccurrences(of: "10.0.10.203]", with: "10.0.10.201]")).contains("listed twice"))
        #expect(message(yaml.replacingOccurrences(of: "10.0.10.203]", with: "127.0.0.1]")).contains("not a unicast"))
        #expect(message("""
            cluster: {peers: [10.0.10.88], keyFile: /k, cloud: bgp}
            bgp: {asn: 65001, neighbors: [{address: 10.0.10.1, asn: 65000}], snatAddresses: [10.0.10.201, 10.0.10.202]}
            """).contains("for mode active-active"))
    }

    @Test func cloudBGPWithoutABGPSectionIsRefused() {
        do {
            _ = try NodeConfig.parse(yaml: "cluster: {peers: [10.0.10.88], keyFile: /k, cloud: bgp}").ha(interfaces: ["eth0"])
            Issue.record("accepted")
        } catch {
            #expect(error.message.contains("needs a bgp section"))
        }
    }
}

@Suite struct UnknownConfigKeyTests {
    func message(_ yaml: String) -> String {
        do { _ = try NodeConfig.parse(yaml: yaml); return "" } catch { return error.message }
    }

    @Test func aMisspeltKeyIsRefusedWithItsPath() {
        #expect(message("bgp: {asn: 65001, holdSecs: 3, neighbors: [{address: 10.0.10.1, asn: 65000}]}")
            .contains("unknown key 'bgp.holdSecs'"))
        #expect(message("bgp: {asn: 65001, neighbors: [{address: 10.0.10.1, asn: 65000, pasword: x}]}")
            .contains("'bgp.neighbors[0].pasword'"))
        #expect(message("interfaces: [eth0]\nbgpp: {asn: 1}\ncluster: {peers: [10.0.10.88], keyFile: /k, cloudd: l2}")
            .contains("unknown keys 'bgpp', 'cluster.cloudd'"))
        #expect(message("""
            services:
              - {externalIP: 10.0.10.143, port: 80, endpoints: [{ip: 10.0.10.21, port: 80, wieght: 2}]}
            """).contains("'services[0].endpoints[0].wieght'"))
        #expect(message("conntrack: {filter: {protocol: [tcp]}}").contains("'conntrack.filter.protocol'"))
    }

    @Test func everyDocumentedKeyIsKnown() throws {
        // The keys the test bed, the package and the docs use, renamed ones (self) included.
        let yaml = """
            interfaces: [eth0]
            nodeIP: 10.0.10.141
            api: {address: 127.0.0.1, port: 11111, tokenFile: /t, tlsCertificate: /c, tlsKey: /k}
            cluster: {seed: 1, nodeIndex: 0, nodeCount: 2, self: 0, peers: [10.0.10.88], syncAddress: 10.0.10.141,
                      syncPort: 11112, keyFile: /k, gossipPort: 11113, cloud: l2, l2Interface: eth0, priority: 110,
                      instances: [{name: llb-inst0, priority: 100, vips: [10.0.10.143]}], election: true,
                      shareServices: true, configSyncPort: 11114, restartHoldSeconds: 10}
            timeouts: {tcpSyn: 1, tcpEstablished: 2, tcpFin: 3, tcpClosed: 4, udp: 5, udpNew: 6, icmp: 7}
            connectionTableSize: 262144
            eventRingBytes: 4194304
            answerICMP: true
            xdp: false
            services:
              - {externalIP: 10.0.10.143, port: 80, protocol: tcp, mode: fullnat, sel: rr, name: web, snatIP: 10.0.10.9,
                 persistTimeout: 60, inactiveTimeOut: 30, allowedSources: [10.0.0.0/8], resetOnEndpointDown: true,
                 monitor: true, probe: "http:/:200", endpoints: [{ip: 10.0.10.21, port: 80, weight: 1}]}
            oci: {config: /c, profile: DEFAULT, apiEndpoint: http://x, imdsEndpoint: http://y, vnicId: v}
            conntrack: {enabled: true, mode: inject, syncPort: 11115, reconcileSeconds: 30, reconcileMaxSeconds: 3600,
                        filter: {protocols: [tcp], include: [10.0.0.0/8], exclude: [10.0.10.141/32], zones: [0], marks: ["0x1/0xff"], nat: any},
                        netlinkBufferBytes: 4194304, netlinkBufferMaxBytes: 67108864}
            datapath: true
            stateFile: /s
            persistDatapath: false
            pinDirectory: /sys/fs/bpf/tandem
            """
        _ = try NodeConfig.parse(yaml: yaml)
    }
}
