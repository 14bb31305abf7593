/// Connection states; raw values are the datapath's enum tdm_ct_state.
public enum ConnectionState: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case none = 0
    case synSent = 1
    case synReceived = 2
    case established = 3
    case finWait = 4
    case timeWait = 5
    case closed = 6
    case udpNew = 7
    case udpEstablished = 8
    case icmp = 9

    public var description: String {
        switch self {
        case .none: "none"
        case .synSent: "syn-sent"
        case .synReceived: "syn-recv"
        case .established: "est"
        case .finWait: "fin-wait"
        case .timeWait: "time-wait"
        case .closed: "closed"
        case .udpNew: "udp-new"
        case .udpEstablished: "udp-est"
        case .icmp: "icmp"
        }
    }
}

public enum FlowDirection: UInt8, Sendable {
    case original = 0
    case reply = 1
}

/// TCP flag bits as in the header's 14th byte.
public struct TCPFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let fin = TCPFlags(rawValue: 0x01)
    public static let syn = TCPFlags(rawValue: 0x02)
    public static let rst = TCPFlags(rawValue: 0x04)
    public static let psh = TCPFlags(rawValue: 0x08)
    public static let ack = TCPFlags(rawValue: 0x10)
}

/// Per-connection flags; raw values are the datapath's TDM_CT_F_*.
public struct ConnectionFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let finOriginal = ConnectionFlags(rawValue: 0x01)
    public static let finReply = ConnectionFlags(rawValue: 0x02)
    public static let pickedUp = ConnectionFlags(rawValue: 0x04)
    public static let fromPeer = ConnectionFlags(rawValue: 0x08)
}

/// The TCP tracking rules, the same as the datapath's tcp_next_state. The privileged tests feed
/// the same packet sequences to both and compare.
public enum TCPStateMachine {
    public static func next(state: ConnectionState, flags: ConnectionFlags, direction: FlowDirection,
                            tcp: TCPFlags) -> (ConnectionState, ConnectionFlags) {
        var flags = flags
        if tcp.contains(.rst) { return (.closed, flags) }
        if tcp.contains(.fin) {
            flags.insert(direction == .original ? .finOriginal : .finReply)
            return (flags.isSuperset(of: [.finOriginal, .finReply]) ? .timeWait : .finWait, flags)
        }
        switch state {
        case .synSent where direction == .reply && tcp.isSuperset(of: [.syn, .ack]):
            return (.synReceived, flags)
        case .synReceived where direction == .original && tcp.intersection([.syn, .ack]) == .ack:
            return (.established, flags)
        default:
            return (state, flags)
        }
    }

    /// The state a first packet opens: a SYN starts the handshake, anything else is picked up
    /// mid-flow (after a failover, say) as established.
    public static func initial(tcp: TCPFlags) -> ConnectionState {
        tcp.intersection([.syn, .ack]) == .syn ? .synSent : .established
    }
}

/// Idle timeouts per state, in seconds.
public struct Timeouts: Equatable, Sendable {
    public var synSent: UInt32 = 60
    public var synReceived: UInt32 = 60
    public var established: UInt32 = 21_600
    public var finWait: UInt32 = 120
    public var timeWait: UInt32 = 10
    public var closed: UInt32 = 10
    public var udpNew: UInt32 = 30
    public var udpEstablished: UInt32 = 120
    public var icmp: UInt32 = 30
    /// Per-service idle timeouts (inactiveTimeOut) by datapath slot: they replace `established`,
    /// `udpNew` and `udpEstablished` for that service's connections.
    public var perService: [UInt32: UInt32] = [:]

    public init() {}

    /// The shortest timeout of any state or service.
    public var shortest: UInt32 {
        ([synSent, synReceived, established, finWait, timeWait, closed, udpNew, udpEstablished, icmp] + perService.values).min() ?? 0
    }

    /// The states a service's idle timeout applies to: the ones a connection idles in.
    public static func isIdleState(_ state: ConnectionState) -> Bool {
        state == .established || state == .udpNew || state == .udpEstablished
    }

    /// The timeout of a connection of the service in `serviceSlot` in `state`: the service's own
    /// for the idle states when it has one, else the node's.
    public func seconds(for state: ConnectionState, serviceSlot: UInt32) -> UInt32 {
        if Self.isIdleState(state), let t = perService[serviceSlot] { return t }
        return seconds(for: state)
    }

    public func seconds(for state: ConnectionState) -> UInt32 {
        switch state {
        case .none: 0
        case .synSent: synSent
        case .synReceived: synReceived
        case .established: established
        case .finWait: finWait
        case .timeWait: timeWait
        case .closed: closed
        case .udpNew: udpNew
        case .udpEstablished: udpEstablished
        case .icmp: icmp
        }
    }

    /// In enum tdm_ct_state order, for the datapath's config map.
    public var nanosecondsByState: [UInt64] {
        ConnectionState.allCases.map { UInt64(seconds(for: $0)) * 1_000_000_000 }
    }
}

/// A 5-tuple in host order.
public struct FlowTuple: Hashable, Sendable, CustomStringConvertible {
    public var source: IPv4Address
    public var destination: IPv4Address
    public var sourcePort: UInt16
    public var destinationPort: UInt16
    public var proto: UInt8

    public init(source: IPv4Address, destination: IPv4Address, sourcePort: UInt16, destinationPort: UInt16,
                proto: UInt8) {
        self.source = source
        self.destination = destination
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.proto = proto
    }

    public var reversed: FlowTuple {
        FlowTuple(source: destination, destination: source, sourcePort: destinationPort,
                  destinationPort: sourcePort, proto: proto)
    }

    public var description: String { "\(source):\(sourcePort)->\(destination):\(destinationPort)/\(proto)" }

    /// Two words into the hasher instead of five fields: the tables replication keeps hash every
    /// flow several times, and the per-field calls showed up in profiles. Equality is unchanged.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(UInt64(source.value) << 32 | UInt64(destination.value))
        hasher.combine(UInt64(sourcePort) << 24 | UInt64(destinationPort) << 8 | UInt64(proto))
    }
}

/// One direction of a tracked connection, as read from the datapath's table.
public struct ConnectionEntry: Hashable, Sendable {
    public var key: FlowTuple
    public var translated: FlowTuple
    public var peerKey: FlowTuple
    public var direction: FlowDirection
    public var state: ConnectionState
    public var flags: ConnectionFlags
    public var natMode: NATMode
    public var serviceSlot: UInt32
    public var endpointIndex: UInt8
    public var version: UInt32
    public var packets: UInt64
    public var bytes: UInt64
    /// Seconds since the entry was created and since its last packet, relative to now.
    public var ageSeconds: Double
    public var idleSeconds: Double

    public init(key: FlowTuple, translated: FlowTuple, peerKey: FlowTuple, direction: FlowDirection,
                state: ConnectionState, flags: ConnectionFlags, natMode: NATMode, serviceSlot: UInt32,
                endpointIndex: UInt8, version: UInt32, packets: UInt64, bytes: UInt64, ageSeconds: Double,
                idleSeconds: Double) {
        self.key = key
        self.translated = translated
        self.peerKey = peerKey
        self.direction = direction
        self.state = state
        self.flags = flags
        self.natMode = natMode
        self.serviceSlot = serviceSlot
        self.endpointIndex = endpointIndex
        self.version = version
        self.packets = packets
        self.bytes = bytes
        self.ageSeconds = ageSeconds
        self.idleSeconds = idleSeconds
    }

    public func isExpired(timeouts: Timeouts) -> Bool {
        idleSeconds > Double(timeouts.seconds(for: state, serviceSlot: serviceSlot))
    }
}

/// Both directions of one connection, joined for display.
public struct Connection: Hashable, Sendable {
    public var original: ConnectionEntry
    public var reply: ConnectionEntry?

    public var packets: UInt64 { original.packets + (reply?.packets ?? 0) }
    public var bytes: UInt64 { original.bytes + (reply?.bytes ?? 0) }
    public var idleSeconds: Double { min(original.idleSeconds, reply?.idleSeconds ?? .infinity) }

    /// Joins entries into connections; a reply entry without its original is dropped from view.
    /// Pairs each original half with its reply half. `sorted` orders by client address and port
    /// (for display); the periodic scan skips it, since sorting a million connections every pass
    /// costs more than the rest of the pass.
    public static func join(_ entries: [ConnectionEntry], sorted: Bool = true) -> [Connection] {
        var replies: [FlowTuple: ConnectionEntry] = [:]
        replies.reserveCapacity(entries.count / 2 + 1)
        for e in entries where e.direction == .reply { replies[e.key] = e }
        var out: [Connection] = []
        out.reserveCapacity(entries.count / 2 + 1)
        for e in entries where e.direction == .original { out.append(Connection(original: e, reply: replies[e.peerKey])) }
        guard sorted else { return out }
        return out.sorted { ($0.original.key.source, $0.original.key.sourcePort) < ($1.original.key.source, $1.original.key.sourcePort) }
    }

    public func isExpired(timeouts: Timeouts) -> Bool {
        idleSeconds > Double(timeouts.seconds(for: original.state, serviceSlot: original.serviceSlot))
    }

    /// Milliseconds left before the connection's idle timeout (its service's or the node's).
    public func remainingMilliseconds(timeouts: Timeouts) -> UInt32 {
        let timeout = Double(timeouts.seconds(for: original.state, serviceSlot: original.serviceSlot))
        return UInt32(clamping: Int(max(0, timeout - idleSeconds) * 1000))
    }
}
