import Testing
@testable import TandemHealth

/// A fixed clock: only the order of results matters to the state machine.
private let t0 = ContinuousClock.now

private func at(_ ms: Int) -> ContinuousClock.Instant { t0 + .milliseconds(ms) }

private func machine(down: Int = 3, up: Int = 2) -> EndpointHealth {
    EndpointHealth(id: EndpointID("ep"), failuresToDown: down, successesToUp: up)
}

@Suite struct Hysteresis {
    @Test func firstSuccessMarksUnknownUp() {
        var h = machine()
        #expect(h.state == .unknown)
        let t = h.onProbeResult(.ok(), at: at(1))
        #expect(t.map(\.to) == [.up])
        #expect(t.first?.from == .unknown)
        #expect(h.lastChangeAt == at(1))
    }

    /// After a restart onto an adopted datapath: an endpoint held down starts down and needs the
    /// full `successesToUp` to come back, as any down endpoint does.
    @Test func assumedDownNeedsAllItsSuccessesToComeUp() {
        var h = machine(down: 3, up: 2)
        h.assumeDown()
        #expect(h.state == .down)
        #expect(h.onProbeResult(.failed("refused"), at: at(1)).isEmpty, "already down: no transition")
        #expect(h.onProbeResult(.ok(), at: at(2)).isEmpty, "one success is not enough")
        let t = h.onProbeResult(.ok(), at: at(3))
        #expect(t.map(\.from) == [.down] && t.map(\.to) == [.up])
    }

    @Test func assumeDownChangesNothingOnceProbedOrWithoutProbes() {
        var probed = machine()
        _ = probed.onProbeResult(.ok(), at: at(1))
        probed.assumeDown()
        #expect(probed.state == .up, "a probe's answer wins over what the last run held")
        var none = EndpointHealth(id: EndpointID("ep"), failuresToDown: 3, successesToUp: 2, probed: false)
        none.assumeDown()
        #expect(none.state == .up, "kind none has no probe that could bring it back")
    }

    @Test func nConsecutiveFailuresMarkDownNotFewer() {
        var h = machine(down: 3)
        _ = h.onProbeResult(.ok(), at: at(0))
        #expect(h.onProbeResult(.failed("timeout"), at: at(1)).isEmpty)
        #expect(h.onProbeResult(.failed("timeout"), at: at(2)).isEmpty)
        #expect(h.state == .up)
        let t = h.onProbeResult(.failed("refused"), at: at(3))
        #expect(t == [HealthTransition(endpoint: EndpointID("ep"), from: .up, to: .down, at: at(3), reason: "refused")])
        #expect(h.state == .down)
        // Further failures do not repeat the transition.
        #expect(h.onProbeResult(.failed("refused"), at: at(4)).isEmpty)
    }

    @Test func unknownNeedsTheSameFailuresToGoDown() {
        var h = machine(down: 2)
        #expect(h.onProbeResult(.failed("x"), at: at(1)).isEmpty)
        #expect(h.state == .unknown)
        #expect(h.onProbeResult(.failed("x"), at: at(2)).map(\.to) == [.down])
    }

    @Test func aSuccessResetsTheFailureCount() {
        var h = machine(down: 3)
        _ = h.onProbeResult(.ok(), at: at(0))
        // Two failures, a success, two failures: never three in a row (LoxiLB #1087 counted 4).
        for (i, ok) in [false, false, true, false, false, true, false, false].enumerated() {
            #expect(h.onProbeResult(ok ? .ok() : .failed("loss"), at: at(i + 1)).isEmpty)
        }
        #expect(h.state == .up)
        #expect(h.consecutiveFailures == 2)
    }

    @Test func aFailureResetsTheSuccessCount() {
        var h = machine(down: 1, up: 3)
        _ = h.onProbeResult(.ok(), at: at(0))
        #expect(h.onProbeResult(.failed("x"), at: at(1)).map(\.to) == [.down])
        for (i, ok) in [true, true, false, true, true, false].enumerated() {
            #expect(h.onProbeResult(ok ? .ok() : .failed("x"), at: at(i + 2)).isEmpty, "step \(i)")
        }
        #expect(h.state == .down)
        _ = h.onProbeResult(.ok(), at: at(10))
        _ = h.onProbeResult(.ok(), at: at(11))
        #expect(h.onProbeResult(.ok(), at: at(12)).map(\.to) == [.up])
    }

    @Test(arguments: [1, 2, 3, 5])
    func alternatingResultsNeverFlapWhenThresholdsExceedOne(threshold: Int) {
        var h = machine(down: max(2, threshold), up: max(2, threshold))
        _ = h.onProbeResult(.ok(), at: at(0))
        var changes = 0
        for i in 1...1000 { changes += h.onProbeResult(i % 2 == 0 ? .ok() : .failed("x"), at: at(i)).count }
        #expect(changes == 0)
        #expect(h.state == .up)
        #expect(h.transitions == 1)
    }

    @Test func downEndpointAlternatingStaysDown() {
        var h = machine(down: 2, up: 2)
        _ = h.onProbeResult(.failed("x"), at: at(0))
        _ = h.onProbeResult(.failed("x"), at: at(1))
        #expect(h.state == .down)
        var changes = 0
        for i in 2...200 { changes += h.onProbeResult(i % 2 == 0 ? .ok() : .failed("x"), at: at(i)).count }
        #expect(changes == 0)
        #expect(h.state == .down)
    }

    @Test func keepsTheLastResultAndTimes() {
        var h = machine()
        _ = h.onProbeResult(.ok("status 200"), at: at(5))
        _ = h.onProbeResult(.failed("status 503"), at: at(9))
        #expect(h.lastResult == .failed("status 503"))
        #expect(h.lastProbeAt == at(9))
        #expect(h.lastChangeAt == at(5))
    }
}

@Suite struct ExternalVerdictRule {
    @Test func redOverridesHealthyProbes() {
        var h = machine()
        _ = h.onProbeResult(.ok(), at: at(0))
        let t = h.setVerdict(.red, at: at(1))
        #expect(t.map(\.to) == [.down])
        #expect(h.probeState == .up)
        // Probes keep running and counting, but cannot bring it back while red.
        for i in 2...10 { #expect(h.onProbeResult(.ok(), at: at(i)).isEmpty) }
        #expect(h.state == .down)
        #expect(h.setVerdict(.green, at: at(11)).map(\.to) == [.up])
    }

    @Test func greenCannotRaiseAnEndpointTheProbesFindDead() {
        var h = machine(down: 1)
        _ = h.onProbeResult(.failed("refused"), at: at(0))
        #expect(h.state == .down)
        #expect(h.setVerdict(.green, at: at(1)).isEmpty)
        #expect(h.state == .down)
    }

    @Test func yellowIsKeptButDoesNotChangeRotation() {
        var h = machine()
        _ = h.onProbeResult(.ok(), at: at(0))
        #expect(h.setVerdict(.yellow, at: at(1)).isEmpty)
        #expect(h.state == .up)
        #expect(h.verdict == .yellow)
    }

    @Test func unprobedEndpointFollowsTheVerdictAlone() {
        var h = EndpointHealth(id: EndpointID("ep"), spec: ProbeSpec(kind: .none))
        #expect(h.state == .up)
        #expect(h.onProbeResult(.failed("ignored"), at: at(0)).isEmpty)
        #expect(h.setVerdict(.red, at: at(1)).map(\.to) == [.down])
        #expect(h.setVerdict(nil, at: at(2)).map(\.to) == [.up])
    }

    @Test func combineTable() {
        for p in [HealthState.unknown, .up, .down] {
            #expect(EndpointHealth.combine(p, .red) == .down)
            #expect(EndpointHealth.combine(p, .green) == p)
            #expect(EndpointHealth.combine(p, .yellow) == p)
            #expect(EndpointHealth.combine(p, nil) == p)
        }
    }
}

@Suite struct UDPUnreachable {
    @Test func silenceShortlyAfterAnUnreachableCountsAsFailure() {
        var m = UnreachableMemory(hold: .milliseconds(1500))
        let unreachable = ProbeResult.failed(ProbeResult.portUnreachable)
        let silence = ProbeResult.ok(ProbeResult.noUnreachable)
        #expect(m.filter(silence, at: at(0)) == silence)
        #expect(m.filter(unreachable, at: at(100)) == unreachable)
        #expect(!m.filter(silence, at: at(1000)).success)
        #expect(!m.filter(silence, at: at(1599)).success)
        // A reply proves the port open, even right after an unreachable.
        #expect(m.filter(.ok("reply"), at: at(1599)) == .ok("reply"))
        #expect(m.filter(silence, at: at(1600)) == silence)
        // Other failures (a timeout waiting to send, say) are not remembered.
        #expect(m.filter(.failed("timeout"), at: at(2000)) == .failed("timeout"))
        #expect(m.filter(silence, at: at(2001)) == silence)
    }

    @Test func rateLimitedUnreachablesStillMarkAClosedPortDown() {
        // A closed port behind Linux's ICMP rate limit: one unreachable per second, silence between.
        var m = UnreachableMemory()
        var h = machine(down: 3, up: 2)
        _ = h.onProbeResult(.ok(), at: at(0))
        var downAt: Int?
        for ms in stride(from: 150, through: 5000, by: 150) {
            let raw: ProbeResult = ms % 1050 == 0 ? .failed(ProbeResult.portUnreachable) : .ok(ProbeResult.noUnreachable)
            if !h.onProbeResult(m.filter(raw, at: at(ms)), at: at(ms)).isEmpty, downAt == nil { downAt = ms }
        }
        #expect(downAt == 1350)
        #expect(h.state == .down)
    }
}
