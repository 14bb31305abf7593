import CTandemShim
import Glibc
import TandemCore

extension tdm_flow_key {
    init(_ t: FlowTuple) {
        self.init()
        saddr = t.source.networkOrder
        daddr = t.destination.networkOrder
        sport = t.sourcePort.bigEndian
        dport = t.destinationPort.bigEndian
        proto = t.proto
    }

    var tuple: FlowTuple {
        FlowTuple(source: IPv4Address(networkOrder: saddr), destination: IPv4Address(networkOrder: daddr),
                  sourcePort: UInt16(bigEndian: sport), destinationPort: UInt16(bigEndian: dport), proto: proto)
    }
}

extension ConnectionEntry {
    init(key: tdm_flow_key, value e: tdm_ct_entry, nowNanoseconds now: UInt64) {
        let age = now > e.created_ns ? Double(now - e.created_ns) / 1e9 : 0
        let idle = now > e.last_seen_ns ? Double(now - e.last_seen_ns) / 1e9 : 0
        self.init(key: key.tuple, translated: e.xlate.tuple, peerKey: e.peer.tuple,
                  direction: FlowDirection(rawValue: e.dir) ?? .original,
                  state: ConnectionState(rawValue: e.state) ?? .none,
                  flags: ConnectionFlags(rawValue: e.flags),
                  natMode: NATMode(rawValue: e.nat_mode) ?? .default,
                  serviceSlot: e.service_id, endpointIndex: e.endpoint_index, version: e.version,
                  packets: e.packets, bytes: e.bytes, ageSeconds: age, idleSeconds: idle)
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock bpf_ktime_get_ns() reads.
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
