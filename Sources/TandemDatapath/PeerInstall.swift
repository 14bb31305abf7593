import CLibBPF
import CTandemShim
import Foundation
import Glibc
import TandemCore

// Installing peers' connections into this node's maps: the kernel installer (tandem_install,
// batched through a syscall program) with the map-call fallback, reaping, and the active-connection
// counters user space keeps right when it deletes entries itself.

/// Why a replicated connection could not be installed. `tableFull` is the one a replication
/// receiver is expected to count and carry on from.
public enum ConnectionInstallError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The kernel refused the insert for want of room (E2BIG, ENOMEM, ENOSPC).
    case tableFull
    /// The record cannot describe a connection (its key and translation differ in protocol).
    case invalidRecord(String)
    /// Any other map error, with the call and its errno.
    case map(call: String, errno: Int32)

    static func from(call: String, errno code: Int32) -> ConnectionInstallError {
        switch code {
        case E2BIG, ENOMEM, ENOSPC: .tableFull
        case EINVAL where call == "tandem_install": .invalidRecord("rejected by tandem_install (protocols differ or bad state/mode)")
        default: .map(call: call, errno: code)
        }
    }

    public var description: String {
        switch self {
        case .tableFull: "connection table full"
        case .invalidRecord(let why): "invalid flow record: \(why)"
        case .map(let call, let code): "\(call): \(String(cString: strerror(code))) (errno \(code))"
        }
    }
}

/// Which implementation installs replicated connections. Tests pin one; callers get `.automatic`.
enum InstallPath: Sendable, CaseIterable {
    case automatic, kernel, userSpace
}

extension Datapath {
    /// Installs a connection a peer replicated, both halves, so this node forwards it exactly as
    /// the owner does. The reply half is written first, so a packet never finds an original whose
    /// reply half is missing. Re-installing the same connection (a state change, a refresh) keeps
    /// this node's packet and byte counters; an original that pointed at another reply key (an
    /// older connection that reused the client's tuple) has that stale half removed, and so has
    /// the other half of a connection this node had on the same reply key.
    ///
    /// Times: `created_ns` is now minus the record's age, `last_seen_ns` is set so the local idle
    /// timeout for the record's state fires when the owner's would (never later than now; and
    /// never earlier than a local packet already refreshed it). Both on CLOCK_MONOTONIC, the
    /// clock bpf_ktime_get_ns() reads.
    ///
    /// Throws `ConnectionInstallError`.
    public nonisolated func installReplicated(_ r: FlowRecord, serviceSlot: UInt32, endpointIndex: UInt8,
                                              timeouts: Timeouts) throws {
        try installReplicated(r, serviceSlot: serviceSlot, endpointIndex: endpointIndex, timeouts: timeouts, path: .automatic)
    }

    /// Installs many replicated connections with the same rules as the single install. With the
    /// kernel installer (the tandem_install syscall program) a chunk of up to 1,024 records costs
    /// one syscall. Each element: the record, the local service slot (or `UInt32(TDM_MAX_SERVICES)`
    /// for a service this node does not have) and the local endpoint index. Returns how many were
    /// installed and how many failed (table full, a map error or an invalid record).
    @discardableResult
    public nonisolated func installReplicated(_ batch: [(FlowRecord, UInt32, UInt8)],
                                              timeouts: Timeouts) -> (installed: Int, failed: Int) {
        installReplicated(batch, timeouts: timeouts, path: .automatic)
    }

    /// Whether installs run in the kernel (the tandem_install program loaded and its buffer is
    /// mapped) rather than through four map syscalls per record.
    public nonisolated var hasKernelInstaller: Bool { installer?.isOpen ?? false }

    nonisolated func installReplicated(_ r: FlowRecord, serviceSlot: UInt32, endpointIndex: UInt8, timeouts: Timeouts,
                                       path: InstallPath) throws {
        let req = tdm_install_req(r, serviceSlot: serviceSlot, endpointIndex: endpointIndex, timeouts: effectiveTimeouts(timeouts))
        if path != .userSpace, let installer, installer.isOpen {
            var result: Int32 = 0
            try installer.run([req][...]) { _, rc in result = rc }
            if result != 0 { throw ConnectionInstallError.from(call: "tandem_install", errno: -result) }
            return
        }
        if path == .kernel { throw ConnectionInstallError.map(call: "tandem_install not loaded", errno: ENOSYS) }
        try checkLayout()
        try installMerging(ReplicaPair(req, now: monotonicNanoseconds()))
    }

    nonisolated func installReplicated(_ batch: [(FlowRecord, UInt32, UInt8)], timeouts: Timeouts,
                                       path: InstallPath) -> (installed: Int, failed: Int) {
        let timeouts = effectiveTimeouts(timeouts)
        let reqs = batch.map { tdm_install_req($0.0, serviceSlot: $0.1, endpointIndex: $0.2, timeouts: timeouts) }
        var installed = 0
        var failed = 0
        if path != .userSpace, let installer, installer.isOpen {
            var start = 0
            while start < reqs.count {
                let end = min(start + Int(TDM_INSTALL_BATCH), reqs.count)
                do {
                    try installer.run(reqs[start..<end]) { _, rc in
                        if rc == 0 { installed += 1 } else { failed += 1 }
                    }
                } catch {
                    failed += end - start
                }
                start = end
            }
            return (installed, failed)
        }
        if path == .kernel || (try? checkLayout()) == nil { return (0, batch.count) }
        let now = monotonicNanoseconds()
        for req in reqs {
            do {
                try installMerging(ReplicaPair(req, now: now))
                installed += 1
            } catch {
                failed += 1
            }
        }
        return (installed, failed)
    }

    /// Removes a connection: the entry at `key` and the other half it points to, the latter only
    /// while that half points back at `key` (its key may belong to a newer connection). The entry
    /// at `key` goes first, so a packet never finds an original without its reply half. False when
    /// nothing was at `key`.
    @discardableResult
    public nonisolated func removeConnection(_ key: FlowTuple) -> Bool {
        let k = tdm_flow_key(key)
        guard let e = lookupEntry(k) else { return false }
        let removed = deleteKey(k)
        let pe = lookupEntry(e.peer)
        if let pe, sameKey(pe.peer, k) { deleteKey(e.peer) }
        // Both halves are gone: the count goes back unless `k` was a stale half holding none.
        if removed, e.flags & UInt8(TDM_CT_F_COUNTED) != 0,
           e.dir == UInt8(TDM_DIR_ORIGINAL.rawValue) || pe.map({ sameKey($0.peer, k) }) ?? true {
            activeCounters?.give(e.service_id, e.endpoint_index)
        }
        return removed
    }

    /// Gives back the active count of the connection whose half `e` (at `k`) was just deleted from
    /// user space, as lc_release does in the kernel, and clears the flag on the half left behind so
    /// that half's own deletion (the Swift reaper deletes both, one at a time) gives nothing again.
    nonisolated func releaseCount(of e: tdm_ct_entry, at k: tdm_flow_key) {
        let counted = UInt8(TDM_CT_F_COUNTED)
        guard e.flags & counted != 0 else { return }
        if var other = lookupEntry(e.peer) {
            guard sameKey(other.peer, k) else {
                // The other half belongs to another connection: an original's count goes back
                // with it; a stale reply half held none.
                if e.dir == UInt8(TDM_DIR_ORIGINAL.rawValue) { activeCounters?.give(e.service_id, e.endpoint_index) }
                return
            }
            if other.flags & counted != 0 {
                other.flags &= ~counted
                // BPF_EXIST: never bring back a half the kernel deleted meanwhile.
                _ = try? write(e.peer, other, flags: UInt64(BPF_EXIST))
            }
        }
        activeCounters?.give(e.service_id, e.endpoint_index)
    }

    // MARK: - internals

    /// The fast paths read and write entries as Swift's view of the shared header's structs.
    private nonisolated func checkLayout() throws {
        guard maps.ct.keySize == MemoryLayout<tdm_flow_key>.size, maps.ct.valueSize == MemoryLayout<tdm_ct_entry>.size else {
            throw ConnectionInstallError.invalidRecord("tdm_ct layout \(maps.ct.keySize)/\(maps.ct.valueSize) does not match the header")
        }
    }

    /// Single-record install, merging with whatever the table holds at both keys.
    private nonisolated func installMerging(_ p: ReplicaPair) throws {
        var orig = p.orig
        var reply = p.reply
        let oldOrig = lookupEntry(p.origKey)
        let oldReply = lookupEntry(p.replyKey)
        // The same connection already installed here: keep local counters, move the version on,
        // and keep a later local last-seen (packets this node forwarded itself).
        let sameOrig = oldOrig.map { $0.dir == UInt8(TDM_DIR_ORIGINAL.rawValue) && sameKey($0.peer, p.replyKey) } ?? false
        let sameReply = oldReply.map { $0.dir == UInt8(TDM_DIR_REPLY.rawValue) && sameKey($0.peer, p.origKey) } ?? false
        if let o = oldOrig, sameOrig {
            orig.packets = o.packets
            orig.bytes = o.bytes
            orig.last_seen_ns = max(orig.last_seen_ns, o.last_seen_ns)
        }
        if let o = oldReply, sameReply {
            reply.packets = o.packets
            reply.bytes = o.bytes
            reply.last_seen_ns = max(reply.last_seen_ns, o.last_seen_ns)
        }
        let version = max(oldOrig?.version ?? 0, oldReply?.version ?? 0) &+ 1
        orig.version = version == 0 ? 1 : version
        reply.version = orig.version
        // Active counts, as tandem_install keeps them: this connection's own (held already?), and
        // those of other connections whose halves are overwritten.
        let counted = UInt8(TDM_CT_F_COUNTED)
        let live = orig.flags & counted != 0
        var held: (UInt32, UInt8)?
        if let o = oldOrig, sameOrig, o.flags & counted != 0 { held = (o.service_id, o.endpoint_index) }
        if held == nil, let o = oldReply, sameReply, o.flags & counted != 0 { held = (o.service_id, o.endpoint_index) }

        try write(p.replyKey, reply)
        do {
            try write(p.origKey, orig)
        } catch {
            // Never leave a reply half of ours without its original; put back what was there.
            if let o = oldReply { _ = try? write(p.replyKey, o) } else { deleteKey(p.replyKey) }
            throw error
        }
        // The original used to point at another half (an older connection on the same client
        // tuple, or this key held another connection's reply half): that half is stale now.
        if let o = oldOrig, !sameKey(o.peer, p.replyKey) {
            let other = lookupEntry(o.peer)
            let ends = other.map { sameKey($0.peer, p.origKey) } ?? true
            if other != nil && ends { deleteKey(o.peer) }
            if ends && !sameOrig && o.flags & counted != 0 { activeCounters?.give(o.service_id, o.endpoint_index) }
        }
        // The reply key belonged to another connection here: its other half would now forward
        // into this connection's translated tuple. The owner's table is authoritative.
        if let o = oldReply, !sameKey(o.peer, p.origKey) {
            let other = lookupEntry(o.peer)
            let ends = other.map { sameKey($0.peer, p.replyKey) } ?? true
            if other != nil && ends { deleteKey(o.peer) }
            if ends && o.flags & counted != 0 { activeCounters?.give(o.service_id, o.endpoint_index) }
        }
        let now = (orig.service_id, orig.endpoint_index)
        if let h = held, !(live && h == now) { activeCounters?.give(h.0, h.1) }
        if live && held.map({ $0 != now }) ?? true { activeCounters?.take(now.0, now.1) }
    }

    nonisolated func lookupEntry(_ key: tdm_flow_key) -> tdm_ct_entry? {
        var k = key
        var v = tdm_ct_entry()
        let rc = withUnsafePointer(to: &k) { kp in
            withUnsafeMutablePointer(to: &v) { vp in bpf_map_lookup_elem(maps.ct.fd, kp, vp) }
        }
        return rc == 0 ? v : nil
    }

    private nonisolated func write(_ key: tdm_flow_key, _ value: tdm_ct_entry, flags: UInt64 = UInt64(BPF_ANY)) throws {
        var k = key
        var v = value
        let rc = withUnsafePointer(to: &k) { kp in
            withUnsafePointer(to: &v) { vp in bpf_map_update_elem(maps.ct.fd, kp, vp, flags) }
        }
        // libbpf 1.x returns -errno (and sets errno).
        if rc != 0 { throw ConnectionInstallError.from(call: "update tdm_ct", errno: rc < 0 ? -rc : errno) }
    }

    @discardableResult
    private nonisolated func deleteKey(_ key: tdm_flow_key) -> Bool {
        var k = key
        return withUnsafePointer(to: &k) { bpf_map_delete_elem(maps.ct.fd, $0) } == 0
    }
}

extension tdm_install_req {
    /// The request for one record, with its relative times in nanoseconds: idle is how long the
    /// owner's timeout for the state has already run (timeout - remaining; a remaining time beyond
    /// our timeout counts as just seen).
    init(_ r: FlowRecord, serviceSlot: UInt32, endpointIndex: UInt8, timeouts: Timeouts) {
        self.init()
        key = tdm_flow_key(r.key)
        xlate = tdm_flow_key(r.translated)
        // The local service's timeout: the owner's remaining time counts down from the same one.
        let timeout = UInt64(timeouts.seconds(for: r.state, serviceSlot: serviceSlot)) * 1_000_000_000
        let remaining = UInt64(r.remainingMilliseconds) * 1_000_000
        age_ns = UInt64(r.ageMilliseconds) * 1_000_000
        idle_ns = timeout > remaining ? timeout - remaining : 0
        service_id = serviceSlot
        endpoint_index = endpointIndex
        nat_mode = r.natMode.rawValue
        state = r.state.rawValue
        flags = r.flags.rawValue
    }
}

/// Both halves of a replicated connection as they will be written, before merging with the table
/// (the user-space path; tandem_install, bpf/lib/install.h, does the same in the kernel).
struct ReplicaPair {
    var origKey: tdm_flow_key
    var replyKey: tdm_flow_key
    var orig: tdm_ct_entry
    var reply: tdm_ct_entry

    init(_ q: tdm_install_req, now: UInt64) throws {
        guard q.key.proto == q.xlate.proto else {
            throw ConnectionInstallError.invalidRecord("key \(q.key.tuple) and translation \(q.xlate.tuple) differ in protocol")
        }
        origKey = q.key
        replyKey = tdm_flow_key(q.xlate.tuple.reversed)
        var e = tdm_ct_entry()
        e.created_ns = now - min(q.age_ns, now)
        e.last_seen_ns = now - min(q.idle_ns, now)
        e.service_id = q.service_id
        e.version = 1
        e.endpoint_ip = q.xlate.daddr
        e.endpoint_port = q.xlate.dport
        e.endpoint_index = q.endpoint_index
        e.nat_mode = q.nat_mode
        e.state = q.state
        // Counted here like a local flow while live (the owner's COUNTED bit is its own).
        let live = q.state != UInt8(TDM_CT_CLOSED.rawValue) && q.state != UInt8(TDM_CT_TIME_WAIT.rawValue)
            && q.service_id < UInt32(TDM_MAX_SERVICES)
        e.flags = (q.flags & ~UInt8(TDM_CT_F_COUNTED)) | UInt8(TDM_CT_F_FROM_PEER) | (live ? UInt8(TDM_CT_F_COUNTED) : 0)
        e.refreshed = UInt32(truncatingIfNeeded: now >> 30) // the owner has just told every peer about it
        var o = e
        o.dir = UInt8(TDM_DIR_ORIGINAL.rawValue)
        o.xlate = q.xlate
        o.peer = replyKey
        var p = e
        p.dir = UInt8(TDM_DIR_REPLY.rawValue)
        p.xlate = tdm_flow_key(q.key.tuple.reversed)
        p.peer = origKey
        orig = o
        reply = p
    }
}

/// The kernel installer: the tandem_install program and the mmapped value of the tdm_install
/// map it reads. The buffer is shared, so batches run one at a time under the lock, and `unmap`
/// (on close) waits for a running batch.
final class KernelInstaller: @unchecked Sendable {
    private let programFD: Int32
    private let reapProgramFD: Int32
    private let lock = NSLock()
    private var base: UnsafeMutableRawPointer?
    private let length: Int

    init?(programFD: Int32, reapProgramFD: Int32 = -1, mapFD: Int32, valueSize: Int) {
        guard programFD >= 0, mapFD >= 0,
              valueSize == Int(TDM_INSTALL_HDR) + Int(TDM_INSTALL_BATCH) * MemoryLayout<tdm_install_req>.size else { return nil }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        length = (valueSize + page - 1) / page * page
        guard let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, mapFD, 0), p != MAP_FAILED else { return nil }
        base = p
        self.programFD = programFD
        self.reapProgramFD = reapProgramFD
    }

    var canReap: Bool { reapProgramFD >= 0 }

    /// Stages up to TDM_INSTALL_BATCH reap candidates (keys of either half) and runs tandem_reap
    /// once; returns the connections it removed.
    func reap(_ keys: ArraySlice<tdm_flow_key>) throws -> Int {
        try lock.withLock {
            guard reapProgramFD >= 0 else { throw ConnectionInstallError.map(call: "tandem_reap (unavailable)", errno: EBADF) }
            let (_, retval) = try stageAndRun(reapProgramFD, name: "tandem_reap", keys.map { k in
                var r = tdm_install_req()
                r.key = k
                return r
            }[...])
            return Int(Int32(bitPattern: retval))
        }
    }

    var isOpen: Bool { lock.withLock { base != nil } }

    /// Stages up to TDM_INSTALL_BATCH requests, runs the program once and reports each result
    /// (0 or a negative errno) in order.
    func run(_ reqs: ArraySlice<tdm_install_req>, _ result: (Int, Int32) -> Void) throws {
        try lock.withLock {
            let (base, _) = try stageAndRun(programFD, name: "tandem_install", reqs)
            let size = MemoryLayout<tdm_install_req>.size
            let resultOffset = MemoryLayout<tdm_install_req>.offset(of: \tdm_install_req.result) ?? 56
            for i in 0..<min(reqs.count, Int(TDM_INSTALL_BATCH)) {
                result(i, base.load(fromByteOffset: Int(TDM_INSTALL_HDR) + i * size + resultOffset, as: Int32.self))
            }
        }
    }

    /// Writes up to TDM_INSTALL_BATCH records into the shared buffer and runs `program` over them
    /// once (BPF_PROG_TEST_RUN). Called under `lock`; returns the buffer and the program's value.
    private func stageAndRun(_ program: Int32, name: String,
                             _ reqs: ArraySlice<tdm_install_req>) throws -> (UnsafeMutableRawPointer, UInt32) {
        guard let base else { throw ConnectionInstallError.map(call: "\(name) (datapath closed)", errno: EBADF) }
        let n = min(reqs.count, Int(TDM_INSTALL_BATCH))
        let size = MemoryLayout<tdm_install_req>.size
        for (i, r) in reqs.prefix(n).enumerated() {
            base.storeBytes(of: r, toByteOffset: Int(TDM_INSTALL_HDR) + i * size, as: tdm_install_req.self)
        }
        base.storeBytes(of: UInt32(n), toByteOffset: 0, as: UInt32.self)
        var opts = bpf_test_run_opts()
        opts.sz = MemoryLayout<bpf_test_run_opts>.size
        let rc = bpf_prog_test_run_opts(program, &opts)
        if rc != 0 { throw ConnectionInstallError.map(call: "BPF_PROG_TEST_RUN \(name)", errno: rc < 0 ? -rc : errno) }
        return (base, opts.retval)
    }

    func unmap() {
        lock.withLock {
            if let base { munmap(base, length) }
            base = nil
        }
    }
}

@inline(__always)
func sameKey(_ a: tdm_flow_key, _ b: tdm_flow_key) -> Bool {
    a.saddr == b.saddr && a.daddr == b.daddr && a.sport == b.sport && a.dport == b.dport && a.proto == b.proto
}

/// tdm_lc_active mmapped (BPF_F_MMAPABLE): the same counters the programs update, changed with the
/// same atomics, so user space can give back the counts of connections it deletes itself.
final class ActiveCounters: @unchecked Sendable {
    private let lock = NSLock() // guards `base` against unmap on close
    private var base: UnsafeMutablePointer<UInt64>?
    private let length: Int
    private let count = Int(TDM_MAX_SERVICES) * Int(TDM_MAX_ENDPOINTS)

    init?(map: BPFMap) {
        guard map.valueSize == 8 else { return nil }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        length = (count * 8 + page - 1) / page * page
        guard let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, map.fd, 0), p != MAP_FAILED else { return nil }
        base = p.bindMemory(to: UInt64.self, capacity: count)
    }

    private func index(_ slot: UInt32, _ endpoint: UInt8) -> UInt32? {
        slot < UInt32(TDM_MAX_SERVICES) ? slot * UInt32(TDM_MAX_ENDPOINTS) + UInt32(endpoint & UInt8(TDM_MAX_ENDPOINTS - 1)) : nil
    }

    private func with(_ i: UInt32, _ body: (UnsafeMutablePointer<UInt64>) -> Void) {
        lock.withLock {
            guard let base, Int(i) < count else { return }
            body(base + Int(i))
        }
    }

    func load(_ i: UInt32) -> UInt64? {
        var v: UInt64?
        with(i) { v = tdm_atomic_load_u64($0) }
        return v
    }

    func store(_ i: UInt32, _ v: UInt64) { with(i) { tdm_atomic_store_u64($0, v) } }

    func take(_ slot: UInt32, _ endpoint: UInt8) {
        if let i = index(slot, endpoint) { with(i) { tdm_atomic_add_u64($0, 1) } }
    }

    func give(_ slot: UInt32, _ endpoint: UInt8) {
        if let i = index(slot, endpoint) { with(i) { tdm_atomic_give_u64($0) } }
    }

    func unmap() {
        lock.withLock {
            if let base { munmap(base, length) }
            base = nil
        }
    }
}
