import CLibBPF
import CTandemShim
import Foundation
import TandemCore

/// A change in the connection table: from the datapath's ring buffer (new, state, delete), or
/// from user space's periodic scan (expired), which catches what the datapath cannot report.
public struct ConnectionEvent: Sendable, Hashable {
    public enum Kind: Sendable, Hashable {
        case new, stateChanged, deleted, expired
    }
    public var kind: Kind
    public var key: FlowTuple
    public var translated: FlowTuple
    public var state: ConnectionState
    public var natMode: NATMode
    public var serviceSlot: UInt32
    public var version: UInt32

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

    init?(record e: tdm_ct_event) {
        let kind: Kind
        switch Int32(e.type) {
        case Int32(TDM_EV_NEW.rawValue): kind = .new
        case Int32(TDM_EV_STATE.rawValue): kind = .stateChanged
        case Int32(TDM_EV_DELETE.rawValue): kind = .deleted
        default: return nil
        }
        self.init(kind: kind, key: e.key.tuple, translated: e.xlate.tuple,
                  state: ConnectionState(rawValue: e.state) ?? .none, natMode: NATMode(rawValue: e.nat_mode) ?? .default,
                  serviceSlot: e.service_id, version: e.version)
    }
}

/// Polls the datapath's ring buffer on its own thread (the poll blocks, and the shared pool has
/// only as many threads as cores) and yields decoded events to an AsyncStream.
public final class RingBufferReader: @unchecked Sendable {
    // Written only before the thread starts and read by the thread: no lock needed for these.
    private let mapFD: Int32
    private let continuation: AsyncStream<ConnectionEvent>.Continuation
    public let events: AsyncStream<ConnectionEvent>
    private let stopFlag = StopFlag()
    private var thread: Thread?
    /// Records that did not decode (a layout mismatch would show here).
    public var malformed: Int { stopFlag.malformed }

    public init(eventsMap: BPFMap, bufferLimit: Int = 65536) {
        mapFD = eventsMap.fd
        (events, continuation) = AsyncStream.makeStream(of: ConnectionEvent.self,
                                                        bufferingPolicy: .bufferingNewest(bufferLimit))
    }

    public func start() throws {
        let box = Unmanaged.passRetained(CallbackBox(continuation: continuation, flag: stopFlag))
        guard let rb = ring_buffer__new(mapFD, { ctx, data, size in
            guard let ctx, let data else { return 0 }
            let box = Unmanaged<CallbackBox>.fromOpaque(ctx).takeUnretainedValue()
            guard size >= MemoryLayout<tdm_ct_event>.size,
                  let ev = ConnectionEvent(record: data.loadUnaligned(as: tdm_ct_event.self)) else {
                box.flag.countMalformed()
                return 0
            }
            box.continuation.yield(ev)
            return 0
        }, box.toOpaque(), nil) else {
            box.release()
            throw DatapathError("ring_buffer__new", errno: errno)
        }
        let flag = stopFlag
        let cont = continuation
        let handle = RingBufferHandle(rb)
        let t = Thread {
            while !flag.isStopped {
                let rc = ring_buffer__poll(handle.rb, 100)
                if rc < 0 && rc != -EINTR { break }
            }
            ring_buffer__free(handle.rb)
            box.release()
            cont.finish()
        }
        t.name = "tandem-ringbuf"
        thread = t
        t.start()
    }

    public func stop() {
        stopFlag.stop()
    }
}

/// The ring buffer is used only by the polling thread after creation.
private final class RingBufferHandle: @unchecked Sendable {
    let rb: OpaquePointer
    init(_ rb: OpaquePointer) { self.rb = rb }
}

private final class CallbackBox: @unchecked Sendable {
    let continuation: AsyncStream<ConnectionEvent>.Continuation
    let flag: StopFlag
    init(continuation: AsyncStream<ConnectionEvent>.Continuation, flag: StopFlag) {
        self.continuation = continuation
        self.flag = flag
    }
}

private final class StopFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var stopped = false
    private var bad = 0
    var isStopped: Bool { lock.withLock { stopped } }
    func stop() { lock.withLock { stopped = true } }
    func countMalformed() { lock.withLock { bad += 1 } }
    var malformed: Int { lock.withLock { bad } }
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
        for e in entries { byKey[e.key] = e }
        var delete: [FlowTuple] = []
        var events: [ConnectionEvent] = []
        for e in entries where e.direction == .original {
            let peer = byKey[e.peerKey]
            let idle = min(e.idleSeconds, peer?.idleSeconds ?? .infinity)
            guard idle > Double(timeouts.seconds(for: e.state)) else { continue }
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
        return (delete, events)
    }
}
