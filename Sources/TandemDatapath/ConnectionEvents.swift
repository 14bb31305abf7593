import CLibBPF
import CTandemShim
import Foundation
import TandemCore

extension ConnectionEvent {
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

    private let deliver: Bool
    /// Events seen per kind, counted on the polling thread.
    public var counts: [String: UInt64] { stopFlag.kindCounts }

    /// With `deliver` false events are only counted, which costs next to nothing per event; the
    /// stream is for consumers such as replication.
    public init(eventsMap: BPFMap, deliver: Bool = true, bufferLimit: Int = 65536) {
        mapFD = eventsMap.fd
        self.deliver = deliver
        (events, continuation) = AsyncStream.makeStream(of: ConnectionEvent.self,
                                                        bufferingPolicy: .bufferingNewest(bufferLimit))
    }

    public func start() throws {
        let box = Unmanaged.passRetained(CallbackBox(continuation: continuation, flag: stopFlag, deliver: deliver))
        guard let rb = ring_buffer__new(mapFD, { ctx, data, size in
            guard let ctx, let data else { return 0 }
            let box = Unmanaged<CallbackBox>.fromOpaque(ctx).takeUnretainedValue()
            guard size >= MemoryLayout<tdm_ct_event>.size,
                  let ev = ConnectionEvent(record: data.loadUnaligned(as: tdm_ct_event.self)) else {
                box.flag.countMalformed()
                return 0
            }
            box.flag.count(ev.kind)
            if box.deliver { box.continuation.yield(ev) }
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
    let deliver: Bool
    init(continuation: AsyncStream<ConnectionEvent>.Continuation, flag: StopFlag, deliver: Bool) {
        self.continuation = continuation
        self.flag = flag
        self.deliver = deliver
    }
}

private final class StopFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var stopped = false
    private var bad = 0
    var isStopped: Bool { lock.withLock { stopped } }
    func stop() { lock.withLock { stopped = true } }
    private var kinds: [String: UInt64] = [:]
    func countMalformed() { lock.withLock { bad += 1 } }
    func count(_ kind: ConnectionEvent.Kind) { lock.withLock { kinds["\(kind)", default: 0] += 1 } }
    var kindCounts: [String: UInt64] { lock.withLock { kinds } }
    var malformed: Int { lock.withLock { bad } }
}

