/// One connection as another node needs it to continue forwarding it: the original tuple, what it
/// is rewritten to, and its tracking state. Times are relative (milliseconds), never a node's raw
/// monotonic clock, so they mean the same on every node. The reply direction is derived: its key
/// is `translated.reversed` and it is rewritten to `key.reversed`.
public struct FlowRecord: Hashable, Sendable {
    /// The original direction as the client sends it (client -> VIP:port).
    public var key: FlowTuple
    /// What the original direction is rewritten to (SNAT source -> endpoint). Same protocol as `key`.
    public var translated: FlowTuple
    public var natMode: NATMode
    public var state: ConnectionState
    /// Tracking flags; `.fromPeer` is local bookkeeping and is never sent.
    public var flags: ConnectionFlags
    /// The endpoint's index in the owner's service; receivers match endpoints by address.
    public var endpointIndex: UInt8
    /// Milliseconds since the connection was created.
    public var ageMilliseconds: UInt32
    /// Milliseconds left before the connection's idle timeout would expire it.
    public var remainingMilliseconds: UInt32

    public init(key: FlowTuple, translated: FlowTuple, natMode: NATMode, state: ConnectionState,
                flags: ConnectionFlags, endpointIndex: UInt8, ageMilliseconds: UInt32, remainingMilliseconds: UInt32) {
        self.key = key
        self.translated = translated
        self.natMode = natMode
        self.state = state
        self.flags = flags
        self.endpointIndex = endpointIndex
        self.ageMilliseconds = ageMilliseconds
        self.remainingMilliseconds = remainingMilliseconds
    }

    /// The reply direction's key: what the endpoint sends back.
    public var replyKey: FlowTuple { translated.reversed }

    /// The service the connection belongs to, read off the original destination (nil for ICMP).
    public var serviceKey: ServiceKey? {
        guard let proto = L4Protocol(rawValue: key.proto) else { return nil }
        return ServiceKey(vip: key.destination, port: key.destinationPort, proto: proto)
    }
}
