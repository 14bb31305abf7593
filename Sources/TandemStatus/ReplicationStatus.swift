/// A snapshot of replication for the API and logs.
public struct ReplicationStatus: Sendable, Codable, Hashable {
    public struct Peer: Sendable, Codable, Hashable {
        public var id: UInt32
        public var address: String
        public var inSync: Bool
        public var lastHeardMillisecondsAgo: UInt64?
        public var streamCumulative: UInt64?
        public var streamHasGap: Bool

        public init(id: UInt32, address: String, inSync: Bool, lastHeardMillisecondsAgo: UInt64?,
                    streamCumulative: UInt64?, streamHasGap: Bool) {
            self.id = id
            self.address = address
            self.inSync = inSync
            self.lastHeardMillisecondsAgo = lastHeardMillisecondsAgo
            self.streamCumulative = streamCumulative
            self.streamHasGap = streamHasGap
        }
    }
    public var nodeID: UInt32
    public var epoch: UInt64
    public var inSync: Bool
    public var entries: Int
    public var liveEntries: Int
    public var nextSequence: UInt64
    public var retransmitWindow: Int
    public var peers: [Peer]
    public var counters: ReplicationCounters
    /// Received messages dropped before the core saw them, by reason.
    public var dropped: [String: UInt64]
    public var datagramsSent: UInt64
    public var datagramsReceived: UInt64
    public var bytesSent: UInt64
    public var installFailures: UInt64
    public var lagP50Micros: UInt64
    public var lagP99Micros: UInt64
    public var lagMaxMicros: UInt64
    /// Times the UDP socket was bound again after the kernel refused a send.
    public var socketRebinds: UInt64?
    /// Datagrams of local changes the kernel refused to send from the submitting thread (a
    /// firewall's EPERM, no route): dropped, then repaired by the peers' nacks and keepalives.
    public var sendErrors: UInt64?

    public init(nodeID: UInt32, epoch: UInt64, inSync: Bool, entries: Int, liveEntries: Int, nextSequence: UInt64,
                retransmitWindow: Int, peers: [Peer], counters: ReplicationCounters, dropped: [String: UInt64],
                datagramsSent: UInt64, datagramsReceived: UInt64, bytesSent: UInt64, installFailures: UInt64,
                lagP50Micros: UInt64, lagP99Micros: UInt64, lagMaxMicros: UInt64, socketRebinds: UInt64? = nil, sendErrors: UInt64? = nil) {
        self.nodeID = nodeID
        self.epoch = epoch
        self.inSync = inSync
        self.entries = entries
        self.liveEntries = liveEntries
        self.nextSequence = nextSequence
        self.retransmitWindow = retransmitWindow
        self.peers = peers
        self.counters = counters
        self.dropped = dropped
        self.datagramsSent = datagramsSent
        self.datagramsReceived = datagramsReceived
        self.bytesSent = bytesSent
        self.installFailures = installFailures
        self.lagP50Micros = lagP50Micros
        self.lagP99Micros = lagP99Micros
        self.lagMaxMicros = lagMaxMicros
        self.socketRebinds = socketRebinds
        self.sendErrors = sendErrors
    }
}

/// Replication counters, shown on the API and in logs.
public struct ReplicationCounters: Sendable, Hashable, Codable {
    public var deltasQueued: UInt64 = 0
    public var deltasCoalesced: UInt64 = 0
    public var batchesSent: UInt64 = 0
    public var entriesSent: UInt64 = 0
    public var retransmittedEntries: UInt64 = 0
    public var unrepairableNacks: UInt64 = 0
    public var nacksSent: UInt64 = 0
    public var nacksReceived: UInt64 = 0
    public var acksSent: UInt64 = 0
    public var entriesReceived: UInt64 = 0
    public var entriesApplied: UInt64 = 0
    public var duplicateEntries: UInt64 = 0
    public var staleEntries: UInt64 = 0
    public var outOfWindowEntries: UInt64 = 0
    public var refreshesSent: UInt64 = 0
    public var missedEventsRecovered: UInt64 = 0
    public var bulkTransfersServed: UInt64 = 0
    public var bulkTransfersCompleted: UInt64 = 0
    public var bulkTransfersFailed: UInt64 = 0
    public var bulkEntriesReceived: UInt64 = 0
    public var antiEntropyRounds: UInt64 = 0
    public var antiEntropyPulls: UInt64 = 0
    public var antiEntropyRepaired: UInt64 = 0
    public var antiEntropyRemoved: UInt64 = 0
    public var tombstonesExpired: UInt64 = 0
    /// Kernel table: local deletes of learned entries (their copies timing out here), not sent.
    public var learnedExpiredLocally: UInt64 = 0
    /// Kernel table: local events that only repeated a learned entry (its injection), not sent.
    public var learnedStateRepeated: UInt64 = 0
    /// Kernel table: local reports of a copy a peer had just deleted, unchanged (the sink's
    /// delete pending, or its write's event lost in an overrun), not sent.
    public var deletedCopyRepeated: UInt64 = 0
    /// Kernel table: learned entries the local table refreshed (traffic passes here), taken over.
    public var learnedAdopted: UInt64 = 0
    public init() {}
}
