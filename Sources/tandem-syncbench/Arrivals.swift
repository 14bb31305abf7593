import CLibBPF
import CTandemShim
import Foundation
import TandemBenchSupport

/// Wakes the polling thread when node 2's daemon has just written its tables (bpf/bench_arrivals.c:
/// syscall tracepoints on its bpf() calls that run the install program or update a map), so it
/// looks for arrived flows when they can have arrived, woken as tandem-ctbench's ctnetlink NEW
/// listener is, rather than every 200 us. A flow is timed when a lookup finds it, which is after
/// its write: the lag can only be overstated, by the wakeup and the lookups.
final class ArrivalWatch: @unchecked Sendable {
    private let object: OpaquePointer
    private let links: [OpaquePointer]
    private let ring: OpaquePointer
    private let box: Unmanaged<ArrivalBox>

    /// Loads `objectPath` and watches the process `pid` (node 2's daemon, as the root namespace sees it).
    init(objectPath: String, pid: Int32) throws {
        guard let obj = bpf_object__open_file(objectPath, nil) else {
            throw SyncBenchError("open \(objectPath): \(String(cString: strerror(errno)))")
        }
        guard bpf_object__load(obj) == 0 else {
            let e = errno
            bpf_object__close(obj)
            throw SyncBenchError("load \(objectPath): \(String(cString: strerror(e)))")
        }
        let targetFD = bpf_object__find_map_fd_by_name(obj, "arrivals_target")
        let ringFD = bpf_object__find_map_fd_by_name(obj, "arrivals")
        guard targetFD >= 0, ringFD >= 0 else {
            bpf_object__close(obj)
            throw SyncBenchError("\(objectPath): maps missing")
        }
        var zero: UInt32 = 0
        var target = UInt32(bitPattern: pid)
        guard bpf_map_update_elem(targetFD, &zero, &target, UInt64(BPF_ANY)) == 0 else {
            let e = errno
            bpf_object__close(obj)
            throw SyncBenchError("set target pid: \(String(cString: strerror(e)))")
        }
        var attached: [OpaquePointer] = []
        for name in ["bench_arrivals_enter", "bench_arrivals_exit"] {
            guard let prog = bpf_object__find_program_by_name(obj, name), let l = bpf_program__attach(prog) else {
                let e = errno
                for l in attached { bpf_link__destroy(l) }
                bpf_object__close(obj)
                throw SyncBenchError("attach \(name) (is tracefs mounted on /sys/kernel/tracing?): \(String(cString: strerror(e)))")
            }
            attached.append(l)
        }
        let b = Unmanaged.passRetained(ArrivalBox())
        guard let rb = ring_buffer__new(ringFD, { ctx, _, _ in
            guard let ctx else { return 0 }
            Unmanaged<ArrivalBox>.fromOpaque(ctx).takeUnretainedValue().writes += 1
            return 0
        }, b.toOpaque(), nil) else {
            let e = errno
            b.release()
            for l in attached { bpf_link__destroy(l) }
            bpf_object__close(obj)
            throw SyncBenchError("ring_buffer__new: \(String(cString: strerror(e)))")
        }
        object = obj
        links = attached
        ring = rb
        box = b
    }

    /// Waits up to `timeoutMilliseconds` for node 2 to write; returns how many writing calls
    /// ended meanwhile (0 on a timeout). Call from one thread only.
    func wait(timeoutMilliseconds: Int32) -> Int {
        _ = ring_buffer__poll(ring, timeoutMilliseconds)
        let b = box.takeUnretainedValue()
        defer { b.writes = 0 }
        return b.writes
    }

    deinit {
        ring_buffer__free(ring)
        for l in links { bpf_link__destroy(l) }
        bpf_object__close(object)
        box.release()
    }
}

private final class ArrivalBox {
    var writes = 0
}

struct SyncBenchError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
