/// Anti-replay window over message sequence numbers, as IPsec does it (RFC 4303 §3.4.3) with the
/// ring-of-blocks bitmap of RFC 6479: advancing the window clears whole 64-bit blocks instead of
/// shifting the bitmap. Accepts each sequence at most once; accepts sequences up to `size - 1`
/// below the highest seen, in any order; rejects anything older.
///
/// Sequence numbers start at 1; 0 is never valid.
public struct ReplayWindow: Hashable, Sendable {
    /// How far below the highest accepted sequence a late message is still accepted.
    public static let size = 1024
    /// One block more than the window needs: the `size` sequences below and including `highest`
    /// can straddle size/64 + 1 blocks, and none of them may share a ring slot.
    static let blockCount = size / 64 + 1

    /// Highest sequence accepted so far; 0 before the first.
    public private(set) var highest: UInt64 = 0
    private var blocks = [UInt64](repeating: 0, count: blockCount)

    public init() {}

    public enum Verdict: Hashable, Sendable {
        case fresh
        /// Already accepted once.
        case duplicate
        /// Below the window (or 0): cannot be told apart from a replay, so rejected.
        case tooOld
    }

    /// What `accept` would answer, without recording anything. The opener checks before the tag
    /// verifies (cheaply) and records only after it has.
    public func check(_ sequence: UInt64) -> Verdict {
        if sequence == 0 { return .tooOld }
        if sequence > highest { return .fresh }
        if highest - sequence >= UInt64(Self.size) { return .tooOld }
        let (block, bit) = Self.position(sequence)
        return blocks[block] & bit == 0 ? .fresh : .duplicate
    }

    /// Checks and, when fresh, records the sequence.
    @discardableResult
    public mutating func accept(_ sequence: UInt64) -> Verdict {
        let verdict = check(sequence)
        guard verdict == .fresh else { return verdict }
        if sequence > highest {
            // Clear the blocks the window slides over, from the one after highest's up to
            // sequence's (all of them when it jumps a whole ring or more).
            let current = highest >> 6
            let target = sequence >> 6
            let steps = min(target - current, UInt64(Self.blockCount))
            var b = current
            for _ in 0..<steps {
                b &+= 1
                blocks[Int(b % UInt64(Self.blockCount))] = 0
            }
            highest = sequence
        }
        let (block, bit) = Self.position(sequence)
        blocks[block] |= bit
        return .fresh
    }

    private static func position(_ sequence: UInt64) -> (block: Int, bit: UInt64) {
        (Int((sequence >> 6) % UInt64(blockCount)), 1 << (sequence & 63))
    }
}
