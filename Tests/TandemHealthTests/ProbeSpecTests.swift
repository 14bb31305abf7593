import Testing
@testable import TandemHealth

@Suite struct SpecParser {
    @Test func httpWithPathAndStatus() throws {
        let s = try ProbeSpec.parse("http:/healthz:200")
        #expect(s.kind == .http)
        #expect(s.path == "/healthz")
        #expect(s.expectedStatus == 200)
        #expect(s.port == nil)
        #expect(s.tlsVerify)
        #expect(s.timing == .default)
    }

    @Test func httpsInsecure() throws {
        let s = try ProbeSpec.parse("https:/ready:200:insecure")
        #expect(s.kind == .https && s.path == "/ready" && s.expectedStatus == 200 && !s.tlsVerify)
    }

    @Test func simpleKinds() throws {
        #expect(try ProbeSpec.parse("tcp") == ProbeSpec(kind: .tcp))
        #expect(try ProbeSpec.parse("tcp:8080").port == 8080)
        #expect(try ProbeSpec.parse("udp:53").port == 53)
        #expect(try ProbeSpec.parse("ping").kind == .ping)
        #expect(try ProbeSpec.parse("none").kind == .none)
        #expect(try ProbeSpec.parse("HTTP").path == "/")
        let u = try ProbeSpec.parse("udp:9000:hello:hello")
        #expect(u.port == 9000 && u.request == "hello" && u.expectedBody == "hello")
        let h = try ProbeSpec.parse("http:/:port=8080:body=ok:any")
        #expect(h.port == 8080 && h.expectedBody == "ok" && h.expectedStatus == nil)
    }

    @Test(arguments: ["http:/healthz:200", "https:/ready:200:insecure", "tcp", "tcp:8080", "udp:53", "udp:9000:hi:hi",
                      "udp::hi", "ping", "none", "http:/x:port=81:body=ok"])
    func roundTripsThroughItsCLIForm(text: String) throws {
        let s = try ProbeSpec.parse(text)
        #expect(try ProbeSpec.parse(s.cliDescription) == s, "\(s.cliDescription)")
    }

    @Test(arguments: [
        ("", "empty probe"),
        ("icmp", "unknown probe kind 'icmp'"),
        ("sctp", "sctp probes are not supported"),
        ("tcp:0", "'0' is not a port"),
        ("tcp:70000", "'70000' is not a port"),
        ("tcp:80:90", "tcp takes at most a port"),
        ("ping:1", "ping takes no arguments"),
        ("none:x", "none takes no arguments"),
        ("http:/x:999", "HTTP status must be 100-599"),
        ("http:/x:insecure", "'insecure' applies to https only"),
        ("http:/x:banana", "unexpected 'banana'"),
        ("http:/x:port=", "is not a port"),
        ("http:/x:body=", "body= needs text"),
        ("http:200:/x", "the path must come first"),
        ("http:/a b", "must not contain spaces"),
        ("udp:1:2:3:4", "udp takes"),
    ])
    func refusesBadInputClearly(text: String, message: String) {
        #expect {
            _ = try ProbeSpec.parse(text)
        } throws: { error in
            "\(error)".contains(message)
        }
    }

    @Test func timingValidation() {
        var t = ProbeTiming.default
        t.failuresToDown = 0
        #expect(throws: ProbeSpecError.self) { try t.validate() }
        t = .default
        t.attempts = 17
        #expect(throws: ProbeSpecError.self) { try t.validate() }
        t = .default
        t.jitter = 0.6
        #expect(throws: ProbeSpecError.self) { try t.validate() }
        t = .default
        t.interval = .milliseconds(1)
        #expect(throws: ProbeSpecError.self) { try t.validate() }
        #expect(throws: Never.self) { try ProbeTiming.default.validate() }
    }
}

@Suite struct LoxiLBFields {
    @Test func httpWithRequestAndResponse() throws {
        let s = try ProbeSpec.fromLoxiLB(probetype: "http", probeport: 8080, probereq: "healthz", proberesp: "OK",
                                         probeTimeout: 0, probeRetries: 0)
        #expect(s.kind == .http && s.port == 8080 && s.path == "/healthz")
        #expect(s.expectedStatus == 200 && s.expectedBody == "OK")
        #expect(s.timing == .default)
    }

    @Test func timeoutIsThePeriodAndRetriesTheFailureCount() throws {
        let s = try ProbeSpec.fromLoxiLB(probetype: "TCP", probeport: nil, probereq: nil, proberesp: nil,
                                         probeTimeout: 10, probeRetries: 5)
        #expect(s.kind == .tcp && s.port == nil)
        #expect(s.timing.interval == .seconds(10))
        #expect(s.timing.timeout == ProbeTiming.default.timeout)
        #expect(s.timing.failuresToDown == 5)
        #expect(s.timing.successesToUp == ProbeTiming.default.successesToUp)
    }

    @Test func udpPayloadAndExpectedReply() throws {
        let s = try ProbeSpec.fromLoxiLB(probetype: "udp", probeport: 53, probereq: "ping", proberesp: "pong",
                                         probeTimeout: nil, probeRetries: nil)
        #expect(s.kind == .udp && s.port == 53 && s.request == "ping" && s.expectedBody == "pong")
        let silent = try ProbeSpec.fromLoxiLB(probetype: "udp", probeport: 0, probereq: "", proberesp: "",
                                              probeTimeout: nil, probeRetries: nil)
        #expect(silent.expectedBody == nil && silent.port == nil)
    }

    @Test func emptyTypeFollowsTheServiceProtocol() throws {
        func kind(_ proto: String) throws -> ProbeKind {
            try ProbeSpec.fromLoxiLB(probetype: "", probeport: nil, probereq: nil, proberesp: nil, probeTimeout: nil,
                                     probeRetries: nil, serviceProtocol: proto).kind
        }
        #expect(try kind("tcp") == .tcp)
        #expect(try kind("udp") == .udp)
        #expect(try kind("icmp") == .ping)
        #expect(throws: ProbeSpecError.self) { try kind("sctp") }
    }

    @Test func refusals() {
        func map(_ type: String?, port: Int? = nil, timeout: Int? = nil, retries: Int? = nil) throws {
            _ = try ProbeSpec.fromLoxiLB(probetype: type, probeport: port, probereq: nil, proberesp: nil,
                                         probeTimeout: timeout, probeRetries: retries)
        }
        #expect { try map("sctp") } throws: { "\($0)".contains("sctp is not supported") }
        #expect { try map("grpc") } throws: { "\($0)".contains("'grpc' is not supported") }
        #expect { try map("ping", port: 80) } throws: { "\($0)".contains("needs probetype") }
        #expect { try map("tcp", port: 70000) } throws: { "\($0)".contains("probeport") }
        #expect { try map("tcp", timeout: -1) } throws: { "\($0)".contains("probeTimeout") }
        #expect { try map("tcp", retries: 101) } throws: { "\($0)".contains("probeRetries") }
    }
}
