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
