import Testing
import TandemCore

@Suite struct WarningLimiterTests {
    @Test func oneWarningPerIntervalWithTheCountHeldBack() {
        var w = WarningLimiter(intervalMillis: 10_000)
        #expect(w.admit(nowMillis: 5) == 0, "the first goes through")
        #expect(w.admit(nowMillis: 6) == nil)
        #expect(w.admit(nowMillis: 10_004) == nil, "still inside the interval")
        #expect(w.admit(nowMillis: 10_005) == 2, "the next one reports the two held back")
        #expect(w.admit(nowMillis: 20_005) == 0, "and the count starts again")
    }

    @Test func aClockThatStartsNearZeroStillLetsTheFirstThrough() {
        var w = WarningLimiter()
        #expect(w.admit(nowMillis: 0) == 0)
        #expect(w.admit(nowMillis: 9_999) == nil)
    }
}
