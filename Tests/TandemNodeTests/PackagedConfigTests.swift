import Foundation
import Testing
@testable import TandemCore
@testable import TandemNode

/// packaging/config.yaml, which the Debian package installs as /etc/tandem/config.yaml.
@Suite struct PackagedConfigTests {
    static let example = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("packaging/config.yaml").path

    @Test func thePackagedExampleConfigParsesAndStartsWithNoService() throws {
        let c = try NodeConfig.load(path: Self.example)
        #expect(c.interfaces == ["eth0"])
        #expect(try c.validatedServices().isEmpty)
        #expect(try c.ha(interfaces: ["eth0"]) == nil && c.replication(nodeIP: ConfigReloadTests.node) == nil)
    }

    /// Every "#key:" and "#  key:" line uncommented is a full, valid config that sets every field of the schema
    /// (Decodable ignores unknown keys, so a misspelt key would otherwise pass unnoticed).
    @Test func thePackagedExampleDocumentsEverySettingValidly() throws {
        let text = try String(contentsOfFile: Self.example, encoding: .utf8)
        let full = text.split(separator: "\n", omittingEmptySubsequences: false).map { line -> Substring in
            // "# word" is prose; "#key:" and "#  key:" (nested) are the example.
            guard line.hasPrefix("#"), line.count > 1, !line.hasPrefix("# ") || line.hasPrefix("#  ") else { return line }
            return line.dropFirst()
        }.joined(separator: "\n")
        let c = try NodeConfig.parse(yaml: full)
        let api = try #require(c.api), cluster = try #require(c.cluster), oci = try #require(c.oci)
        let t = try #require(c.timeouts), s = try #require(c.services?.first)
        let set: [(String, Any?)] = [
            ("nodeIP", c.nodeIP), ("api.address", api.address), ("api.port", api.port), ("api.tokenFile", api.tokenFile),
            ("api.tlsCertificate", api.tlsCertificate), ("api.tlsKey", api.tlsKey),
            ("cluster.seed", cluster.seed), ("cluster.nodeIndex", cluster.nodeIndex), ("cluster.nodeCount", cluster.nodeCount),
            ("cluster.peers", cluster.peers), ("cluster.syncAddress", cluster.syncAddress), ("cluster.syncPort", cluster.syncPort),
            ("cluster.keyFile", cluster.keyFile), ("cluster.gossipPort", cluster.gossipPort), ("cluster.cloud", cluster.cloud),
            ("cluster.l2Interface", cluster.l2Interface), ("cluster.priority", cluster.priority),
            ("cluster.instances", cluster.instances), ("cluster.election", cluster.election),
            ("cluster.shareServices", cluster.shareServices), ("cluster.configSyncPort", cluster.configSyncPort),
            ("oci.config", oci.config), ("oci.profile", oci.profile), ("oci.apiEndpoint", oci.apiEndpoint),
            ("oci.imdsEndpoint", oci.imdsEndpoint), ("oci.vnicId", oci.vnicId),
            ("timeouts.tcpSyn", t.tcpSyn), ("timeouts.tcpEstablished", t.tcpEstablished), ("timeouts.tcpFin", t.tcpFin),
            ("timeouts.tcpClosed", t.tcpClosed), ("timeouts.udp", t.udp), ("timeouts.udpNew", t.udpNew), ("timeouts.icmp", t.icmp),
            ("connectionTableSize", c.connectionTableSize), ("eventRingBytes", c.eventRingBytes), ("answerICMP", c.answerICMP),
            ("xdp", c.xdp), ("stateFile", c.stateFile), ("datapath", c.datapath),
            ("conntrack.enabled", c.conntrack?.enabled), ("conntrack.mode", c.conntrack?.mode),
            ("conntrack.syncPort", c.conntrack?.syncPort), ("conntrack.reconcileSeconds", c.conntrack?.reconcileSeconds),
            ("conntrack.reconcileMaxSeconds", c.conntrack?.reconcileMaxSeconds),
            ("conntrack.filter", c.conntrack?.filter), ("conntrack.netlinkBufferBytes", c.conntrack?.netlinkBufferBytes),
            ("conntrack.netlinkBufferMaxBytes", c.conntrack?.netlinkBufferMaxBytes),
            ("service.protocol", s.protocol), ("service.mode", s.mode), ("service.sel", s.sel), ("service.name", s.name),
            ("service.snatIP", s.snatIP), ("service.persistTimeout", s.persistTimeout), ("service.inactiveTimeOut", s.inactiveTimeOut),
            ("service.allowedSources", s.allowedSources), ("service.resetOnEndpointDown", s.resetOnEndpointDown),
            ("service.monitor", s.monitor), ("service.probe", s.probe), ("service.endpoints.weight", s.endpoints.first?.weight),
        ]
        for (name, value) in set {
            if value == nil { Issue.record("the example does not set \(name)") }
        }
        #expect(try c.validatedServices().count == 1)
        #expect(try c.validatedServiceOptions().count == 1)
        #expect(try c.ha(interfaces: ["eth0"])?.cloud == "oci")
        #expect(try c.replication(nodeIP: ConfigReloadTests.node)?.peers == [IPv4Address(10, 0, 10, 88)])
        #expect(try c.serviceSharingPort() == 11114)
        #expect(try c.conntrackSettings()?.mode == .inject)
        _ = try c.validatedEventRingBytes()
        _ = try c.portSlice()
    }
}
