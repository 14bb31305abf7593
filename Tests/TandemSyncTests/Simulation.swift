import TandemCore
import TandemSync
import TandemSyncWire

/// Makes flow records for tests: distinct clients to one VIP, fullnat to two endpoints.
enum Flows {
    static let vip = IPv4Address(10, 0, 10, 143)

    static func record(_ n: Int, state: ConnectionState = .established, remaining: UInt32 = 120_000,
                       proto: UInt8 = 6) -> FlowRecord {
        let client = IPv4Address(UInt32(0x0A00_1400) &+ UInt32(n % 200 + 1))
        let port = UInt16(1024 + (n / 200) % 60_000)
        let key = FlowTuple(source: client, destination: vip, sourcePort: port, destinationPort: 56002, proto: proto)
        let ep = IPv4Address(10, 0, 10, UInt8(21 + n % 2))
        let translated = FlowTuple(source: vip, destination: ep, sourcePort: port, destinationPort: 80, proto: proto)
        return FlowRecord(key: key, translated: translated, natMode: .fullnat, state: state, flags: [],
                          endpointIndex: UInt8(n % 2), ageMilliseconds: 0, remainingMilliseconds: remaining)
    }
}

/// A cluster of replication cores wired through a simulated network: datagrams can be dropped,
/// duplicated and delayed (reordered) with seeded randomness; bulk transfers are reliable unless
/// the link is cut. Each node's "datapath" is a dictionary the install/remove actions edit.
struct SimulatedCluster {
    struct Datagram {
        var deliverAt: UInt64
        var order: UInt64
        var from: UInt32
        var to: UInt32
        var epoch: UInt64
        var message: SyncMessage
    }

    var nodes: [UInt32: FlowReplicationCore] = [:]
    var datapaths: [UInt32: [FlowTuple: FlowRecord]] = [:]
    var inSyncEvents: [UInt32: [Bool]] = [:]
    var now: UInt64 = 1_000
    var wallBase: UInt64 = 1_700_000_000_000_000
    var inFlight: [Datagram] = []
    var rng: SplitMix64
    var dropPercent: UInt64 = 0
    var duplicatePercent: UInt64 = 0
    var maxDelay: UInt64 = 0
    /// Datagrams matching this are dropped (cut links, blocked message kinds).
    var blocked: @Sendable (UInt32, UInt32, SyncMessage) -> Bool = { _, _, _ in false }
    var bulkBlocked: @Sendable (UInt32, UInt32) -> Bool = { _, _ in false }
    /// Bulk transfers that connect and then never answer (a stuck server): open until aborted.
    var bulkHangs = false
    var hangingPulls: Set<UInt32> = []
    var abortedPulls = 0
    var order: UInt64 = 0
    var datagramsSent = 0
    var codecRoundTrip = true
    /// Every bulk request made, in order: (requester, server, request).
    var pulls: [(requester: UInt32, server: UInt32, request: BulkRequest)] = []

    init(seed: UInt64) { rng = SplitMix64(seed: seed) }

    var time: SyncTime { SyncTime(monotonicMillis: now, wallMicros: wallBase + now * 1000) }

    mutating func addNode(_ id: UInt32, peers: [UInt32], configure: (inout ReplicationConfig) -> Void = { _ in }) {
        var config = ReplicationConfig(selfID: id, peers: peers)
        config.bulkPort = 7000
        configure(&config)
        var core = FlowReplicationCore(config: config, epoch: wallBase + now * 1000 + UInt64(id), seed: UInt64(id) * 7919)
        datapaths[id] = [:]
        let actions = core.start(now: time)
        nodes[id] = core
        perform(actions, at: id)
    }

    /// A local datapath change at a node: recorded in its datapath and handed to its core.
    mutating func localChange(_ id: UInt32, _ r: FlowRecord, deleted: Bool = false) {
        if deleted { datapaths[id]?[r.key] = nil } else { datapaths[id]?[r.key] = r }
        guard var core = nodes[id] else { return }
        var actions = core.onLocalChange(r, deleted: deleted, now: time)
        actions += core.flush(now: time)
        nodes[id] = core
        perform(actions, at: id)
    }

    mutating func perform(_ actions: [FlowReplicationAction], at id: UInt32) {
        for a in actions {
            switch a {
            case .install(let r): datapaths[id]?[r.key] = r
            case .remove(let k): datapaths[id]?[k] = nil
            case .send(let m, let to): transmit(m, from: id, to: to)
            case .broadcast(let m):
                for p in nodes[id]?.config.peers ?? [] { transmit(m, from: id, to: p) }
            case .pull(let from, let req): bulk(request: req, requester: id, server: from)
            case .inSyncChanged(let v): inSyncEvents[id, default: []].append(v)
            case .abortPull(let requestID):
                if hangingPulls.remove(requestID) != nil { abortedPulls += 1 }
            }
        }
    }

    mutating func transmit(_ m: SyncMessage, from: UInt32, to: UInt32) {
        guard nodes[to] != nil, !blocked(from, to, m) else { return }
        datagramsSent += 1
        if rng.next() % 100 < dropPercent { return }
        let copies = rng.next() % 100 < duplicatePercent ? 2 : 1
        for _ in 0..<copies {
            let delay = maxDelay == 0 ? 0 : rng.next() % (maxDelay + 1)
            order += 1
            inFlight.append(Datagram(deliverAt: now + delay, order: order, from: from, to: to,
                                     epoch: nodes[from]?.epoch ?? 0, message: roundTrip(m)))
        }
    }

    /// Sends every message through the real codec, so the simulation exercises it too.
    func roundTrip(_ m: SyncMessage) -> SyncMessage {
        guard codecRoundTrip else { return m }
        let bytes = SyncCodec.encodePayload(m)
        return (try? SyncCodec.decodePayload(type: m.type, bytes)) ?? m
    }

    mutating func bulk(request: BulkRequest, requester: UInt32, server: UInt32) {
        guard var s = nodes[server], var r = nodes[requester] else { return }
        pulls.append((requester, server, request))
        if bulkHangs {
            hangingPulls.insert(request.requestID)
            return
        }
        if bulkBlocked(server, requester) {
            let actions = r.onTransferFailed(requestID: request.requestID, now: time)
            nodes[requester] = r
            perform(actions, at: requester)
            return
        }
        let (begin, entries, flushed) = s.serveBulk(request, now: time)
        nodes[server] = s
        perform(flushed, at: server)
        r.onBulkBegin(roundTripBegin(begin), from: server)
        var actions: [FlowReplicationAction] = []
        var i = 0
        while i < entries.count {
            let chunk = Array(entries[i..<min(i + 1000, entries.count)])
            actions += r.onBulkChunk(requestID: request.requestID, entries: chunk, from: server, now: time)
            i += chunk.count
        }
        actions += r.onBulkEnd(BulkEnd(requestID: request.requestID, entryCount: UInt64(entries.count)), from: server, now: time)
        nodes[requester] = r
        perform(actions, at: requester)
    }

    func roundTripBegin(_ b: BulkBegin) -> BulkBegin {
        if case .bulkBegin(let d) = roundTrip(.bulkBegin(b)) { return d }
        return b
    }

    /// Advances time by `ms`, delivering datagrams and ticking every node each millisecond.
    mutating func run(ms: UInt64) {
        for _ in 0..<ms {
            now += 1
            deliverDue()
            for id in nodes.keys.sorted() {
                guard var core = nodes[id] else { continue }
                var actions = core.onTick(now: time)
                actions += core.flush(now: time)
                nodes[id] = core
                perform(actions, at: id)
            }
        }
    }

    mutating func deliverDue() {
        while true {
            let due = inFlight.indices.filter { inFlight[$0].deliverAt <= now }
            guard !due.isEmpty else { return }
            let batch = due.map { inFlight[$0] }.sorted { ($0.deliverAt, $0.order) < ($1.deliverAt, $1.order) }
            inFlight.removeAll { $0.deliverAt <= now }
            for d in batch {
                guard var core = nodes[d.to] else { continue }
                let header = SyncHeader(type: d.message.type, sender: d.from, epoch: d.epoch, sequence: d.order, length: 0)
                var actions = core.onMessage(d.message, from: header, now: time)
                actions += core.flush(now: time)
                nodes[d.to] = core
                perform(actions, at: d.to)
            }
        }
    }

    /// Live flows per the node's replica table: key -> (version, state).
    func liveTable(_ id: UInt32) -> [FlowTuple: UInt64] {
        var out: [FlowTuple: UInt64] = [:]
        for (k, r) in nodes[id]?.table.allRecords.map({ $0 }) ?? [] where !r.isTombstone { out[k] = r.entry.version }
        return out
    }

    /// A node's datapath contents without the local-only flag, for comparing across nodes.
    func datapathView(_ id: UInt32) -> [FlowTuple: ConnectionState] {
        (datapaths[id] ?? [:]).mapValues(\.state)
    }
}
