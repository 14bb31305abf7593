import TandemSyncWire

/// The receiving half of one peer's delta stream: tracks which sequences arrived, so duplicates
/// are dropped and gaps are nacked, and decides when a gap cannot be repaired and a bulk transfer
/// is needed. Entries are applied as they arrive, in any order: the replica table's versions make
/// that safe, so reordering costs no latency.
public struct DeltaReceiver: Sendable {
    public struct Config: Sendable {
        /// Sequences tracked above the cumulative point; a batch further ahead means we are lost.
        public var maxAhead: UInt64
        /// Wait this long after noticing a gap before nacking it (reordering settles first).
        public var nackDelay: UInt64
        /// Re-nack an unrepaired gap this often.
        public var nackInterval: UInt64
        /// Nacks of the same gap before giving up and asking for a bulk transfer.
        public var maxNacks: Int
        public init(maxAhead: UInt64 = 1 << 18, nackDelay: UInt64 = 2, nackInterval: UInt64 = 20, maxNacks: Int = 5) {
            self.maxAhead = maxAhead
            self.nackDelay = nackDelay
            self.nackInterval = nackInterval
            self.maxNacks = maxNacks
        }
    }

    public enum Verdict: Sendable, Equatable {
        case fresh
        case duplicate
        /// Below the point a bulk transfer already covered, or too far ahead to track.
        case outOfWindow
    }

    public let config: Config
    public private(set) var epoch: UInt64
    /// Every sequence up to this one arrived (or was covered by a bulk transfer).
    public private(set) var cumulative: UInt64
    /// Arrived sequences above `cumulative`.
    private var above: Set<UInt64> = []
    /// Highest sequence known to exist (arrived, or announced by a keepalive).
    public private(set) var highestKnown: UInt64
    private var gapNoticedAt: UInt64?
    private var lastNackAt: UInt64?
    private var nacksForGap = 0
    private var cumulativeAtLastNack: UInt64 = 0
    public private(set) var needsBulk = false

    public init(epoch: UInt64, baseline: UInt64 = 0, config: Config = Config()) {
        self.config = config
        self.epoch = epoch
        cumulative = baseline
        highestKnown = baseline
    }

    public var hasGap: Bool { highestKnown > cumulative }

    /// Records one arrived sequence.
    public mutating func receive(_ seq: UInt64, now: UInt64) -> Verdict {
        if seq == 0 { return .outOfWindow }
        if seq <= cumulative || above.contains(seq) { return .duplicate }
        guard seq - cumulative <= config.maxAhead else {
            needsBulk = true
            return .outOfWindow
        }
        above.insert(seq)
        if seq > highestKnown { highestKnown = seq }
        advance()
        noteGap(now: now)
        return .fresh
    }

    /// A keepalive or hello says the sender's next sequence; anything below it we lack is a gap.
    public mutating func announce(nextSequence: UInt64, now: UInt64) {
        guard nextSequence > 0 else { return }
        let last = nextSequence - 1
        if last > highestKnown {
            if last - cumulative > config.maxAhead { needsBulk = true }
            highestKnown = last
        }
        noteGap(now: now)
    }

    /// A bulk transfer covered everything before `resumeSequence`.
    public mutating func covered(upTo resumeSequence: UInt64) {
        guard resumeSequence > 0 else { return }
        let upTo = resumeSequence - 1
        if upTo > cumulative {
            cumulative = upTo
            above = above.filter { $0 > upTo }
            advance()
        }
        if upTo > highestKnown { highestKnown = upTo }
        needsBulk = false
        nacksForGap = 0
        gapNoticedAt = nil
        lastNackAt = nil
    }

    /// The nack to send now, if a gap is due for one. Gives up (needsBulk) after maxNacks.
    public mutating func nackIfDue(now: UInt64) -> Nack? {
        guard hasGap, !needsBulk, let since = gapNoticedAt, now >= since &+ config.nackDelay else { return nil }
        if let last = lastNackAt, now < last &+ config.nackInterval { return nil }
        // Progress since the last nack means repair works (losses keep opening new gaps under
        // steady traffic); only a gap that stays put exhausts the nacks.
        if cumulative > cumulativeAtLastNack { nacksForGap = 0 }
        if nacksForGap >= config.maxNacks {
            needsBulk = true
            return nil
        }
        nacksForGap += 1
        lastNackAt = now
        cumulativeAtLastNack = cumulative
        return Nack(streamEpoch: epoch, cumulative: cumulative, missing: missingRanges())
    }

    /// Acknowledgement of the stream so far.
    public var ack: Ack { Ack(streamEpoch: epoch, cumulative: cumulative) }

    /// Missing ranges above `cumulative`, at most SyncWire.maxNackRanges of them.
    public func missingRanges() -> [ClosedRange<UInt64>] {
        guard hasGap else { return [] }
        var ranges: [ClosedRange<UInt64>] = []
        var start = cumulative + 1
        for seq in above.sorted() {
            if seq > start { ranges.append(start...(seq - 1)) }
            start = seq + 1
            if ranges.count == SyncWire.maxNackRanges { return ranges }
        }
        if start <= highestKnown { ranges.append(start...highestKnown) }
        return Array(ranges.prefix(SyncWire.maxNackRanges))
    }

    private mutating func advance() {
        while above.remove(cumulative + 1) != nil { cumulative += 1 }
    }

    private mutating func noteGap(now: UInt64) {
        if hasGap {
            if gapNoticedAt == nil { gapNoticedAt = now }
        } else {
            gapNoticedAt = nil
            lastNackAt = nil
            nacksForGap = 0
        }
    }
}
