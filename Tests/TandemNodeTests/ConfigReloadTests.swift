import Foundation
import Testing
@testable import TandemAPI
import TandemAPIModels
@testable import TandemCore
@testable import TandemNode

@Suite struct ConfigReloadTests {
    static let node = IPv4Address(10, 0, 10, 141)

    func config(_ services: String, extra: String = "") throws -> NodeConfig {
        try NodeConfig.parse(yaml: "interfaces: [eth0]\n\(extra)\nservices:\n\(services)")
    }

    let web = """
      - externalIP: 10.0.10.143
        port: 56002
        mode: fullnat
        endpoints: [{ip: 10.0.10.21, port: 80}, {ip: 10.0.10.22, port: 80}]
    """
    let dns = """
      - externalIP: 10.0.10.143
        port: 53
        protocol: udp
        endpoints: [{ip: 10.0.10.21, port: 53}]
    """
    let api = """
      - externalIP: 10.0.10.144
        port: 443
        endpoints: [{ip: 10.0.10.22, port: 8443}]
    """

    func plan(_ running: NodeConfig, _ next: NodeConfig) throws -> ConfigReloadPlan {
        try ConfigReload.plan(running: running, next: next, interfaces: ["eth0"], nodeIP: Self.node)
    }

    @Test func theSameServicesSpelledDifferentlyChangeNothing() throws {
        let running = try config(web)
        let next = try config(web.replacingOccurrences(of: "mode: fullnat", with: "mode: fullnat\n    protocol: tcp\n    sel: rr"))
        let p = try plan(running, next)
        #expect(p.actions.isEmpty && p.needsRestart.isEmpty, "\(p)")
    }

    @Test func removalsThenChangesThenAdditions() throws {
        let running = try config(web + "\n" + dns)
        let changed = web.replacingOccurrences(of: ", {ip: 10.0.10.22, port: 80}", with: "")
        let next = try config(api + "\n" + changed)
        let p = try plan(running, next)
        let keys = p.actions.map(\.key.description)
        #expect(keys == ["10.0.10.143:53/udp", "10.0.10.143:56002/tcp", "10.0.10.144:443/tcp"], "\(keys)")
        guard p.actions.count == 3 else { return }
        #expect(p.actions[0] == .remove(ServiceKey(vip: IPv4Address(10, 0, 10, 143), port: 53, proto: .udp)))
        guard case .update(let s, _) = p.actions[1], case .add(let a, _) = p.actions[2] else {
            Issue.record("\(p.actions)")
            return
        }
        #expect(s.endpoints.map(\.ip) == [IPv4Address(10, 0, 10, 21)])
        #expect(a.key.port == 443 && a.endpoints.first?.port == 8443)
        #expect(p.keys.count == 2 && p.needsRestart.isEmpty)
    }

    @Test func aProbeChangeIsAnUpdate() throws {
        let running = try config(web)
        let next = try config(web + "\n    probe: http:/healthz:200")
        let p = try plan(running, next)
        guard p.actions.count == 1, case .update(_, let o) = p.actions[0] else {
            Issue.record("\(p.actions)")
            return
        }
        #expect(o.monitor && o.probe.spec == "http:/healthz:200", "\(o)")
    }

    @Test func settingsThatNeedARestartAreNamedAndNotActedOn() throws {
        let running = try config(web)
        let next = try config(web, extra: "connectionTableSize: 1048576\ntimeouts: {udp: 5}\nxdp: true")
        let p = try plan(running, next)
        #expect(p.actions.isEmpty)
        #expect(p.needsRestart == ["timeouts", "connectionTableSize", "xdp"], "\(p.needsRestart)")
        let other = try NodeConfig.parse(yaml: "interfaces: [eth1]\ncluster: {peers: [10.0.10.88], keyFile: /k}\nservices:\n\(web)")
        #expect(try plan(running, other).needsRestart == ["interfaces", "cluster"])
    }

    @Test(arguments: [
        ("port: 56002", "port: 0", "port must be 1-65535"),
        ("mode: fullnat", "mode: dsr", "mode 'dsr' is unknown"),
        ("mode: fullnat", "mode: fullnat\n    probe: smtp", "probe 'smtp'"),
        ("mode: fullnat", "mode: fullnat\n    allowedSources: [10.0.20.0/33]", "allowedSources[0]"),
    ])
    func aBadServiceRefusesTheWholeFile(_ old: String, _ new: String, _ expected: String) throws {
        let running = try config(dns)
        let next = try config(dns + "\n" + web.replacingOccurrences(of: old, with: new))
        do {
            _ = try plan(running, next)
            Issue.record("accepted: \(new)")
        } catch {
            #expect("\(error)".contains(expected), "\(error)")
        }
    }

    @Test func badClusterSettingsAndDuplicatesRefuseTheWholeFile() throws {
        let running = try config(web)
        for (extra, services, expected) in [
            ("cluster: {peers: [10.0.10.88]}", web, "keyFile"),
            ("cluster: {peers: [10.0.10.88], keyFile: /k, cloud: aws}", web, "cloud 'aws'"),
            ("eventRingBytes: 1000", web, "eventRingBytes"),
            ("", web + "\n" + web, "already exists"),
        ] {
            do {
                _ = try plan(running, try config(services, extra: extra))
                Issue.record("accepted: \(extra)")
            } catch {
                #expect("\(error)".contains(expected), "\(extra): \(error)")
            }
        }
    }

    @Test func aFailedActionKeepsTheOldEntryForTheNextReload() throws {
        let running = try config(web + "\n" + dns)
        let changed = web.replacingOccurrences(of: ", {ip: 10.0.10.22, port: 80}", with: "")
        let next = try config(changed + "\n" + api, extra: "xdp: true")
        let webKey = ServiceKey(vip: IPv4Address(10, 0, 10, 143), port: 56002, proto: .tcp)
        let dnsKey = ServiceKey(vip: IPv4Address(10, 0, 10, 143), port: 53, proto: .udp)
        let apiKey = ServiceKey(vip: IPv4Address(10, 0, 10, 144), port: 443, proto: .tcp)
        // The update, the removal and the addition all failed: the node runs what it ran.
        let none = ConfigReload.applied(running: running, next: next, failed: [webKey, dnsKey, apiKey])
        #expect(try plan(running, none).actions.isEmpty)
        #expect(none.xdp == nil, "settings that need a restart keep their running value")
        // Only the addition failed: the next reload of the same file tries it alone.
        let some = ConfigReload.applied(running: running, next: next, failed: [apiKey])
        let again = try plan(some, next)
        #expect(again.actions.map(\.key) == [apiKey], "\(again.actions)")
        #expect(again.needsRestart == ["xdp"])
    }

    /// Reloads apply services through the API's path: the entry a service turns into must come
    /// back as the same service and options.
    @Test func servicesRoundTripThroughTheAPIEntry() throws {
        let c = try config(web + "\n    sel: hash\n    inactiveTimeOut: 60\n    allowedSources: [10.0.20.0/24]\n    resetOnEndpointDown: true\n    probe: http:/healthz:200\n" + dns)
        let options = try c.validatedServiceOptions()
        for s in try c.validatedServices() {
            let o = options[s.key] ?? ServiceOptions()
            let r = try LoadBalancerEntry(service: s, options: o).toRequest()
            #expect(r.service == s && r.options == o && r.operation == .add, "\(s.key)")
        }
    }
}
