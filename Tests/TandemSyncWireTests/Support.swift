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

/// The fixed inputs of the golden vectors (documented in proto/vectors/README.md).
enum Fixtures {
    /// Bytes 0x00 ... 0x1f.
    static let key = ClusterKey(bytes: (0..<32).map { UInt8($0) })!
    /// Bytes 0x20 ... 0x3f: "another cluster".
    static let otherKey = ClusterKey(bytes: (32..<64).map { UInt8($0) })!
    static let sender: UInt32 = 1
    static let epoch: UInt64 = 1_700_000_000_000_000
    /// The receiving node the invalid vectors are opened by, and its cluster.
    static let selfID: UInt32 = 2
    static let members: Set<UInt32> = [1, 2, 3]

    static func opener() -> SyncOpener { SyncOpener(key: key, selfID: selfID, members: members) }

    static func ip(_ s: String) -> IPv4Address { IPv4Address(s)! }

    static func tuple(_ s: String, _ sp: UInt16, _ d: String, _ dp: UInt16, _ proto: UInt8) -> FlowTuple {
        FlowTuple(source: ip(s), destination: ip(d), sourcePort: sp, destinationPort: dp, proto: proto)
    }

    /// A full-NAT TCP flow, established, picked up mid-flow.
    static let tcpUpsert = SyncEntry(
        operation: .upsert,
        record: FlowRecord(key: tuple("198.51.100.7", 51515, "192.0.2.10", 80, 6),
                           translated: tuple("192.0.2.10", 51515, "10.0.10.21", 8080, 6),
                           natMode: .fullnat, state: .established, flags: [.pickedUp], endpointIndex: 1,
                           ageMilliseconds: 1500, remainingMilliseconds: 21_598_500),
        version: 1_700_000_000_123_456, origin: 1)

    /// A default-NAT UDP flow being deleted.
    static let udpDelete = SyncEntry(
        operation: .delete,
        record: FlowRecord(key: tuple("203.0.113.5", 5353, "192.0.2.10", 53, 17),
                           translated: tuple("203.0.113.5", 5353, "10.0.10.22", 53, 17),
                           natMode: .default, state: .udpEstablished, flags: [], endpointIndex: 0,
                           ageMilliseconds: 30_000, remainingMilliseconds: 0),
        version: 1_700_000_000_223_456, origin: 3)

    /// One-arm TCP in FIN-WAIT with both FIN flags, extreme field values.
    static let tcpFin = SyncEntry(
        operation: .upsert,
        record: FlowRecord(key: tuple("255.255.255.255", 65535, "0.0.0.0", 0, 6),
                           translated: tuple("10.255.0.1", 32768, "10.0.10.23", 443, 6),
                           natMode: .onearm, state: .finWait, flags: [.finOriginal, .finReply], endpointIndex: 255,
                           ageMilliseconds: .max, remainingMilliseconds: 120_000),
        version: .max, origin: .max)

    /// An ICMP echo flow.
    static let icmp = SyncEntry(
        operation: .upsert,
        record: FlowRecord(key: tuple("198.51.100.8", 0x1234, "192.0.2.10", 0, 1),
                           translated: tuple("198.51.100.8", 0x1234, "10.0.10.21", 0, 1),
                           natMode: .default, state: .icmp, flags: [], endpointIndex: 0,
                           ageMilliseconds: 10, remainingMilliseconds: 29_990),
        version: 1_700_000_000_323_456, origin: 1)

    /// Entry i of a long batch: distinct keys and versions.
    static func numbered(_ i: Int) -> SyncEntry {
        var e = tcpUpsert
        e.record.key.sourcePort = UInt16(40000 + i)
        e.record.translated.sourcePort = UInt16(40000 + i)
        e.version += UInt64(i)
        e.operation = i % 5 == 4 ? .delete : .upsert
        return e
    }

    static func digestHashes(_ salt: UInt64) -> [UInt64] {
        (0..<UInt64(SyncWire.digestFanout)).map { SyncHashing.mix($0 &+ salt) }
    }

    /// One or more examples of every message type, with the channel each travels on.
    static let messages: [(name: String, channel: SyncChannel, message: SyncMessage)] = [
        ("hello", .datagram, .hello(Hello(bulkPort: 11112, inSync: true, nextSequence: 42))),
        ("delta-batch", .datagram, .deltaBatch(DeltaBatch(firstSequence: 42, entries: [tcpUpsert, udpDelete]))),
        ("delta-batch-empty", .datagram, .deltaBatch(DeltaBatch(firstSequence: 1, entries: []))),
        ("delta-batch-max", .datagram, .deltaBatch(DeltaBatch(firstSequence: 1000,
                                                              entries: (0..<SyncCodec.maxEntriesPerDatagram).map(numbered)))),
        ("ack", .datagram, .ack(Ack(streamEpoch: epoch, cumulative: 41))),
        ("nack", .datagram, .nack(Nack(streamEpoch: epoch, cumulative: 41, missing: [43...45, 50...50]))),
        ("bulk-request", .stream, .bulkRequest(BulkRequest(requestID: 7, leaves: [3, 300, 16383]))),
        ("bulk-request-all", .stream, .bulkRequest(BulkRequest(requestID: 8, leaves: []))),
        ("bulk-begin", .stream, .bulkBegin(BulkBegin(requestID: 7, streamEpoch: epoch, resumeSequence: 43, entryCount: 3))),
        ("bulk-chunk", .stream, .bulkChunk(BulkChunk(requestID: 7, entries: [tcpUpsert, tcpFin, icmp]))),
        ("bulk-end", .stream, .bulkEnd(BulkEnd(requestID: 7, entryCount: 3))),
        ("keepalive", .datagram, .keepalive(Keepalive(nextSequence: 43, inSync: false, entryCount: 1234))),
        ("digest-level0", .datagram, .digest(Digest(level: 0, bucket: 0, entryCount: 1234, hashes: digestHashes(0)))),
        ("digest-level1", .datagram, .digest(Digest(level: 1, bucket: 127, entryCount: 1234, hashes: digestHashes(1000)))),
        ("digest-request", .datagram, .digestRequest(DigestRequest(buckets: [0, 5, 127]))),
        ("probe", .gossip, probe),
        ("probe-request", .gossip, .probeRequest(ProbeRequest(probeID: 9, target: 3, gossip: Gossip(
            updates: [MemberUpdate(node: 1, incarnation: 1_700_000_000, status: .alive)], adverts: [])))),
        ("probe-ack", .gossip, probeAck),
        ("probe-indirect", .gossip, .probe(Probe(probeID: 9, target: 3, requester: 2, gossip: Gossip(
            updates: [MemberUpdate(node: 1, incarnation: 1_700_000_000, status: .alive),
                      MemberUpdate(node: 3, incarnation: 1_700_000_003, status: .dead),
                      MemberUpdate(node: 4, incarnation: 0, status: .left)],
            adverts: [advert, InstanceAdvert(instance: 0xdead_beef, term: 0, role: .fault, priority: 0, flags: [])])))),
        // A graceful restart's announcement, with the departing MASTER's advert (recentMaster).
        ("probe-restarting", .gossip, .probe(Probe(probeID: 11, target: 2, requester: 0, gossip: Gossip(
            updates: [MemberUpdate(node: 1, incarnation: 1_700_000_000, status: .restarting)],
            adverts: [InstanceAdvert(instance: 0x1234_5678, term: 7, role: .master, priority: 100,
                                     flags: [.inSync, .recentMaster])])))),
        ("service-digest", .config, serviceDigest),
        ("service-records", .config, serviceRecords),
        ("service-records-end", .config, .serviceRecords(ServiceRecords(records: []))),
        ("endpoint-verdicts", .config, endpointVerdicts),
        ("endpoint-verdicts-more", .config, .endpointVerdicts(EndpointVerdicts(
            generation: 1_700_000_000_600_000, part: 0, more: true,
            services: [ServiceVerdict(key: liveService.key, down: [])], hosts: []))),
        ("endpoint-verdicts-empty", .config, .endpointVerdicts(EndpointVerdicts(
            generation: 1, part: 0, more: false, services: [], hosts: []))),
    ]

    /// A verdict set in one part: a TCP service with two endpoints down (one by probe, one by
    /// probe and a red host), a UDP service with none down, and two host states.
    static let endpointVerdicts = SyncMessage.endpointVerdicts(EndpointVerdicts(
        generation: 1_700_000_000_500_000, part: 0, more: false,
        services: [
            ServiceVerdict(key: liveService.key, down: [
                DownEndpoint(address: ip("10.0.0.11"), port: 8080, reasons: [.probe], sinceMicros: 1_700_000_000_400_000),
                DownEndpoint(address: ip("10.0.0.12"), port: 8080, reasons: [.probe, .hostState],
                             sinceMicros: 1_700_000_000_450_000),
            ]),
            ServiceVerdict(key: deletedService.key, down: []),
        ],
        hosts: [
            HostVerdict(host: ip("10.0.0.12"), state: .red, version: 1_700_000_000_450_000, origin: 3),
            HostVerdict(host: ip("10.0.0.13"), state: .green, version: 1_700_000_000_460_000, origin: 1),
        ]))

    /// A live service (a short JSON spec) and a tombstone.
    static let liveService = ServiceRecord(
        key: ServiceKey(vip: IPv4Address("198.51.100.10")!, port: 80, proto: .tcp), version: 1_700_000_000_000_123,
        origin: 1, spec: Array(#"{"endpoints":[{"endpointIP":"10.0.0.11","targetPort":8080,"weight":1}],"serviceArguments":{"externalIP":"198.51.100.10","port":80,"protocol":"tcp","sel":0}}"#.utf8))
    static let deletedService = ServiceRecord(
        key: ServiceKey(vip: IPv4Address("198.51.100.11")!, port: 53, proto: .udp), version: 1_700_000_000_000_200,
        origin: 3, spec: nil)
    static let serviceRecords = SyncMessage.serviceRecords(ServiceRecords(records: [liveService, deletedService]))
    static let serviceDigest = SyncMessage.serviceDigest(ServiceDigest(
        count: 1, digest: SyncHashing.serviceHash(key: liveService.key, spec: liveService.spec ?? []),
        maxVersion: 1_700_000_000_000_200))

    /// An advert: master at term 7, in sync.
    static let advert = InstanceAdvert(instance: 0x1234_5678, term: 7, role: .master, priority: 100, flags: [.inSync])
    static let probe = SyncMessage.probe(Probe(probeID: 5, target: 2, requester: 0, gossip: Gossip(
        updates: [MemberUpdate(node: 1, incarnation: 1_700_000_000, status: .alive),
                  MemberUpdate(node: 3, incarnation: 1_700_000_003, status: .suspect)],
        adverts: [advert])))
    static let probeAck = SyncMessage.probeAck(ProbeAck(probeID: 5, target: 1, requester: 0, gossip: Gossip(
        updates: [MemberUpdate(node: 1, incarnation: 1_700_000_000, status: .alive)],
        adverts: [InstanceAdvert(instance: 0x1234_5678, term: 7, role: .backup, priority: 90, flags: [.inSync, .external])])))
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

enum TempFiles {
    /// A fresh directory under the system temp dir; the caller removes it.
    static func directory() throws -> URL {
        let url = FileManager.default.temporaryDirectory
            .appendingPathComponent("tandem-syncwire-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    static func write(_ bytes: [UInt8], to url: URL, mode: Int) throws {
        try Data(bytes).write(to: url)
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: url.path)
    }
}
