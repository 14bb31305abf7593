import Foundation
import Testing
@testable import TandemOCI

private let vip = "10.0.10.143"
private let mine = "ocid1.vnic.oc1.iad.mine"
private let other = "ocid1.vnic.oc1.iad.other"
private let subnet = "ocid1.subnet.oc1.iad.sub"

private func ipJSON(id: String = "ocid1.privateip.oc1.iad.vip", vnic: String?, primary: Bool = false, ip: String = vip) -> String {
    let vnicValue = vnic.map { "\"\($0)\"" } ?? "null"
    return #"{"id":"\#(id)","ipAddress":"\#(ip)","vnicId":\#(vnicValue),"subnetId":"\#(subnet)","isPrimary":\#(primary),"extra":{"ignored":true}}"#
}

private func ok(_ json: String, id: String = "req-1") -> OCIResponseEvent {
    .http(status: 200, body: Array(json.utf8), opcRequestId: id, retryAfter: nil)
}

private func err(_ status: Int, _ code: String, retryAfter: Duration? = nil) -> OCIResponseEvent {
    .http(status: status, body: Array(#"{"code":"\#(code)","message":"m"}"#.utf8), opcRequestId: "rid-\(status)", retryAfter: retryAfter)
}

private func machine(subnetKnown: Bool = true, policy: TakeoverPolicy = TakeoverPolicy(), seed: UInt64 = 42) -> TakeoverMachine {
    TakeoverMachine(vip: vip, vnicId: mine, subnetId: subnetKnown ? subnet : nil, policy: policy, seed: seed)
}

private let list = OCIRequest.listPrivateIps(ipAddress: vip, subnetId: subnet)
private let move = OCIRequest.updatePrivateIp(privateIpId: "ocid1.privateip.oc1.iad.vip", vnicId: mine)

@Suite struct TakeoverMachineTests {
    @Test func alreadyOnMyVnicIsANoOp() {
        var m = machine()
        #expect(m.start(now: .zero) == .send(list, timeout: .seconds(10)))
        guard case .succeeded(let r) = m.onResponse(ok("[\(ipJSON(vnic: mine))]"), now: .milliseconds(5)) else {
            Issue.record("expected success"); return
        }
        #expect(r.outcome == .alreadyAssigned)
        #expect(r.attempts.count == 1)
        #expect(r.attempts[0].opcRequestId == "req-1")
    }

    @Test func onAnotherVnicMovesWithPut() {
        var m = machine()
        _ = m.start(now: .zero)
        #expect(m.onResponse(ok("[\(ipJSON(vnic: other))]"), now: .milliseconds(1)) == .send(move, timeout: .seconds(10)))
        #expect(String(decoding: move.body, as: UTF8.self) == #"{"vnicId":"\#(mine)"}"#)
        #expect(move.method == "PUT")
        guard case .succeeded(let r) = m.onResponse(ok(ipJSON(vnic: mine)), now: .milliseconds(2)) else {
            Issue.record("expected success"); return
        }
        #expect(r.outcome == .moved(fromVnicId: other))
        #expect(r.privateIpId == "ocid1.privateip.oc1.iad.vip")
    }

    @Test func unassignedIPIsMovedToo() {
        var m = machine()
        _ = m.start(now: .zero)
        #expect(m.onResponse(ok("[\(ipJSON(vnic: nil))]"), now: .zero) == .send(move, timeout: .seconds(10)))
    }

    @Test func absentIPIsCreatedWithRetryToken() {
        var m = machine()
        _ = m.start(now: .zero)
        let action = m.onResponse(ok("[]"), now: .zero)
        guard case .send(.createPrivateIp(let vnic, let ip, let token), _) = action else {
            Issue.record("expected create, got \(action)"); return
        }
        #expect(vnic == mine && ip == vip)
        #expect(token.count == 30 && token.allSatisfy { $0.isLetter || $0.isNumber })
        // A transient failure, then the same token again.
        #expect(m.onResponse(err(503, "ServiceUnavailable"), now: .zero) == .sleep(m.policy.backoff(failure: 1, unit: unitAt(seed: 42, draw: 30))))
        guard case .send(.createPrivateIp(_, _, let token2), _) = m.onTimer(now: .seconds(1)) else {
            Issue.record("expected create"); return
        }
        #expect(token2 == token)
        guard case .succeeded(let r) = m.onResponse(ok(ipJSON(id: "new", vnic: mine)), now: .seconds(1)) else {
            Issue.record("expected success"); return
        }
        #expect(r.outcome == .created && r.privateIpId == "new")
    }

    @Test func resolvesSubnetFirstWhenUnknown() {
        var m = machine(subnetKnown: false)
        #expect(m.start(now: .zero) == .send(.getVnic(vnicId: mine), timeout: .seconds(10)))
        let vnic = #"{"id":"\#(mine)","subnetId":"\#(subnet)","privateIp":"10.0.10.88","isPrimary":true}"#
        #expect(m.onResponse(ok(vnic), now: .zero) == .send(list, timeout: .seconds(10)))
        #expect(m.subnetId == subnet)
    }

    @Test func unknownVnicFails() {
        var m = machine(subnetKnown: false)
        _ = m.start(now: .zero)
        guard case .failed(.vnicNotFound(let e)) = m.onResponse(err(404, "NotAuthorizedOrNotFound"), now: .zero) else {
            Issue.record("expected vnicNotFound"); return
        }
        #expect(e.opcRequestId == "rid-404")
    }

    @Test func notAuthenticatedIsNotRetried() {
        for state in ["list", "move"] {
            var m = machine()
            _ = m.start(now: .zero)
            if state == "move" { _ = m.onResponse(ok("[\(ipJSON(vnic: other))]"), now: .zero) }
            guard case .failed(.notAuthenticated(let e)) = m.onResponse(err(401, "NotAuthenticated"), now: .zero) else {
                Issue.record("expected notAuthenticated"); continue
            }
            #expect(e.status == 401 && e.code == "NotAuthenticated")
            #expect(m.failures == 0)
        }
    }

    @Test(arguments: [(400, "InvalidParameter"), (403, "NotAuthorized"), (409, "Conflict"), (501, "MethodNotImplemented"),
                      (404, "NotAuthorizedOrNotFound")])
    func nonRetryableErrorsFailOnList(status: Int, code: String) {
        var m = machine()
        _ = m.start(now: .zero)
        guard case .failed(.rejected(let e)) = m.onResponse(err(status, code), now: .zero) else {
            Issue.record("expected rejected for \(status) \(code)"); return
        }
        #expect(e.code == code)
    }

    @Test(arguments: [(409, "IncorrectState"), (429, "TooManyRequests"), (500, "InternalServerError"),
                      (503, "ServiceUnavailable"), (502, "BadGateway"), (409, "LockConflict")])
    func transientErrorsAreRetriedAndReSent(status: Int, code: String) {
        var m = machine()
        _ = m.start(now: .zero)
        _ = m.onResponse(ok("[\(ipJSON(vnic: other))]"), now: .zero)
        guard case .sleep = m.onResponse(err(status, code), now: .milliseconds(10)) else {
            Issue.record("expected a retry for \(status) \(code)"); return
        }
        // The same PUT again after the sleep (the shell signs it anew).
        #expect(m.onTimer(now: .seconds(1)) == .send(move, timeout: .seconds(10)))
    }

    @Test func retryScheduleIsJitteredExponentialWithinCap() {
        let policy = TakeoverPolicy(deadline: .seconds(120), maxFailures: 7)
        var m = machine(policy: policy, seed: 7)
        _ = m.start(now: .zero)
        var now = Duration.zero
        var delays: [Duration] = []
        while true {
            let action = m.onResponse(err(500, "InternalServerError"), now: now)
            guard case .sleep(let d) = action else {
                guard case .failed(.tooManyFailures) = action else { Issue.record("\(action)"); return }
                break
            }
            delays.append(d)
            now += d
            _ = m.onTimer(now: now)
        }
        #expect(delays.count == 6)
        // min(0.5·2^(n-1) + U·0.5, 4): [0.5,1) [1,1.5) [2,2.5) then the 4 s cap.
        let lower = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
        let upper = [1.0, 1.5, 2.5, 4.0, 4.0, 4.0]
        for (i, d) in delays.enumerated() {
            #expect(d.seconds >= lower[i] && d.seconds <= upper[i], "retry \(i + 1): \(d)")
        }
        // Deterministic for a seed: replay the same draws (the token uses the first 30).
        var rng = SplitMix64(seed: 7)
        for _ in 0..<30 { _ = rng.next() }
        let expected = (1...3).map { policy.backoff(failure: $0, unit: rng.unit()) }
        #expect(Array(delays.prefix(3)) == expected)
        // Different seeds jitter differently.
        var m2 = machine(policy: policy, seed: 8)
        _ = m2.start(now: .zero)
        #expect(m2.onResponse(err(500, "InternalServerError"), now: .zero) != .sleep(delays[0]))
    }

    @Test func retryAfterIsHonouredWhenLonger() {
        var m = machine()
        _ = m.start(now: .zero)
        #expect(m.onResponse(err(429, "TooManyRequests", retryAfter: .seconds(3)), now: .zero) == .sleep(.seconds(3)))
    }

    @Test func deadlineStopsRetries() {
        let policy = TakeoverPolicy(deadline: .seconds(2), requestTimeout: .seconds(10))
        var m = machine(policy: policy)
        _ = m.start(now: .zero)
        guard case .sleep(let d) = m.onResponse(err(503, "ServiceUnavailable"), now: .milliseconds(100)) else {
            Issue.record("expected sleep"); return
        }
        // The request timeout is capped by what remains of the deadline.
        #expect(m.onTimer(now: .milliseconds(100) + d) == .send(list, timeout: .seconds(2) - (.milliseconds(100) + d)))
        guard case .failed(.deadlineExceeded(let last)) = m.onResponse(err(503, "ServiceUnavailable"), now: .milliseconds(1900)) else {
            Issue.record("expected deadline"); return
        }
        #expect(last.contains("503"))
        #expect(last.contains("rid-503"))
    }

    @Test func transportFailureOnPutLooksAgainBeforeRetrying() {
        var m = machine()
        _ = m.start(now: .zero)
        _ = m.onResponse(ok("[\(ipJSON(vnic: other))]"), now: .zero)
        guard case .sleep = m.onResponse(.transportFailure("timed out"), now: .seconds(10)) else {
            Issue.record("expected sleep"); return
        }
        #expect(m.onTimer(now: .seconds(11)) == .send(list, timeout: .seconds(10)))
        // The PUT had landed after all: already mine.
        guard case .succeeded(let r) = m.onResponse(ok("[\(ipJSON(vnic: mine))]"), now: .seconds(11)) else {
            Issue.record("expected success"); return
        }
        #expect(r.outcome == .alreadyAssigned)
        #expect(r.attempts.map(\.operation) == ["ListPrivateIps", "UpdatePrivateIp", "ListPrivateIps"])
        #expect(r.attempts[1].error == "timed out")
    }

    @Test func createConflictFromRacingNodeFallsBackToMove() {
        var m = machine()
        _ = m.start(now: .zero)
        _ = m.onResponse(ok("[]"), now: .zero)
        #expect(m.onResponse(err(409, "Conflict"), now: .zero) == .send(list, timeout: .seconds(10)))
        #expect(m.onResponse(ok("[\(ipJSON(vnic: other))]"), now: .zero) == .send(move, timeout: .seconds(10)))
    }

    @Test func putNotFoundOrEtagMismatchLooksAgain() {
        for code in [(404, "NotAuthorizedOrNotFound"), (412, "NoEtagMatch")] {
            var m = machine()
            _ = m.start(now: .zero)
            _ = m.onResponse(ok("[\(ipJSON(vnic: other))]"), now: .zero)
            #expect(m.onResponse(err(code.0, code.1), now: .zero) == .send(list, timeout: .seconds(10)))
        }
    }

    @Test func primaryIPIsNeverMoved() {
        var m = machine()
        _ = m.start(now: .zero)
        guard case .failed(.primaryIP) = m.onResponse(ok("[\(ipJSON(vnic: other, primary: true))]"), now: .zero) else {
            Issue.record("expected primaryIP"); return
        }
    }

    @Test func duplicateListingFails() {
        var m = machine()
        _ = m.start(now: .zero)
        let body = "[\(ipJSON(id: "a", vnic: other)),\(ipJSON(id: "b", vnic: mine))]"
        #expect(m.onResponse(ok(body), now: .zero) == .failed(.ipListedMoreThanOnce(count: 2)))
    }

    @Test func malformedBodiesFailClearly() {
        var m = machine()
        _ = m.start(now: .zero)
        guard case .failed(.malformedResponse) = m.onResponse(ok("<html>"), now: .zero) else {
            Issue.record("expected malformedResponse"); return
        }
        // A non-JSON error body becomes the message.
        var m2 = machine()
        _ = m2.start(now: .zero)
        let action = m2.onResponse(.http(status: 400, body: Array("bad gateway text".utf8), opcRequestId: nil, retryAfter: nil), now: .zero)
        #expect(action == .failed(.rejected(OCIServiceError(operation: "ListPrivateIps", status: 400, code: "Unknown",
                                                                message: "bad gateway text", opcRequestId: nil))))
    }

    @Test func invalidVIP() {
        var m = TakeoverMachine(vip: "10.0.10", vnicId: mine, subnetId: subnet, seed: 1)
        #expect(m.start(now: .zero) == .failed(.invalidVIP("10.0.10")))
    }

    @Test func classification() {
        func e(_ s: Int, _ c: String) -> OCIServiceError { OCIServiceError(operation: "x", status: s, code: c, message: "", opcRequestId: nil) }
        #expect(e(409, "IncorrectState").isRetryable)
        #expect(e(409, "ExternalServerIncorrectState").isRetryable)
        #expect(!e(409, "Conflict").isRetryable)
        #expect(e(429, "TooManyRequests").isRetryable)
        #expect(e(500, "InternalServerError").isRetryable)
        #expect(!e(501, "MethodNotImplemented").isRetryable)
        #expect(!e(401, "NotAuthenticated").isRetryable)
        #expect(!e(412, "NoEtagMatch").isRetryable)
    }

    @Test func regionsAndCIDRs() {
        #expect(OCIRegion.apiHost(region: "iad") == "iaas.us-ashburn-1.oraclecloud.com")
        #expect(OCIRegion.apiHost(region: "uk-gov-london-1", realmDomain: "oraclegovcloud.uk") == "iaas.uk-gov-london-1.oraclegovcloud.uk")
        #expect(OCIRegion.apiHost(region: "example.internal") == "iaas.example.internal")
        let cidr = IPv4CIDR("10.0.10.0/24")
        #expect(cidr?.contains(IPv4("10.0.10.143")!) == true)
        #expect(cidr?.contains(IPv4("10.0.11.1")!) == false)
        #expect(IPv4("10.0.10.256") == nil && IPv4("1.2.3") == nil && IPv4("+1.2.3.4") == nil && IPv4CIDR("10.0.0.0/33") == nil)
    }
}

/// The n-th draw (0-based) of U(0,1) from SplitMix64(seed).
private func unitAt(seed: UInt64, draw: Int) -> Double {
    var rng = SplitMix64(seed: seed)
    for _ in 0..<draw { _ = rng.next() }
    return rng.unit()
}
