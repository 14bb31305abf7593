import Foundation
import Testing
@testable import TandemAPI
import TandemAPIModels
@testable import TandemCore
@testable import TandemNode

/// The request bodies kube-loxilb builds (pkg/api/lb.go's LoadBalancerModel, every field, no
/// omitempty on most: so empty strings, zeros and empty lists arrive as such), and what LoxiLB's
/// own clients expect back.
@Suite struct KubeLoxilbRequestTests {
    /// makeLoxiLoadBalancerModel's output for a Service with loadBalancerSourceRanges, liveness
    /// and an http probe: the keys and capitalisation kube-loxilb's structs produce.
    static let kubeLoxilbBody = """
    {"serviceArguments":{"externalIP":"10.0.10.143","privateIP":"","port":56002,"protocol":"tcp","sel":4,"mode":2,
      "BGP":false,"Monitor":true,"inactiveTimeOut":1800,"block":0,"managed":true,"probetype":"http","probeport":80,
      "probereq":"/healthz","proberesp":"200","probeRetries":2,"probeTimeout":1,"name":"default_nginx:llb-inst0","oper":1},
     "secondaryIPs":[],"allowedSources":[{"prefix":"10.0.20.0/24"},{"prefix":"10.0.30.7/32"}],
     "endpoints":[{"endpointIP":"10.0.10.21","targetPort":30080,"weight":1,"state":"","counter":""},
                  {"endpointIP":"10.0.10.22","targetPort":30080,"weight":1,"state":"","counter":""}]}
    """

    func request(_ json: String) throws -> LoadBalancerRequest {
        try JSONDecoder().decode(LoadBalancerEntry.self, from: Data(json.utf8)).toRequest()
    }

    @Test func everyFieldKubeLoxilbSendsIsHonoured() throws {
        let r = try request(Self.kubeLoxilbBody)
        #expect(r.operation == .attach)
        #expect(r.service.selection == .leastConnections)
        #expect(r.service.mode == .fullnat)
        #expect(r.service.idleTimeout == 1800)
        #expect(r.service.allowedSources.map(\.description) == ["10.0.20.0/24", "10.0.30.7/32"])
        #expect(r.service.name == "default_nginx:llb-inst0")
        #expect(r.options.monitor && r.options.managed)
        #expect(r.options.probe == HealthProbe(kind: .http, port: 80, request: "/healthz", response: "200",
                                               timeoutSeconds: 1, retries: 2))
        // Listed back with every stored field, under LoxiLB's names.
        let listed = LoadBalancerEntry(service: r.service, options: r.options)
        let json = String(decoding: try JSONEncoder().encode(listed), as: UTF8.self)
        for key in ["\"inactiveTimeOut\":1800", "\"monitor\":true", "\"managed\":true", "\"probetype\":\"http\"",
                    "\"probereq\":\"\\/healthz\"", "\"probeRetries\":2", "\"sel\":4", "\"prefix\":\"10.0.20.0\\/24\""] {
            #expect(json.contains(key), "\(key) in \(json)")
        }
        // And what is listed is accepted again as the same rule (loxicmd save/apply round trip).
        let again = try JSONDecoder().decode(LoadBalancerEntry.self, from: Data(json.utf8)).toRequest()
        #expect(again.service == r.service && again.options == r.options)
    }

    @Test func keysMatchWithoutRegardToCaseAsGoDoes() throws {
        let lower = try request(#"{"serviceArguments":{"externalIP":"10.0.10.143","port":80,"protocol":"tcp","monitor":true,"bgp":false},"endpoints":[{"endpointIP":"10.0.10.21","targetPort":80}]}"#)
        let upper = try request(#"{"serviceArguments":{"externalIP":"10.0.10.143","port":80,"protocol":"tcp","Monitor":true,"BGP":false},"endpoints":[{"endpointIP":"10.0.10.21","targetPort":80}]}"#)
        #expect(lower == upper && lower.options.monitor)
    }

    @Test func inactiveTimeOutZeroKeepsTheNodesTimeouts() throws {
        let r = try request(#"{"serviceArguments":{"externalIP":"10.0.10.143","port":80,"protocol":"udp","inactiveTimeOut":0},"endpoints":[{"endpointIP":"10.0.10.21","targetPort":80}]}"#)
        #expect(r.service.idleTimeout == nil)
        #expect(r.service.persistTimeout == 10_800, "inactiveTimeOut is not the persistence timeout")
    }

    @Test(arguments: [
        (#""BGP":true"#, "BGP"),
        (#""privateIP":"10.0.0.5""#, "privateIP"),
        (#""proxyprotocolv2":true"#, "proxyprotocolv2"),
        (#""egress":true"#, "egress"),
        (#""snat":true"#, "snat"),
        (#""host":"shop.example""#, "host"),
        (#""security":1"#, "security"),
        (#""oper":3"#, "oper 3"),
        (#""sel":5"#, "sel 5 (n2"),
        (#""sel":7"#, "sel 7 (n3"),
        (#""mode":4"#, "mode 4 (fullproxy)"),
        (#""mode":3"#, "mode 3 (dsr)"),
        (#""portMax":90"#, "portMax"),
        (#""path_prefix":"/api""#, "path_prefix"),
        (#""inactiveTimeOut":90000"#, "inactiveTimeOut"),
        (#""probetype":"sctp""#, "probetype 'sctp'"),
        (#""probeport":8080"#, "probeport 8080 needs probetype"),
        (#""frobnicate":1"#, "serviceArguments.frobnicate"),
    ])
    func fieldsTandemCannotHonourAreRefusedByName(_ field: String, _ expected: String) throws {
        let body = #"{"serviceArguments":{"externalIP":"10.0.10.143","port":80,"protocol":"tcp","#
            + field + #"},"endpoints":[{"endpointIP":"10.0.10.21","targetPort":80}]}"#
        do {
            _ = try request(body)
            Issue.record("accepted \(field)")
        } catch let e as ServiceError {
            #expect(e.message.contains(expected), "\(e.message)")
        }
    }

    @Test func secondaryIPsAndBadSourcePrefixesAreRefused() throws {
        #expect(throws: ServiceError.self) {
            try request(#"{"serviceArguments":{"externalIP":"10.0.10.143","port":80,"protocol":"tcp"},"secondaryIPs":[{"secondaryIP":"10.0.10.144"}],"endpoints":[{"endpointIP":"10.0.10.21","targetPort":80}]}"#)
        }
        do {
            _ = try request(#"{"serviceArguments":{"externalIP":"10.0.10.143","port":80,"protocol":"tcp"},"allowedSources":[{"prefix":"10.0.20.0/24"},{"prefix":"fd00::/8"}],"endpoints":[{"endpointIP":"10.0.10.21","targetPort":80}]}"#)
            Issue.record("accepted an IPv6 prefix")
        } catch let e as ServiceError {
            #expect(e.message.contains("allowedSources[1].prefix"), "\(e.message)")
        }
    }

    @Test func answersAreShapedAsLoxiLBs() throws {
        let ok = String(decoding: try JSONEncoder().encode(APIErrorBody.success), as: UTF8.self)
        #expect(ok == #"{"result":"Success"}"#)
        let err = APIErrorBody(code: 409, message: "lbrule-exists error: x")
        #expect(err.result == "lbrule-exists error: x", "kube-loxilb reads the reason from result")
        #expect(err.result.contains("exist"))
    }
}

@Suite struct StateFileTests {
    func tempPath() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("tandem-state-\(UUID().uuidString).jsonl").path
    }

    func sample() throws -> NodeState {
        let e = try JSONDecoder().decode(LoadBalancerEntry.self, from: Data(KubeLoxilbRequestTests.kubeLoxilbBody.utf8))
        let r = try e.toRequest()
        var state = NodeState(services: [LoadBalancerEntry(service: r.service, options: r.options)], deleted: ["10.0.10.150:53/udp"],
                              stamps: ["10.0.10.143:56002/tcp": ServiceStamp(version: 1_700_000_000_000_001, origin: 0x0a000a8d),
                                       "10.0.10.150:53/udp": ServiceStamp(version: 1_700_000_000_000_009, origin: 0x0a000a58,
                                                                          tombstonedAt: 1_700_000_000_000_009)],
                              hostStates: ["10.0.10.21": "red", "10.0.10.22": "green"])
        // A host state keeps its cluster-shared version; one from an older file has none.
        state.hostStamps["10.0.10.21"] = ServiceStamp(version: 1_700_000_000_000_020, origin: 0x0a000a58)
        state.endpoints = [EndpointObjectEntry(hostName: "10.0.10.21", name: "10.0.10.21_tcp_80", inactiveReTries: 2,
                                               probeType: "http", probeReq: "healthz", probeResp: "", probeDuration: 5,
                                               probePort: 80)]
        return state
    }

    @Test func aSharedSpecIsTheSameBytesForTheSameRuleAndDecodesBackToIt() throws {
        let r = try JSONDecoder().decode(LoadBalancerEntry.self, from: Data(KubeLoxilbRequestTests.kubeLoxilbBody.utf8)).toRequest()
        let spec = NodeController.spec(r.service, r.options)
        // Two nodes given the same rule hold the same bytes, so their digests agree.
        let again = try JSONDecoder().decode(LoadBalancerEntry.self, from: Data(KubeLoxilbRequestTests.kubeLoxilbBody.utf8)).toRequest()
        #expect(NodeController.spec(again.service, again.options) == spec)
        #expect(spec.count > 0 && spec.count < 2048)
        let back = try JSONDecoder().decode(LoadBalancerEntry.self, from: Data(spec)).toRequest()
        #expect(back.service == r.service && back.options == r.options)
    }

    @Test func savedStateLoadsBackTheSame() throws {
        let path = tempPath()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = StateStore(path: path)
        #expect(try store.load() == nil, "no file yet: nothing to restore")
        let state = try sample()
        try store.save(state)
        #expect(try store.load() == state)
        var st = stat()
        #expect(stat(path, &st) == 0 && st.st_mode & 0o777 == 0o600)
        #expect(!FileManager.default.fileExists(atPath: path + ".tmp"))
    }

    @Test(arguments: [
        ("", "line 1"),
        ("{\"tandemState\":9}\n", "format version 9"),
        ("{\"tandemState\":1}\n{\"service\":{\"serviceArguments\":{\"externalIP\":\"10.0.10.143\",\"port\":80},\"endpoints\":[{\"endpointIP\":\"10.0.10.21\",\"targetPort\":80}]}}\n{oops\n", "line 3"),
        ("{\"tandemState\":1}\n{\"service\":{\"serviceArguments\":{\"externalIP\":\"10.0.10.1433\",\"port\":80},\"endpoints\":[{\"endpointIP\":\"10.0.10.21\",\"targetPort\":80}]}}\n", "line 2: externalIP"),
        ("{\"tandemState\":1}\n{}\n", "line 2: a record must hold"),
        ("{\"tandemState\":1}\n\n{\"deleted\":\"x\"}\n", "line 2: empty line"),
        ("{\"tandemState\":1}\n{\"stamp\":\"10.0.10.143:80/tcp\",\"version\":0,\"origin\":1}\n", "line 2: a stamp needs"),
        ("{\"tandemState\":1}\n{\"stamp\":\"nonsense\",\"version\":5,\"origin\":1}\n", "line 2: stamp key"),
        ("{\"tandemState\":1}\n{\"deleted\":\"x\",\"stamp\":\"10.0.10.143:80/tcp\",\"version\":5,\"origin\":1}\n", "line 2: a record must hold"),
        ("{\"tandemState\":1}\n{\"endpoint\":{\"hostName\":\"10.0.10.21\",\"probeType\":\"sctp\",\"probePort\":80}}\n", "line 2: endpoint object: host-args"),
    ])
    func damagedFilesAreReportedByLineAndLeftAlone(_ text: String, _ expected: String) throws {
        let path = tempPath()
        defer { try? FileManager.default.removeItem(atPath: path) }
        try text.write(toFile: path, atomically: false, encoding: .utf8)
        do {
            _ = try StateStore(path: path).load()
            Issue.record("loaded a damaged file")
        } catch {
            #expect(error.message.contains(path) && error.message.contains(expected), "\(error.message)")
        }
        #expect(try String(contentsOfFile: path, encoding: .utf8) == text, "left as it was")
    }

    @Test func serviceKeysParseFromTheirText() {
        let k = ServiceKey(vip: IPv4Address(10, 0, 10, 143), port: 56002, proto: .tcp)
        #expect(ServiceKey(text: k.description) == k)
        #expect(ServiceKey(text: "10.0.10.143:0/tcp") == nil)
        #expect(ServiceKey(text: "10.0.10.143/tcp") == nil)
    }
}

@Suite struct TokenTests {
    @Test func bothHeaderFormsAreAccepted() throws {
        let t = try APIToken(value: "s3cret-token-0123456789\n")
        #expect(t.accepts(authorization: "s3cret-token-0123456789"), "kube-loxilb sends the token alone")
        #expect(t.accepts(authorization: "Bearer s3cret-token-0123456789"))
        #expect(t.accepts(authorization: "bearer  s3cret-token-0123456789"))
        #expect(!t.accepts(authorization: nil))
        #expect(!t.accepts(authorization: "Bearer s3cret-token-012345678"))
        #expect(!t.accepts(authorization: "s3cret-token-0123456789x"))
        #expect(!t.accepts(authorization: ""))
    }

    @Test func weakTokensAndOpenTokenFilesAreRefused() throws {
        #expect(throws: APITokenError.self) { try APIToken(value: "short") }
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("tandem-token-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try "s3cret-token-0123456789".write(toFile: path, atomically: false, encoding: .utf8)
        chmod(path, 0o644)
        #expect { try APIToken.load(path: path) } throws: { ($0 as? APITokenError)?.message.contains("chmod 600") == true }
        chmod(path, 0o600)
        #expect(try APIToken.load(path: path).value == "s3cret-token-0123456789")
        #expect { try APIToken.load(path: path + "-missing") } throws: { ($0 as? APITokenError)?.message.contains("-missing") == true }
    }
}
