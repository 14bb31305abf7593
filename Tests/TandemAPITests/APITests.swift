import Foundation
import Testing
@testable import TandemAPI
import TandemAPIModels
@testable import TandemCore
import TandemServiceSync
import TandemStatus

@Suite struct APIModelTests {
    func decode(_ json: String) throws -> LoadBalancerEntry {
        try JSONDecoder().decode(LoadBalancerEntry.self, from: Data(json.utf8))
    }

    @Test func kubeLoxilbShapedRequestDecodes() throws {
        let e = try decode("""
        {"serviceArguments":{"externalIP":"10.0.10.143","port":56002,"protocol":"tcp","sel":0,"mode":2,"name":"web",
          "bgp":false,"monitor":false,"inactiveTimeOut":0,"block":0,"managed":false},
         "endpoints":[{"endpointIP":"10.0.10.21","targetPort":80,"weight":1},{"endpointIP":"10.0.10.22","targetPort":80,"weight":2}],
         "secondaryIPs":[]}
        """)
        let s = try e.toService()
        #expect(s.key == ServiceKey(vip: IPv4Address(10, 0, 10, 143), port: 56002, proto: .tcp))
        #expect(s.mode == .fullnat)
        #expect(s.selection == .roundRobin)
        #expect(s.endpoints.map(\.weight) == [1, 2])
    }

    @Test func namesAcceptedForSelAndMode() throws {
        let e = try decode(#"{"serviceArguments":{"externalIP":"10.0.10.143","port":80,"protocol":"udp","sel":"hash","mode":"onearm"},"endpoints":[{"endpointIP":"10.0.10.21","targetPort":9000}]}"#)
        let s = try e.toService()
        #expect(s.selection == .maglev)
        #expect(s.mode == .onearm)
        #expect(s.endpoints[0].weight == 1)
    }

    @Test(arguments: [
        (#"{"serviceArguments":{"externalIP":"10.0.10","port":80,"protocol":"tcp"},"endpoints":[{"endpointIP":"10.0.10.21","targetPort":80}]}"#, "not an IPv4"),
        (#"{"serviceArguments":{"externalIP":"10.0.10.143","port":0,"protocol":"tcp"},"endpoints":[{"endpointIP":"10.0.10.21","targetPort":80}]}"#, "port must be"),
        (#"{"serviceArguments":{"externalIP":"10.0.10.143","port":80,"protocol":"sctp"},"endpoints":[{"endpointIP":"10.0.10.21","targetPort":80}]}"#, "protocol"),
        (#"{"serviceArguments":{"externalIP":"10.0.10.143","port":80,"protocol":"tcp","mode":7},"endpoints":[{"endpointIP":"10.0.10.21","targetPort":80}]}"#, "mode 7"),
        (#"{"serviceArguments":{"externalIP":"10.0.10.143","port":80,"protocol":"tcp","mode":"dsr"},"endpoints":[{"endpointIP":"10.0.10.21","targetPort":80}]}"#, "mode 'dsr'"),
        (#"{"serviceArguments":{"externalIP":"10.0.10.143","port":80,"protocol":"tcp","sel":9},"endpoints":[{"endpointIP":"10.0.10.21","targetPort":80}]}"#, "sel 9"),
        (#"{"serviceArguments":{"externalIP":"10.0.10.143","port":80,"protocol":"tcp"},"endpoints":[{"endpointIP":"10.0.10.21","targetPort":70000}]}"#, "targetPort"),
        (#"{"serviceArguments":{"externalIP":"10.0.10.143","port":80,"protocol":"tcp"},"endpoints":[{"endpointIP":"10.0.10.21","targetPort":80,"weight":0}]}"#, "weight"),
        (#"{"serviceArguments":{"externalIP":"10.0.10.143","port":80,"protocol":"tcp"},"endpoints":[]}"#, "no endpoints"),
    ])
    func invalidRequestsRefusedWithClearMessage(_ json: String, _ expected: String) throws {
        let e = try decode(json)
        do {
            _ = try e.toService()
            Issue.record("accepted \(json)")
        } catch {
            #expect(error.message.contains(expected), "\(error.message)")
        }
    }

    @Test func roundTripThroughService() throws {
        let s = Service(key: ServiceKey(vip: IPv4Address(10, 0, 10, 143), port: 56002, proto: .tcp), name: "web",
                        mode: .fullnat, selection: .persist, endpoints: [Endpoint(ip: IPv4Address(10, 0, 10, 21), port: 80, weight: 3)],
                        persistTimeout: 60)
        #expect(try LoadBalancerEntry(service: s).toService() == s)
    }

    @Test func openAPIDocumentIsValidJSONWithTheRoutes() throws {
        let obj = try JSONSerialization.jsonObject(with: Data(OpenAPIDocument.json.utf8)) as? [String: Any]
        let paths = try #require(obj?["paths"] as? [String: Any])
        #expect(paths[APIRoutes.loadBalancer] != nil)
        #expect(paths[APIRoutes.loadBalancerAll] != nil)
        #expect(paths[APIRoutes.conntrackAll] != nil)
        #expect(paths[APIRoutes.clusterServices] != nil)
        #expect(paths[APIRoutes.endpointHostState] != nil)
        #expect(paths[APIRoutes.endpoint] != nil)
        #expect(paths[APIRoutes.endpoint + "/epipaddress/{ip}"] != nil)
        #expect(paths[APIRoutes.bgp] != nil)
        #expect(paths[APIRoutes.nodeDrain] != nil)
    }
}

@Suite struct CLITests {
    @Test func portPairs() throws {
        let p = try CLIArguments.portPairs("56002:80,8080")
        #expect(p.map(\.0) == [56002, 8080])
        #expect(p.map(\.1) == [80, 8080])
        #expect(throws: CLIError.self) { try CLIArguments.portPairs("0:80") }
        #expect(throws: CLIError.self) { try CLIArguments.portPairs("80:x") }
    }

    @Test func endpointsWithWeights() throws {
        let e = try CLIArguments.endpoints("10.0.10.21:1,10.0.10.22:5,10.0.10.23", targetPort: 80)
        #expect(e.map(\.weight) == [1, 5, 1])
        #expect(throws: CLIError.self) { try CLIArguments.endpoints("10.0.10:1", targetPort: 80) }
        #expect(throws: CLIError.self) { try CLIArguments.endpoints("10.0.10.21:0", targetPort: 80) }
    }

    @Test func tablesHaveLoxicmdColumns() {
        let s = Service(key: ServiceKey(vip: IPv4Address(10, 0, 10, 143), port: 56002, proto: .tcp), name: "web",
                        mode: .fullnat, endpoints: [Endpoint(ip: IPv4Address(10, 0, 10, 21), port: 80)])
        let t = TableRenderer.loadBalancers([LoadBalancerEntry(service: s)], wide: false)
        #expect(t.contains("| EXT IP      | PORT  | PROTO | NAME | MARK | SEL | MODE    | # OF ENDPOINTS | MONITOR |"))
        #expect(t.contains("| 10.0.10.143 | 56002 | tcp   | web  | 0    | rr  | fullnat | 1              | Off     |"))
        // get ep: the node's own probe state beside the verdict in force and whose it is.
        var ep = EndpointHostEntry(hostName: "10.0.10.21", name: "10.0.10.143:56002/tcp", probeType: "tcp", currState: "up")
        ep.verdict = "down"
        ep.verdictFrom = "10.0.10.141"
        let eps = TableRenderer.endpointHosts([ep])
        #expect(eps.contains("| STATE | LAST PROBE | PROBED | IN STATE | IN FORCE | FROM        |"), "\(eps)")
        #expect(eps.contains("| up    | -          | -      | -        | down     | 10.0.10.141 |"), "\(eps)")
        // get cluster -o wide: whose verdicts this node holds, and how fresh.
        var sync = ServiceSyncStatus(node: 1, services: 1, digest: "00", tombstones: 0, peers: [], counters: ServiceSyncCounters(),
                                     dropped: [:], refused: 0)
        sync.verdicts = VerdictStatus(generation: 9, counters: VerdictCounters(), applied: 2,
                                      peers: [.init(node: 2, address: "10.0.10.141", generation: 7, receivedSecondsAgo: 0.5, down: 1,
                                                    fresh: true)])
        let wideSync = TableRenderer.serviceSync(sync, wide: true)
        #expect(wideSync.contains("| peer verdicts applied ") && wideSync.contains("| 10.0.10.141   | 7          | 1    | 0.5 s ago | yes   |"),
                "\(wideSync)")
        let ct = TableRenderer.conntrack([])
        #expect(ct.contains("SERVICE | DEST IP | SRC IP | DPORT | SPORT | PROTO | STATE | ACT | PACKETS | BYTES"))
    }
}
