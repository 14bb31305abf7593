import Foundation
import TandemCore
import TandemSealing
import TandemSyncWire

// Shared by the wire, sealing and replication test targets.

/// The fixed inputs of the golden vectors (documented in proto/vectors/README.md).
public enum Fixtures {
    /// Bytes 0x00 ... 0x1f.
    public static let key = ClusterKey(bytes: (0..<32).map { UInt8($0) })!
    /// Bytes 0x20 ... 0x3f: "another cluster".
    public static let otherKey = ClusterKey(bytes: (32..<64).map { UInt8($0) })!
    public static let sender: UInt32 = 1
    public static let epoch: UInt64 = 1_700_000_000_000_000
    /// The receiving node the invalid vectors are opened by, and its cluster.
    public static let selfID: UInt32 = 2
    public static let members: Set<UInt32> = [1, 2, 3]

    public static func opener() -> SyncOpener { SyncOpener(key: key, selfID: selfID, members: members) }

    public static func ip(_ s: String) -> IPv4Address { IPv4Address(s)! }

    public static func tuple(_ s: String, _ sp: UInt16, _ d: String, _ dp: UInt16, _ proto: UInt8) -> FlowTuple {
        FlowTuple(source: ip(s), destination: ip(d), sourcePort: sp, destinationPort: dp, proto: proto)
    }

    /// A full-NAT TCP flow, established, picked up mid-flow.
    public static let tcpUpsert = SyncEntry(
        operation: .upsert,
        record: FlowRecord(key: tuple("198.51.100.7", 51515, "192.0.2.10", 80, 6),
                           translated: tuple("192.0.2.10", 51515, "10.0.10.21", 8080, 6),
                           natMode: .fullnat, state: .established, flags: [.pickedUp], endpointIndex: 1,
                           ageMilliseconds: 1500, remainingMilliseconds: 21_598_500),
        version: 1_700_000_000_123_456, origin: 1)

    /// A default-NAT UDP flow being deleted.
    public static let udpDelete = SyncEntry(
        operation: .delete,
        record: FlowRecord(key: tuple("203.0.113.5", 5353, "192.0.2.10", 53, 17),
                           translated: tuple("203.0.113.5", 5353, "10.0.10.22", 53, 17),
                           natMode: .default, state: .udpEstablished, flags: [], endpointIndex: 0,
                           ageMilliseconds: 30_000, remainingMilliseconds: 0),
        version: 1_700_000_000_223_456, origin: 3)

    /// One-arm TCP in FIN-WAIT with both FIN flags, extreme field values.
    public static let tcpFin = SyncEntry(
        operation: .upsert,
        record: FlowRecord(key: tuple("255.255.255.255", 65535, "0.0.0.0", 0, 6),
                           translated: tuple("10.255.0.1", 32768, "10.0.10.23", 443, 6),
                           natMode: .onearm, state: .finWait, flags: [.finOriginal, .finReply], endpointIndex: 255,
                           ageMilliseconds: .max, remainingMilliseconds: 120_000),
        version: .max, origin: .max)

    /// An ICMP echo flow.
    public static let icmp = SyncEntry(
        operation: .upsert,
        record: FlowRecord(key: tuple("198.51.100.8", 0x1234, "192.0.2.10", 0, 1),
                           translated: tuple("198.51.100.8", 0x1234, "10.0.10.21", 0, 1),
                           natMode: .default, state: .icmp, flags: [], endpointIndex: 0,
                           ageMilliseconds: 10, remainingMilliseconds: 29_990),
        version: 1_700_000_000_323_456, origin: 1)

    /// Entry i of a long batch: distinct keys and versions.
    public static func numbered(_ i: Int) -> SyncEntry {
        var e = tcpUpsert
        e.record.key.sourcePort = UInt16(40000 + i)
        e.record.translated.sourcePort = UInt16(40000 + i)
        e.version += UInt64(i)
        e.operation = i % 5 == 4 ? .delete : .upsert
        return e
    }

    public static func digestHashes(_ salt: UInt64) -> [UInt64] {
        (0..<UInt64(SyncWire.digestFanout)).map { SyncHashing.mix($0 &+ salt) }
    }

    /// One or more examples of every message type, with the channel each travels on.
    public static let messages: [(name: String, channel: SyncChannel, message: SyncMessage)] = [
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
        // The kernel conntrack table's replication (§15): its own channels and delta stream.
        ("kernel-hello", .kernelDatagram, .hello(Hello(bulkPort: 11116, inSync: true, nextSequence: 7))),
        ("kernel-delta-batch", .kernelDatagram, .kernelDeltaBatch(KernelDeltaBatch(
            firstSequence: 7, entries: [kernelMasquerade, kernelPortForward, kernelPing, kernelDelete]))),
        ("kernel-delta-batch-max", .kernelDatagram, .kernelDeltaBatch(KernelDeltaBatch(
            firstSequence: 100, entries: (0..<SyncCodec.maxKernelEntriesPerDatagram).map(kernelNumbered)))),
        ("kernel-ack", .kernelDatagram, .ack(Ack(streamEpoch: epoch, cumulative: 10))),
        ("kernel-bulk-request", .kernelStream, .bulkRequest(BulkRequest(requestID: 3, leaves: []))),
        ("kernel-bulk-chunk", .kernelStream, .kernelBulkChunk(KernelBulkChunk(
            requestID: 3, entries: [kernelMasquerade, kernelPortForward, kernelPing]))),
    ]

    /// An inside client's TCP connection out through masquerade: 10.1.0.5:40000 to
    /// 198.51.100.20:443, its source rewritten to the gateway's floating 203.0.113.10:61000;
    /// established, window tracking flags and scales seen, marked and assured.
    public static let kernelMasquerade = KernelSyncEntry(
        operation: .upsert,
        connection: KernelConnection(
            original: .ports(6, ip("10.1.0.5"), 40000, ip("198.51.100.20"), 443),
            reply: .ports(6, ip("198.51.100.20"), 443, ip("203.0.113.10"), 61000),
            tcp: TCPInfo(state: .established, flagsOriginal: TCPInfo.flagWindowScale | TCPInfo.flagSACKPermitted,
                         flagsReply: TCPInfo.flagWindowScale, windowScaleOriginal: 7, windowScaleReply: 9),
            status: [.seenReply, .assured, .confirmed, .srcNAT, .srcNATDone, .dstNATDone],
            mark: 0x100, zone: 0, timeout: 431_999),
        version: 1_700_000_000_700_000, origin: 1)

    /// An outside client through the DNAT port forward: 198.51.100.30:5353 to the floating
    /// 203.0.113.10:8053, sent to the inside server 10.1.0.7:53; UDP, in zone 2.
    public static let kernelPortForward = KernelSyncEntry(
        operation: .upsert,
        connection: KernelConnection(
            original: .ports(17, ip("198.51.100.30"), 5353, ip("203.0.113.10"), 8053),
            reply: .ports(17, ip("10.1.0.7"), 53, ip("198.51.100.30"), 5353),
            status: [.seenReply, .confirmed, .dstNAT, .srcNATDone, .dstNATDone],
            mark: 0, zone: 2, timeout: 29),
        version: 1_700_000_000_700_001, origin: 1)

    /// A ping through masquerade: the ICMP id is the tuple's L4 field.
    public static let kernelPing = KernelSyncEntry(
        operation: .upsert,
        connection: KernelConnection(
            original: KernelTuple(source: ip("10.1.0.5"), destination: ip("198.51.100.20"), proto: 1,
                                  l4: .icmp(id: 0x4321, type: 8, code: 0)),
            reply: KernelTuple(source: ip("198.51.100.20"), destination: ip("203.0.113.10"), proto: 1,
                               l4: .icmp(id: 0x4321, type: 0, code: 0)),
            status: [.seenReply, .confirmed, .srcNAT, .srcNATDone, .dstNATDone], timeout: 30),
        version: 1_700_000_000_700_002, origin: 3)

    /// The masquerade connection's destroy: no timeout, the rest as last held.
    public static let kernelDelete: KernelSyncEntry = {
        var e = kernelMasquerade
        e.operation = .delete
        e.connection.timeout = nil
        e.connection.tcp = TCPInfo(state: .timeWait)
        e.version += 5_000_000
        return e
    }()

    /// Kernel entry i of a long batch: distinct keys and versions.
    public static func kernelNumbered(_ i: Int) -> KernelSyncEntry {
        var e = kernelMasquerade
        e.connection.original = .ports(6, ip("10.1.0.5"), UInt16(40000 + i), ip("198.51.100.20"), 443)
        e.connection.reply = .ports(6, ip("198.51.100.20"), 443, ip("203.0.113.10"), UInt16(61000 + i))
        e.version += UInt64(i)
        e.operation = i % 5 == 4 ? .delete : .upsert
        return e
    }

    /// A verdict set in one part: a TCP service with two endpoints down (one by probe, one by
    /// probe and a red host), a UDP service with none down, and two host states.
    public static let endpointVerdicts = SyncMessage.endpointVerdicts(EndpointVerdicts(
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
    public static let liveService = ServiceRecord(
        key: ServiceKey(vip: IPv4Address("198.51.100.10")!, port: 80, proto: .tcp), version: 1_700_000_000_000_123,
        origin: 1, spec: Array(#"{"endpoints":[{"endpointIP":"10.0.0.11","targetPort":8080,"weight":1}],"serviceArguments":{"externalIP":"198.51.100.10","port":80,"protocol":"tcp","sel":0}}"#.utf8))
    public static let deletedService = ServiceRecord(
        key: ServiceKey(vip: IPv4Address("198.51.100.11")!, port: 53, proto: .udp), version: 1_700_000_000_000_200,
        origin: 3, spec: nil)
    public static let serviceRecords = SyncMessage.serviceRecords(ServiceRecords(records: [liveService, deletedService]))
    public static let serviceDigest = SyncMessage.serviceDigest(ServiceDigest(
        count: 1, digest: SyncHashing.serviceHash(key: liveService.key, spec: liveService.spec ?? []),
        maxVersion: 1_700_000_000_000_200))

    /// An advert: master at term 7, in sync.
    public static let advert = InstanceAdvert(instance: 0x1234_5678, term: 7, role: .master, priority: 100, flags: [.inSync])
    public static let probe = SyncMessage.probe(Probe(probeID: 5, target: 2, requester: 0, gossip: Gossip(
        updates: [MemberUpdate(node: 1, incarnation: 1_700_000_000, status: .alive),
                  MemberUpdate(node: 3, incarnation: 1_700_000_003, status: .suspect)],
        adverts: [advert])))
    public static let probeAck = SyncMessage.probeAck(ProbeAck(probeID: 5, target: 1, requester: 0, gossip: Gossip(
        updates: [MemberUpdate(node: 1, incarnation: 1_700_000_000, status: .alive)],
        adverts: [InstanceAdvert(instance: 0x1234_5678, term: 7, role: .backup, priority: 90, flags: [.inSync, .external])])))

    public static func header(_ type: SyncMessageType, sender: UInt32 = Fixtures.sender, epoch: UInt64 = Fixtures.epoch,
                       sequence: UInt64 = 1, channel: SyncChannel = .datagram) -> SyncHeader {
        SyncHeader(type: type, flags: channel.headerFlags, sender: sender, epoch: epoch, sequence: sequence, length: 0)
    }

    /// Seals arbitrary payload bytes with the fixture key: authentic, whatever the payload says.
    public static func sealRaw(_ type: SyncMessageType, _ payload: [UInt8], key: ClusterKey = Fixtures.key,
                        sender: UInt32 = Fixtures.sender, epoch: UInt64 = Fixtures.epoch, sequence: UInt64 = 1,
                        channel: SyncChannel = .datagram) -> [UInt8] {
        let subkey = SyncSealing.subkey(key, sender: sender, epoch: epoch)
        return SyncSealing.seal(payload: payload,
                                header: header(type, sender: sender, epoch: epoch, sequence: sequence, channel: channel),
                                subkey: subkey)
    }
}

/// Deterministic generator for randomized tests.
public struct TestRNG: RandomNumberGenerator {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= SyncHashing.golden
        return SyncHashing.mix(state)
    }
}

public enum TempFiles {
    /// A fresh directory under the system temp dir; the caller removes it.
    public static func directory() throws -> URL {
        let url = FileManager.default.temporaryDirectory
            .appendingPathComponent("tandem-syncwire-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    public static func write(_ bytes: [UInt8], to url: URL, mode: Int) throws {
        try Data(bytes).write(to: url)
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: url.path)
    }
}
