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
                  flags: ConnectionFlags(datapath: e.flags),
                  natMode: NATMode(rawValue: e.nat_mode) ?? .default,
                  serviceSlot: e.service_id, endpointIndex: e.endpoint_index, version: e.version,
                  packets: e.packets, bytes: e.bytes, ageSeconds: age, idleSeconds: idle)
    }
}

/// An allowedSources entry as the tdm_sources trie keys it: the slot, then the prefix (masked,
/// so equal prefixes compare equal however the user wrote the host bits).
struct SourceKey: Hashable {
    var slot: UInt32
    var address: UInt32 // host order, masked
    var length: Int

    init(slot: UInt32, prefix: IPv4Prefix) {
        self.slot = slot
        length = max(0, min(32, prefix.length))
        address = prefix.address.value & prefix.mask
    }

    init(_ raw: tdm_source_key) {
        slot = raw.service_id
        length = max(0, min(32, Int(raw.prefixlen) - 32))
        let mask: UInt32 = length == 0 ? 0 : UInt32.max << (32 - length)
        address = UInt32(bigEndian: raw.addr) & mask
    }

    var raw: tdm_source_key {
        var k = tdm_source_key()
        k.prefixlen = UInt32(32 + length)
        k.service_id = slot
        k.addr = address.bigEndian
        return k
    }

    var prefix: IPv4Prefix {
        IPv4Prefix(address: IPv4Address(address), length: length)
    }
}

extension ConnectionFlags {
    /// The entry's flags without the datapath's own bookkeeping (TDM_CT_F_COUNTED), which is
    /// neither shown nor replicated.
    init(datapath raw: UInt8) { self.init(rawValue: raw & ~UInt8(TDM_CT_F_COUNTED)) }
}
