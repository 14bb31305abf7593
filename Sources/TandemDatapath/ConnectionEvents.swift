import CLibBPF
import CTandemShim
import Foundation
import TandemCore
import Synchronization

extension ConnectionEvent {
    init?(record e: tdm_ct_event) {
        let kind: Kind
        switch Int32(e.type) {
        case Int32(TDM_EV_NEW.rawValue): kind = .new
        case Int32(TDM_EV_STATE.rawValue): kind = .stateChanged
        case Int32(TDM_EV_DELETE.rawValue): kind = .deleted
        case Int32(TDM_EV_EXPIRE.rawValue): kind = .expired
        case Int32(TDM_EV_REFRESH.rawValue): kind = .refreshed
        default: return nil
        }
        self.init(kind: kind, key: e.key.tuple, translated: e.xlate.tuple,
                  state: ConnectionState(rawValue: e.state) ?? .none, natMode: NATMode(rawValue: e.nat_mode) ?? .default,
                  serviceSlot: e.service_id, version: e.version)
        endpointIndex = e.endpoint_index
        createdNanoseconds = e.created_ns
        flags = ConnectionFlags(datapath: e.flags)
    }
}

/// Polls the datapath's ring buffer on its own thread (the poll blocks, and the shared pool has
/// only as many threads as cores). Events go to `onBatch`, one call per poll with everything that
/// poll read (so consumers pay per burst, not per event); without it they are only counted.
///
/// Wakeups (see struct tdm_event_ctl): while events flow, the datapath submits them without
/// waking anyone and this thread drains the ring on an interval: 0.2 ms for a steady flow, 1 ms
/// for a burst (full batches), so neither costs an interrupt per event. A trickle (a few events
/// per drain), or a few empty rounds, and it marks itself waiting and blocks; the next event
/// wakes it at once, so a lone event is not held for an interval.
public final class RingBufferReader: @unchecked Sendable {
    /// How often the ring is drained while events flow steadily (about 5,000 wakeups a second
    /// however fast they come; half the interval is what an event waits on average).
    public static let activeIntervalNanoseconds = 200_000
    static let timerSlackNanoseconds: UInt = 1_000
    /// Events in one drain from which the flow counts as a burst, drained every
    /// `burstIntervalMilliseconds` instead: a burst's latency is the queue's, not the interval's,
    /// and bigger batches cost less CPU per entry.
    static let burstThreshold: Int32 = 64
    static let burstIntervalMilliseconds: Int32 = 1
    /// Empty rounds before the thread blocks until woken.
    static let idleRoundsBeforeWaiting = 4
    /// Events in one drain at or above which the thread keeps draining on the interval (a burst:
    /// one wakeup per millisecond, not per event); below it, it waits to be woken per event.
    static let batchingThreshold: Int32 = 4
    /// Upper bound on a blocked wait: covers an event submitted just as the thread marked itself
    /// waiting, which the datapath may have sent without a wakeup (it reads the flag before it
    /// commits the record). The first wait after going idle is short, since that is when the race
    /// can happen; later ones are long, to keep an idle node quiet.
    static let firstWaitMilliseconds: Int32 = 2
    static let waitingTimeoutMilliseconds: Int32 = 20

    // Written only before the thread starts and read by the thread: no lock needed for these.
    private let mapFD: Int32
    private let control: EventControl?
    private let stopFlag = StopFlag()
    private var thread: Thread?
    private let onBatch: (@Sendable ([ConnectionEvent]) -> Void)?
    /// Records that did not decode (a layout mismatch would show here).
    public var malformed: Int { stopFlag.malformed }

    /// Events seen per kind, counted on the polling thread.
    public var counts: [String: UInt64] { stopFlag.kindCounts }

    /// `controlMap` is the datapath's tdm_event_ctl; without it (or if it cannot be mapped) the
    /// thread never blocks for long and simply drains every millisecond.
    public init(eventsMap: BPFMap, controlMap: BPFMap? = nil, onBatch: (@Sendable ([ConnectionEvent]) -> Void)? = nil) {
        mapFD = eventsMap.fd
        control = controlMap.flatMap(EventControl.init)
        self.onBatch = onBatch
    }

    public func start() throws {
        let box = Unmanaged.passRetained(CallbackBox(collect: onBatch != nil))
        guard let rb = ring_buffer__new(mapFD, { ctx, data, size in
            guard let ctx, let data else { return 0 }
            let box = Unmanaged<CallbackBox>.fromOpaque(ctx).takeUnretainedValue()
            guard size >= MemoryLayout<tdm_ct_event>.size,
                  let ev = ConnectionEvent(record: data.loadUnaligned(as: tdm_ct_event.self)) else {
                box.malformed += 1
                return 0
            }
            box.kinds[ev.kind.rawValue] += 1
            if box.collect { box.batch.append(ev) }
            return 0
        }, box.toOpaque(), nil) else {
            box.release()
            throw DatapathError("ring_buffer__new", errno: errno)
        }
        let flag = stopFlag
        let handle = RingBufferHandle(rb)
        let onBatch = onBatch
        let control = control
        let t = Thread {
            // Events feed replication: keep up with the datapath (nice -5, this thread only).
            _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, -5)
            // The drain interval is 200 us: the default 50 us slack would stretch it by a quarter.
            _ = tdm_set_thread_timer_slack(RingBufferReader.timerSlackNanoseconds)
            let b = box.takeUnretainedValue()
            func deliver() {
                flag.add(b.kinds, malformed: b.malformed)
                for i in b.kinds.indices { b.kinds[i] = 0 }
                b.malformed = 0
                if !b.batch.isEmpty {
                    onBatch?(b.batch)
                    b.batch.removeAll(keepingCapacity: true)
                }
            }
            var idleRounds = 0
            while !flag.isStopped {
                var rc = ring_buffer__consume(handle.rb)
                if rc < 0 && rc != -EINTR { break }
                deliver()
                if rc >= RingBufferReader.batchingThreshold {
                    idleRounds = 0
                } else if rc > 0 {
                    // A trickle: waiting (one wakeup per event) costs little at this rate and
                    // saves the event most of a millisecond.
                    idleRounds = RingBufferReader.idleRoundsBeforeWaiting
                } else {
                    idleRounds += 1
                }
                if let control, idleRounds >= RingBufferReader.idleRoundsBeforeWaiting {
                    control.setWaiting(true)
                    // An event submitted before the flag was visible came without a wakeup.
                    rc = ring_buffer__consume(handle.rb)
                    if rc == 0 {
                        let first = idleRounds == RingBufferReader.idleRoundsBeforeWaiting
                        rc = ring_buffer__poll(handle.rb, first ? RingBufferReader.firstWaitMilliseconds
                                                                : RingBufferReader.waitingTimeoutMilliseconds)
                        if rc == 0 { idleRounds += 1 }
                    }
                    control.setWaiting(false)
                    if rc < 0 && rc != -EINTR { break }
                    deliver()
                    // Woken for a trickle: keep waiting per event; a burst: drain on the interval.
                    if rc >= RingBufferReader.batchingThreshold { idleRounds = 0 }
                    continue
                }
                // A steady flow: sleep the short interval, then drain again (the ring holds far
                // more than arrives meanwhile). A burst: the long one, so the replication loop
                // gets big batches and sends full datagrams.
                if rc >= RingBufferReader.burstThreshold {
                    rc = ring_buffer__poll(handle.rb, RingBufferReader.burstIntervalMilliseconds)
                    if rc < 0 && rc != -EINTR { break }
                    deliver()
                } else if control == nil && rc == 0 {
                    // No control map (an older object): the program wakes the reader for every
                    // event, so an idle reader can block instead of waking 5,000 times a second.
                    rc = ring_buffer__poll(handle.rb, RingBufferReader.waitingTimeoutMilliseconds)
                    if rc < 0 && rc != -EINTR { break }
                    deliver()
                } else {
                    var pause = timespec(tv_sec: 0, tv_nsec: RingBufferReader.activeIntervalNanoseconds)
                    _ = nanosleep(&pause, nil)
                }
            }
            ring_buffer__free(handle.rb)
            control?.unmap()
            box.release()
        }
        t.name = "tandem-ringbuf"
        thread = t
        t.start()
    }

    public func stop() {
        stopFlag.stop()
    }
}

/// The mmapped tdm_event_ctl value, shared with the datapath; used only by the polling thread.
private final class EventControl: @unchecked Sendable {
    private var base: UnsafeMutableRawPointer?
    private let length: Int

    init?(map: BPFMap) {
        guard map.valueSize >= MemoryLayout<tdm_event_ctl>.size else { return nil }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        length = (map.valueSize + page - 1) / page * page
        guard let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, map.fd, 0), p != MAP_FAILED else { return nil }
        base = p
    }

    func setWaiting(_ waiting: Bool) {
        guard let base else { return }
        tdm_atomic_store_u32(base.assumingMemoryBound(to: UInt32.self), waiting ? 1 : 0)
    }

    func unmap() {
        if let base { munmap(base, length) }
        base = nil
    }
}

/// The ring buffer is used only by the polling thread after creation.
private final class RingBufferHandle: @unchecked Sendable {
    let rb: OpaquePointer
    init(_ rb: OpaquePointer) { self.rb = rb }
}

/// State of the polling thread's callback; touched only by that thread.
private final class CallbackBox: @unchecked Sendable {
    let collect: Bool
    var batch: [ConnectionEvent] = []
    /// Per `ConnectionEvent.Kind.rawValue`.
    var kinds = [UInt64](repeating: 0, count: ConnectionEvent.Kind.allCases.count)
    var malformed = 0
    init(collect: Bool) {
        self.collect = collect
    }
}

private final class StopFlag: Sendable {
    private struct State {
        var stopped = false
        var bad = 0
        var kinds: [String: UInt64] = [:]
    }
    private let state = Mutex(State())
    var isStopped: Bool { state.withLock { $0.stopped } }
    func stop() { state.withLock { $0.stopped = true } }
    /// Reported from the first poll on (as 0 too); the rarer kinds once seen.
    private static let alwaysShown: Set<ConnectionEvent.Kind> = [.new, .stateChanged, .deleted]
    /// Folds one poll's counts in: one lock per poll, not per event.
    func add(_ k: [UInt64], malformed m: Int) {
        guard k.contains(where: { $0 != 0 }) || m != 0 else { return }
        state.withLock { s in
            for kind in ConnectionEvent.Kind.allCases where k[kind.rawValue] > 0 || Self.alwaysShown.contains(kind) {
                s.kinds["\(kind)", default: 0] += k[kind.rawValue]
            }
            s.bad += m
        }
    }
    var kindCounts: [String: UInt64] { state.withLock { $0.kinds } }
    var malformed: Int { state.withLock { $0.bad } }
}

/// A ring-buffer record decoded in full: the event plus the emission time, which
/// `ConnectionEvent` does not carry. `flags` repeats `event.flags` (`.fromPeer` marks an entry
/// installed from a peer's sync stream).
public struct DatapathEventRecord: Sendable, Hashable {
    public var event: ConnectionEvent
    public var flags: ConnectionFlags
    /// When the datapath emitted it, on this node's monotonic clock.
    public var timestampNanoseconds: UInt64

    init?(_ e: tdm_ct_event) {
        guard let ev = ConnectionEvent(record: e) else { return nil }
        event = ev
        flags = ConnectionFlags(datapath: e.flags)
        timestampNanoseconds = e.ts_ns
    }
}

extension Datapath {
    /// Reads every record waiting in the ring buffer, without blocking. For tests and tools only:
    /// it consumes records, so it must not run while a `RingBufferReader` polls the same map.
    public nonisolated func drainEvents() throws -> [DatapathEventRecord] {
        let box = DrainBox()
        guard let rb = ring_buffer__new(maps.events.fd, { ctx, data, size in
            guard let ctx, let data else { return 0 }
            let box = Unmanaged<DrainBox>.fromOpaque(ctx).takeUnretainedValue()
            guard size >= MemoryLayout<tdm_ct_event>.size,
                  let r = DatapathEventRecord(data.loadUnaligned(as: tdm_ct_event.self)) else {
                box.malformed += 1
                return 0
            }
            box.records.append(r)
            return 0
        }, Unmanaged.passUnretained(box).toOpaque(), nil) else {
            throw DatapathError("ring_buffer__new", errno: errno)
        }
        defer { ring_buffer__free(rb) }
        let rc = withExtendedLifetime(box) { ring_buffer__consume(rb) }
        if rc < 0 { throw DatapathError("ring_buffer__consume", errno: rc) }
        return box.records
    }
}

/// Collects records during one synchronous ring_buffer__consume call.
private final class DrainBox {
    var records: [DatapathEventRecord] = []
    var malformed = 0
}
