import Testing
import TandemTestSupport
import TandemSync
import TandemSealing

@Suite struct ReplayWindowTests {
    @Test func acceptsOnceRejectsZero() {
        var w = ReplayWindow()
        #expect(w.highest == 0)
        #expect(w.accept(0) == .tooOld)
        #expect(w.accept(1) == .fresh)
        #expect(w.accept(1) == .duplicate)
        #expect(w.accept(3) == .fresh)
        #expect(w.accept(2) == .fresh)
        #expect(w.accept(2) == .duplicate)
        #expect(w.highest == 3)
    }

    @Test func checkDoesNotRecord() {
        var w = ReplayWindow()
        #expect(w.check(5) == .fresh)
        #expect(w.check(5) == .fresh)
        #expect(w.highest == 0)
        w.accept(5)
        #expect(w.check(5) == .duplicate)
    }

    @Test func windowEdges() {
        var w = ReplayWindow()
        w.accept(5000)
        let size = UInt64(ReplayWindow.size)
        #expect(w.check(5000 - size + 1) == .fresh)   // the oldest still inside
        #expect(w.check(5000 - size) == .tooOld)
        #expect(w.accept(5000 - size + 1) == .fresh)
        #expect(w.accept(5000 - size + 1) == .duplicate)
        // Sliding by one pushes it out.
        w.accept(5001)
        #expect(w.check(5000 - size + 1) == .tooOld)
    }

    @Test func inOrderForLong() {
        var w = ReplayWindow()
        for s in UInt64(1)...20_000 {
            #expect(w.accept(s) == .fresh)
        }
        for s in UInt64(20_000 - 1023)...20_000 { #expect(w.check(s) == .duplicate) }
        #expect(w.check(20_000 - 1024) == .tooOld)
    }

    @Test func jumpsClearStaleBits() {
        var w = ReplayWindow()
        var accepted = Set<UInt64>()
        for s in UInt64(1)...1000 {
            w.accept(s)
            accepted.insert(s)
        }
        // Jumps of a block, a block and a bit, exactly the ring (17 blocks), a little more, and
        // huge: no bit may survive into the new window from a sequence it did not accept.
        for jump in [UInt64(64), 65, 1088, 1089, 1 << 40] {
            let top = w.highest + jump
            #expect(w.accept(top) == .fresh)
            accepted.insert(top)
            for s in (top - 1023)...top {
                #expect(w.check(s) == (accepted.contains(s) ? .duplicate : .fresh), "sequence \(s) after a jump of \(jump)")
            }
        }
    }

    @Test func extremeSequences() {
        var w = ReplayWindow()
        #expect(w.accept(.max) == .fresh)
        #expect(w.accept(.max) == .duplicate)
        #expect(w.accept(.max - 1023) == .fresh)
        #expect(w.accept(.max - 1024) == .tooOld)
        #expect(w.accept(1) == .tooOld)
    }

    /// Against a straightforward model (a set of everything accepted) under random traffic:
    /// mostly increasing with reordering, duplicates, and occasional jumps.
    @Test func matchesAModel() {
        var rng = TestRNG(seed: 99)
        var w = ReplayWindow()
        var seen = Set<UInt64>()
        var highest: UInt64 = 0
        var head: UInt64 = 1
        for _ in 0..<100_000 {
            let r = rng.next()
            switch r % 10 {
            case 0: head += 1 + r % 3000                     // jump
            case 1, 2: head += 1
            default: break
            }
            let back = (rng.next() % 1300)
            let s = head > back ? head - back : 0
            let expected: ReplayWindow.Verdict
            if s == 0 || (s <= highest && highest - s >= 1024) {
                expected = .tooOld
            } else if seen.contains(s) {
                expected = .duplicate
            } else {
                expected = .fresh
            }
            let got = w.accept(s)
            if got != expected {
                Issue.record("sequence \(s) (highest \(highest)): \(got), model says \(expected)")
                return
            }
            if got == .fresh {
                seen.insert(s)
                highest = max(highest, s)
            }
        }
    }
}
