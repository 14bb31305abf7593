import ArgumentParser
import Foundation
import TandemCore
import TandemSealing
import TandemSync
import TandemSyncWire

/// The replication core and the codec alone, in one process and one thread: what each entry
/// costs in the state machines, the codec and the sealing, with no sockets, maps or threads in the
/// way. Repeatable under `valgrind --tool=callgrind` (instruction counts), so a change to the core
/// can be judged on a shared machine where wall-clock runs are noisy.
struct Core: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run --entries changes through two replication cores in-process; print ns per entry per phase (JSON).",
        discussion: """
        Phases: local (node 1 records its changes and numbers them into batches), seal (encode and \
        seal each batch), open (authenticate and decode it at node 2), apply (node 2's core merges \
        it), serve (node 1 snapshots its table for a bulk transfer) and bulk (a joining node 3 \
        merges that snapshot).
        """)
    @Option(help: "Changes to run through.") var entries: Int = 200_000
    @Option(help: "Entry kind: flows (the BPF table's) or kernel (conntrack entries).") var kind: String = "flows"

    func validate() throws {
        guard (1...10_000_000).contains(entries) else { throw ValidationError("--entries must be 1...10000000") }
        guard ["flows", "kernel"].contains(kind) else { throw ValidationError("--kind must be flows or kernel") }
    }

    func run() throws {
        if kind == "kernel" {
            try measure((0..<entries).map(Self.kernelRecord), as: KernelSyncEntry.self)
        } else {
            try measure((0..<entries).map(Self.record), as: SyncEntry.self)
        }
    }

    private func measure<E: ReplicatedEntry>(_ records: [E.Record], as _: E.Type) throws {
        guard let key = ClusterKey(bytes: [UInt8](repeating: 7, count: ClusterKey.byteCount)) else {
            throw ValidationError("cluster key")
        }
        let epoch: UInt64 = 1_700_000_000_000_000
        var node1 = ReplicationCore<E>(config: ReplicationConfig(selfID: 1, peers: [2, 3]), epoch: epoch, seed: 1)
        var node2 = ReplicationCore<E>(config: ReplicationConfig(selfID: 2, peers: [1]), epoch: epoch + 1, seed: 2)
        var node3 = ReplicationCore<E>(config: ReplicationConfig(selfID: 3, peers: [1]), epoch: epoch + 2, seed: 3)
        var sealer = SyncSealer(key: key, sender: 1, epoch: epoch)
        var opener = SyncOpener(key: key, selfID: 2)
        var time = SyncTime(monotonicMillis: 1000, wallMicros: epoch)
        _ = node1.start(now: time)
        _ = node2.start(now: time)
        _ = node3.start(now: time)
        // Node 2 takes node 1's stream from its start, as a node already in sync does.
        let hello = Hello(bulkPort: 0, inSync: true, nextSequence: 1)
        _ = node2.onMessage(SyncMessage.hello(hello), from: header(sender: 1, epoch: epoch), now: time)

        var clock = Stopwatch()
        var batches: [SyncMessage] = []
        for (i, r) in records.enumerated() {
            time.wallMicros += 1
            _ = node1.onLocalChange(r, deleted: false, now: time)
            if (i + 1) % 1024 == 0 || i == records.count - 1 {
                for case .broadcast(let m) in node1.flush(now: time) { batches.append(m) }
            }
        }
        let local = clock.lap()

        var sealed: [[UInt8]] = []
        sealed.reserveCapacity(batches.count)
        for m in batches { sealed.append(sealer.seal(m, channel: E.datagramChannel)) }
        let seal = clock.lap()

        var opened: [(SyncHeader, SyncMessage)] = []
        opened.reserveCapacity(sealed.count)
        var openFailures = 0
        for bytes in sealed {
            switch opener.open(bytes, channel: E.datagramChannel) {
            case .success(let hm): opened.append(hm)
            case .failure: openFailures += 1
            }
        }
        let open = clock.lap()

        var installs = 0
        for (h, m) in opened {
            for case .install in node2.onMessage(m, from: h, now: time) { installs += 1 }
        }
        let apply = clock.lap()

        let request = BulkRequest(requestID: 1, leaves: [])
        let (begin, snapshot, _) = node1.serveBulk(request, now: time)
        let serve = clock.lap()

        _ = node3.onMessage(SyncMessage.hello(hello), from: header(sender: 1, epoch: epoch), now: time)
        var bulkInstalls = 0
        // Node 3 asked node 1 for its table on its first tick (it joined with a peer in sync).
        let pulls = node3.onTick(now: time).compactMap { a -> BulkRequest? in
            if case .pull(_, let r) = a { return r } else { return nil }
        }
        if let pull = pulls.first {
            node3.onBulkBegin(BulkBegin(requestID: pull.requestID, streamEpoch: epoch, resumeSequence: begin.resumeSequence,
                                        entryCount: UInt64(snapshot.count)), from: 1)
            var i = 0
            let per = E.maxEntriesPerStreamFrame
            while i < snapshot.count {
                let chunk = Array(snapshot[i..<min(i + per, snapshot.count)])
                for case .install in node3.onBulkChunk(requestID: pull.requestID, entries: chunk, from: 1, now: time) { bulkInstalls += 1 }
                i += per
            }
            _ = node3.onBulkEnd(BulkEnd(requestID: pull.requestID, entryCount: UInt64(snapshot.count)), from: 1, now: time)
        }
        let bulk = clock.lap()

        let n = Double(entries)
        func per(_ ns: UInt64) -> String { String(format: "%.1f", Double(ns) / n) }
        print("{\"phase\":\"core\",\"kind\":\"\(kind)\",\"entries\":\(entries),\"batches\":\(batches.count),\"installed\":\(installs),"
              + "\"bulkInstalled\":\(bulkInstalls),\"openFailures\":\(openFailures),"
              + "\"ns_per_entry\":{\"local\":\(per(local)),\"seal\":\(per(seal)),\"open\":\(per(open)),"
              + "\"apply\":\(per(apply)),\"serve\":\(per(serve)),\"bulk\":\(per(bulk))}}")
        guard installs == entries, bulkInstalls == entries, openFailures == 0 else {
            throw ValidationError("entries lost in the run: installed \(installs), bulk \(bulkInstalls), open failures \(openFailures)")
        }
    }

    private func header(sender: UInt32, epoch: UInt64) -> SyncHeader {
        SyncHeader(type: .hello, flags: [], sender: sender, epoch: epoch, sequence: 0, length: 0)
    }

    /// A fullnat TCP flow, distinct for every i: client 10.1.x.y:port -> VIP:56002.
    static func record(_ i: Int) -> FlowRecord {
        let client = IPv4Address(0x0A01_0000 | UInt32(truncatingIfNeeded: i >> 14))
        let port = UInt16(1024 + (i & 0x3FFF))
        let vip = IPv4Address(0x0A00_0A8F)
        let key = FlowTuple(source: client, destination: vip, sourcePort: port, destinationPort: 56002, proto: 6)
        let translated = FlowTuple(source: vip, destination: IPv4Address(0x0A00_1402),
                                   sourcePort: port, destinationPort: 80, proto: 6)
        return FlowRecord(key: key, translated: translated, natMode: .fullnat, state: .established, flags: [],
                          endpointIndex: 0, ageMilliseconds: 10, remainingMilliseconds: 300_000)
    }
}

extension Core {
    /// A masqueraded TCP connection, distinct for every i: 10.1.x.y:port -> 192.0.2.80:443, its
    /// reply to the gateway's outside address 198.51.100.1.
    static func kernelRecord(_ i: Int) -> KernelConnection {
        let client = IPv4Address(0x0A01_0000 | UInt32(truncatingIfNeeded: i >> 14))
        let port = UInt16(1024 + (i & 0x3FFF))
        let server = IPv4Address(0xC000_0250)
        let outside = IPv4Address(0xC633_6401)
        return KernelConnection(
            original: KernelTuple(source: client, destination: server, proto: 6, l4: .ports(source: port, destination: 443)),
            reply: KernelTuple(source: server, destination: outside, proto: 6, l4: .ports(source: 443, destination: port)),
            tcp: TCPInfo(state: .established, flagsOriginal: 0x03, flagsReply: 0x03, windowScaleOriginal: 7, windowScaleReply: 7),
            status: [.seenReply, .assured, .confirmed, .srcNAT, .srcNATDone, .dstNATDone], timeout: 432_000)
    }
}

struct Stopwatch {
    private var last = DispatchTime.now().uptimeNanoseconds
    mutating func lap() -> UInt64 {
        let now = DispatchTime.now().uptimeNanoseconds
        defer { last = now }
        return now - last
    }
}
