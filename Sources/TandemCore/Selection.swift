/// The round-robin schedule the datapath walks for `rr`, `priority` and as persistence's
/// fallback: smooth weighted round-robin (nginx's), so heavy endpoints are interleaved rather
/// than bunched, at most `DatapathLimits.scheduleLength` slots long.
public enum WeightedSchedule {
    public static func build(weights: [UInt8], maxLength: Int = DatapathLimits.scheduleLength) -> [UInt8] {
        guard !weights.isEmpty, weights.count <= maxLength else { return [] }
        var w = weights.map { Int(max($0, 1)) }
        let g = w.reduce(0) { gcd($0, $1) }
        w = w.map { $0 / g }
        var total = w.reduce(0, +)
        if total > maxLength {
            // Scale down, keeping every endpoint at least one slot.
            let scale = Double(maxLength) / Double(total)
            w = w.map { max(1, Int((Double($0) * scale).rounded(.down))) }
            while w.reduce(0, +) > maxLength, let i = w.indices.max(by: { w[$0] < w[$1] }) { w[i] -= 1 }
            total = w.reduce(0, +)
        }
        var current = [Int](repeating: 0, count: w.count)
        var out: [UInt8] = []
        out.reserveCapacity(total)
        for _ in 0..<total {
            for i in w.indices { current[i] += w[i] }
            var best = 0
            for i in w.indices where current[i] > current[best] { best = i }
            current[best] -= total
            out.append(UInt8(best))
        }
        return out
    }

    static func gcd(_ a: Int, _ b: Int) -> Int { b == 0 ? a : gcd(b, a % b) }
}

/// The flow hash the datapath computes for Maglev (bpf/lib/common.h, tdm_flow_hash): murmur3's
/// finalizer over the tuple in host order. Both sides must agree bit for bit.
public enum FlowHash {
    @inlinable
    static func fmix32(_ x: UInt32) -> UInt32 {
        var h = x
        h ^= h >> 16
        h = h &* 0x85eb_ca6b
        h ^= h >> 13
        h = h &* 0xc2b2_ae35
        h ^= h >> 16
        return h
    }

    public static func hash(source: IPv4Address, destination: IPv4Address, sourcePort: UInt16,
                            destinationPort: UInt16, proto: UInt8, seed: UInt32) -> UInt32 {
        var h = seed ^ 0x9e37_79b9
        h = fmix32(h ^ source.value)
        h = fmix32(h ^ destination.value)
        h = fmix32(h ^ (UInt32(sourcePort) << 16 | UInt32(destinationPort)))
        h = fmix32(h ^ UInt32(proto))
        return h
    }

    /// 64-bit FNV-1a over bytes mixed with a seed; places endpoints in the Maglev table.
    public static func fnv1a(_ text: String, seed: UInt64) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325 ^ seed
        for b in text.utf8 {
            h ^= UInt64(b)
            h = h &* 0x0000_0100_0000_01b3
        }
        // Final avalanche so nearby names spread over the table.
        h ^= h >> 33
        h = h &* 0xff51_afd7_ed55_8ccd
        h ^= h >> 33
        return h
    }
}

/// Maglev consistent hashing (Eisenbud et al., NSDI'16) with weights as Katran does it: each
/// endpoint claims `weight` slots per round along its own permutation. Deterministic in the
/// endpoint identities and the cluster seed, so every node builds the same table.
public enum Maglev {
    public static func table(endpoints: [Endpoint], seed: UInt32, size m: Int = DatapathLimits.maglevM) -> [UInt8] {
        guard !endpoints.isEmpty, m > 1 else { return [] }
        let n = endpoints.count
        var offset = [Int](repeating: 0, count: n)
        var skip = [Int](repeating: 0, count: n)
        for (i, ep) in endpoints.enumerated() {
            offset[i] = Int(FlowHash.fnv1a(ep.identity, seed: UInt64(seed)) % UInt64(m))
            skip[i] = Int(FlowHash.fnv1a(ep.identity, seed: UInt64(seed) ^ 0x5bd1_e995_dead_beef) % UInt64(m - 1)) + 1
        }
        var next = [Int](repeating: 0, count: n)
        var table = [Int](repeating: -1, count: m)
        var filled = 0
        while filled < m {
            for i in 0..<n {
                for _ in 0..<Int(max(endpoints[i].weight, 1)) {
                    var c = (offset[i] + next[i] * skip[i]) % m
                    while table[c] >= 0 {
                        next[i] += 1
                        c = (offset[i] + next[i] * skip[i]) % m
                    }
                    table[c] = i
                    next[i] += 1
                    filled += 1
                    if filled == m { return table.map { UInt8($0) } }
                }
            }
        }
        return table.map { UInt8($0) }
    }

    /// The table with the endpoints at the indices in `down` taken out: a pure function of the
    /// endpoints (identities, weights, order), the seed and the down set, so every node that knows
    /// the same verdicts builds the same table and picks the same endpoint for a flow. Slots of
    /// live endpoints keep their owner, so flows on them never move; the down endpoints' slots go
    /// to the live endpoints as a table of the live ones alone would place them (by weight). With
    /// nothing down it is `table(endpoints:seed:)`, so a recovered endpoint gets its own slots
    /// back; with everything down it is empty (no endpoint). Indices outside `endpoints` are ignored.
    public static func table(endpoints: [Endpoint], seed: UInt32, down: Set<Int>,
                             size m: Int = DatapathLimits.maglevM) -> [UInt8] {
        let full = table(endpoints: endpoints, seed: seed, size: m)
        let live = endpoints.indices.filter { !down.contains($0) }
        guard live.count < endpoints.count, !full.isEmpty else { return full }
        guard !live.isEmpty else { return [] }
        let spare = table(endpoints: live.map { endpoints[$0] }, seed: seed, size: m)
        guard spare.count == full.count else { return [] }
        return full.indices.map { s in
            down.contains(Int(full[s])) ? UInt8(live[Int(spare[s])]) : full[s]
        }
    }

    /// The endpoint index the datapath picks for a flow, computed the same way.
    public static func pick(table: [UInt8], source: IPv4Address, destination: IPv4Address, sourcePort: UInt16,
                            destinationPort: UInt16, proto: UInt8, seed: UInt32) -> Int? {
        guard !table.isEmpty else { return nil }
        let h = FlowHash.hash(source: source, destination: destination, sourcePort: sourcePort,
                              destinationPort: destinationPort, proto: proto, seed: seed)
        return Int(table[Int(h % UInt32(table.count))])
    }
}

/// This node's share of the SNAT port space: the range is cut into `nodeCount` equal slices and
/// node `nodeIndex` allocates only from its own, so two nodes never hand out the same port.
public struct PortSlice: Equatable, Sendable {
    public var low: UInt16
    public var high: UInt16

    public static let rangeLow: UInt16 = 32768
    public static let rangeHigh: UInt16 = 65535

    public init(low: UInt16, high: UInt16) {
        self.low = low
        self.high = high
    }

    public init?(nodeIndex: Int, nodeCount: Int, low: UInt16 = rangeLow, high: UInt16 = rangeHigh) {
        guard nodeCount >= 1, (0..<nodeCount).contains(nodeIndex), low <= high else { return nil }
        let span = Int(high) - Int(low) + 1
        let per = span / nodeCount
        guard per >= 1 else { return nil }
        let lo = Int(low) + nodeIndex * per
        let hi = nodeIndex == nodeCount - 1 ? Int(high) : lo + per - 1
        self.low = UInt16(lo)
        self.high = UInt16(hi)
    }

    public func contains(_ port: UInt16) -> Bool { (low...high).contains(port) }
    public var count: Int { Int(high) - Int(low) + 1 }
}
