import Foundation
import TandemCore
import TandemSync
import TandemSyncWire
import TandemSealing

/// Paths of the repository, found from this file's location so tests run from any directory.
enum Repo {
    static let root: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()  // TandemSyncWireTests
        .deletingLastPathComponent()  // Tests
        .deletingLastPathComponent()
    static let vectors = root.appendingPathComponent("proto/vectors")
    static let corpus = root.appendingPathComponent("Fuzz/corpus")
}

enum Hex {
    static func encode(_ bytes: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Lower-case hex, 32 bytes (64 digits) a line, newline-terminated.
    static func wrapped(_ bytes: [UInt8]) -> String {
        let text = Array(encode(bytes).utf8)
        var lines: [String] = []
        var i = 0
        while i < text.count {
            lines.append(String(decoding: text[i..<min(i + 64, text.count)], as: UTF8.self))
            i += 64
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Parses hex, ignoring whitespace anywhere.
    static func decode(_ text: String) -> [UInt8]? {
        let digits = text.utf8.filter { !($0 == 32 || $0 == 10 || $0 == 13 || $0 == 9) }
        guard digits.count % 2 == 0 else { return nil }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: c - 48
            case 97...102: c - 87
            case 65...70: c - 55
            default: nil
            }
        }
        var out: [UInt8] = []
        var i = 0
        while i < digits.count {
            guard let hi = nibble(digits[i]), let lo = nibble(digits[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }
}

/// The vectors' JSON description of headers and messages. 64-bit values are decimal strings (JSON
/// numbers lose precision above 2^53 in many readers); hashes are "0x" + 16 hex digits.
enum Describe {
    static func u64(_ v: UInt64) -> String { String(v) }
    static func hash(_ v: UInt64) -> String {
        let s = String(v, radix: 16)
        return "0x" + String(repeating: "0", count: 16 - s.count) + s
    }

    static func header(_ h: SyncHeader) -> [String: Any] {
        ["magic": "0x5453", "version": Int(SyncWire.version), "type": Int(h.type.rawValue), "typeName": h.type.wireName,
         "flags": Int(h.flags.rawValue), "length": Int(h.length), "sender": Int(h.sender),
         "epoch": u64(h.epoch), "sequence": u64(h.sequence)]
    }

    static func tuple(_ t: FlowTuple) -> [String: Any] {
        ["saddr": t.source.description, "daddr": t.destination.description,
         "sport": Int(t.sourcePort), "dport": Int(t.destinationPort)]
    }

    static func entry(_ e: SyncEntry) -> [String: Any] {
        let r = e.record
        return ["op": Int(e.operation.rawValue), "proto": Int(r.key.proto), "natMode": Int(r.natMode.rawValue),
                "state": Int(r.state.rawValue), "flags": Int(r.flags.rawValue), "endpointIndex": Int(r.endpointIndex),
                "key": tuple(r.key), "translated": tuple(r.translated), "version": u64(e.version),
                "origin": Int(e.origin), "ageMs": Int(r.ageMilliseconds), "remainingMs": Int(r.remainingMilliseconds)]
    }

    static func kernelTuple(_ t: KernelTuple) -> [String: Any] {
        var d: [String: Any] = ["saddr": t.source.description, "daddr": t.destination.description]
        switch t.l4 {
        case .ports(let s, let p):
            d["sport"] = Int(s)
            d["dport"] = Int(p)
        case .icmp(let id, let type, let code):
            d["icmpID"] = Int(id)
            d["icmpType"] = Int(type)
            d["icmpCode"] = Int(code)
        case .none: break
        }
        return d
    }

    static func kernelEntry(_ e: KernelSyncEntry) -> [String: Any] {
        let c = e.connection
        var d: [String: Any] = ["op": Int(e.operation.rawValue), "proto": Int(c.proto), "zone": Int(c.zone),
                                "status": Int(c.status.rawValue), "mark": Int(c.mark),
                                "original": kernelTuple(c.original), "reply": kernelTuple(c.reply),
                                "version": u64(e.version), "origin": Int(e.origin)]
        if let t = c.timeout { d["timeout"] = Int(t) }
        if let tcp = c.tcp {
            var t: [String: Any] = ["state": Int(tcp.state.rawValue)]
            if let v = tcp.flagsOriginal { t["flagsOriginal"] = Int(v) }
            if let v = tcp.flagsReply { t["flagsReply"] = Int(v) }
            if let v = tcp.windowScaleOriginal { t["windowScaleOriginal"] = Int(v) }
            if let v = tcp.windowScaleReply { t["windowScaleReply"] = Int(v) }
            d["tcp"] = t
        }
        return d
    }

    static func message(_ m: SyncMessage) -> [String: Any] {
        switch m {
        case .hello(let h):
            ["bulkPort": Int(h.bulkPort), "inSync": h.inSync, "nextSequence": u64(h.nextSequence)]
        case .deltaBatch(let b):
            ["firstSequence": u64(b.firstSequence), "entries": b.entries.map(entry)]
        case .ack(let a):
            ["streamEpoch": u64(a.streamEpoch), "cumulative": u64(a.cumulative)]
        case .nack(let n):
            ["streamEpoch": u64(n.streamEpoch), "cumulative": u64(n.cumulative),
             "missing": n.missing.map { [u64($0.lowerBound), u64($0.upperBound)] }]
        case .bulkRequest(let r):
            ["requestID": Int(r.requestID), "leaves": r.leaves.map { Int($0) }]
        case .bulkBegin(let b):
            ["requestID": Int(b.requestID), "streamEpoch": u64(b.streamEpoch),
             "resumeSequence": u64(b.resumeSequence), "entryCount": u64(b.entryCount)]
        case .bulkChunk(let c):
            ["requestID": Int(c.requestID), "entries": c.entries.map(entry)]
        case .bulkEnd(let e):
            ["requestID": Int(e.requestID), "entryCount": u64(e.entryCount)]
        case .keepalive(let k):
            ["nextSequence": u64(k.nextSequence), "inSync": k.inSync, "entryCount": u64(k.entryCount)]
        case .digest(let d):
            ["level": Int(d.level), "bucket": Int(d.bucket), "entryCount": u64(d.entryCount),
             "hashes": d.hashes.map(hash)]
        case .digestRequest(let r):
            ["buckets": r.buckets.map { Int($0) }]
        case .probe(let p):
            ["probeID": Int(p.probeID), "target": Int(p.target), "requester": Int(p.requester), "gossip": gossip(p.gossip)]
        case .probeRequest(let p):
            ["probeID": Int(p.probeID), "target": Int(p.target), "gossip": gossip(p.gossip)]
        case .probeAck(let a):
            ["probeID": Int(a.probeID), "target": Int(a.target), "requester": Int(a.requester), "gossip": gossip(a.gossip)]
        case .serviceDigest(let d):
            ["count": Int(d.count), "digest": hash(d.digest), "maxVersion": u64(d.maxVersion)]
        case .endpointVerdicts(let v):
            ["generation": u64(v.generation), "part": Int(v.part), "more": v.more,
             "services": v.services.map { s -> [String: Any] in
                 ["vip": s.key.vip.description, "port": Int(s.key.port), "proto": Int(s.key.proto.rawValue),
                  "down": s.down.map { d -> [String: Any] in
                      ["address": d.address.description, "port": Int(d.port), "reasons": Int(d.reasons.rawValue),
                       "since": u64(d.sinceMicros)]
                  }]
             },
             "hosts": v.hosts.map { h -> [String: Any] in
                 ["host": h.host.description, "state": Int(h.state.rawValue), "version": u64(h.version),
                  "origin": Int(h.origin)]
             }]
        case .kernelDeltaBatch(let b):
            ["firstSequence": u64(b.firstSequence), "entries": b.entries.map(kernelEntry)]
        case .kernelBulkChunk(let c):
            ["requestID": Int(c.requestID), "entries": c.entries.map(kernelEntry)]
        case .serviceRecords(let r):
            ["records": r.records.map { rec -> [String: Any] in
                var d: [String: Any] = ["vip": rec.key.vip.description, "port": Int(rec.key.port),
                                        "proto": Int(rec.key.proto.rawValue), "flags": rec.isTombstone ? 1 : 0,
                                        "version": u64(rec.version), "origin": Int(rec.origin)]
                if let spec = rec.spec { d["spec"] = String(decoding: spec, as: UTF8.self) }
                return d
            }]
        }
    }

    static func gossip(_ g: Gossip) -> [String: Any] {
        ["updates": g.updates.map { ["node": Int($0.node), "incarnation": Int($0.incarnation), "status": Int($0.status.rawValue)] },
         "adverts": g.adverts.map { ["instance": Int($0.instance), "term": u64($0.term), "role": Int($0.role.rawValue),
                                     "priority": Int($0.priority), "flags": Int($0.flags.rawValue)] }]
    }

    /// Pretty, key-sorted JSON text, newline-terminated.
    static func json(_ object: Any) throws -> String {
        let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
        return String(decoding: data, as: UTF8.self) + "\n"
    }

    /// Canonical form of a JSON document, for comparing meaning rather than layout.
    static func canonical(_ text: String) throws -> String {
        let object = try JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed])
        return try json(object)
    }
}

