

/// A change in the connection table: from the datapath's ring buffer (new, state, delete,
/// refresh), or from user space's periodic scan (expired), which catches what the datapath cannot
/// report.
public struct ConnectionEvent: Sendable, Hashable {
    public enum Kind: Int, Sendable, Hashable, CaseIterable {
        /// `refreshed`: unchanged, but still busy a quarter of its timeout after peers were last
        /// told about it (so replication gives their copies a new lifetime).
        case new, stateChanged, deleted, expired, refreshed
    }
    public var kind: Kind
    public var key: FlowTuple
    public var translated: FlowTuple
    public var state: ConnectionState
    public var natMode: NATMode
    public var serviceSlot: UInt32
    public var version: UInt32
    /// The endpoint's index in this node's service (ring-buffer events only).
    public var endpointIndex: UInt8 = 0
    /// The entry's creation time on this node's monotonic clock (ring-buffer events only; 0 when
    /// unknown). Never sent to peers raw: replication turns it into an age.
    public var createdNanoseconds: UInt64 = 0
    /// The entry's tracking flags (FIN seen per side, installed from a peer).
    public var flags: ConnectionFlags = []

    public init(kind: Kind, key: FlowTuple, translated: FlowTuple, state: ConnectionState, natMode: NATMode,
                serviceSlot: UInt32, version: UInt32) {
        self.kind = kind
        self.key = key
        self.translated = translated
        self.state = state
        self.natMode = natMode
        self.serviceSlot = serviceSlot
        self.version = version
    }
}

extension ConnectionEvent {
    /// The full idle timeout of the connection in its new state, in milliseconds (an event means it
    /// just changed or just saw a packet): its service's, or the node's.
    public func remainingMilliseconds(timeouts: Timeouts) -> UInt32 {
        UInt32(clamping: UInt64(timeouts.seconds(for: state, serviceSlot: serviceSlot)) * 1000)
    }
}

/// Periodic scan of the connection table: removes entries idle past their state's timeout
/// (the datapath only notices expiry when a packet arrives) and reports them, since LRU eviction
/// and idle expiry produce no ring-buffer event.
public struct ConnectionReaper: Sendable {
    public var timeouts: Timeouts

    public init(timeouts: Timeouts) { self.timeouts = timeouts }

    /// Pure part: which entries to delete, and the events to report for them.
    public func expired(in entries: [ConnectionEntry]) -> (delete: [FlowTuple], events: [ConnectionEvent]) {
        var byKey: [FlowTuple: ConnectionEntry] = [:]
        byKey.reserveCapacity(entries.count) // growing it step by step rehashed every entry several times
        for e in entries { byKey[e.key] = e }
        var delete: [FlowTuple] = []
        var events: [ConnectionEvent] = []
        for e in entries where e.direction == .original {
            let peer = byKey[e.peerKey]
            let idle = min(e.idleSeconds, peer?.idleSeconds ?? .infinity)
            guard idle > Double(timeouts.seconds(for: e.state, serviceSlot: e.serviceSlot)) else { continue }
            delete.append(e.key)
            if peer != nil { delete.append(e.peerKey) }
            events.append(ConnectionEvent(kind: .expired, key: e.key, translated: e.translated, state: e.state,
                                          natMode: e.natMode, serviceSlot: e.serviceSlot, version: e.version))
        }
        // A reply half whose original is gone (evicted by LRU) can never be matched usefully. The
        // idle guard skips a half the datapath is creating right now (reply first, then original).
        for e in entries where e.direction == .reply && byKey[e.peerKey] == nil && e.idleSeconds > 2 {
            delete.append(e.key)
        }
        // A reply half left behind when its client reused the port for a new connection: its
        // original now points elsewhere. It holds its translated tuple until its own timeout.
        for e in entries where e.direction == .reply {
            guard let orig = byKey[e.peerKey], orig.peerKey != e.key else { continue }
            if e.isExpired(timeouts: timeouts) { delete.append(e.key) }
        }
        return (delete, events)
    }
}
