import ArgumentParser
import CNetfilterConntrack
import Foundation
import TandemBenchSupport

/// The conntrackd half of the replication benchmark (bench/conntrackd-lib.sh runs it): creates
/// kernel conntrack entries in node 1's network namespace through ctnetlink (what conntrackd on
/// node 1 learns from as kernel events, like any new connection) and times their arrival in
/// node 2's kernel table, where conntrackd injects them (DisableExternalCache). Arrival is seen
/// by a thread in node 2's namespace subscribed to ctnetlink NEW events. setns() is per thread on
/// Linux: the main thread enters node 1, the watcher thread node 2. Root only.
/// Output: the same JSON lines as tandem-syncbench.
@main
struct CtBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tandem-ctbench",
        abstract: "conntrackd benchmark driver: create conntrack entries in one netns, time their arrival in another.",
        subcommands: [Rates.self, Burst.self, Fill.self, Count.self])
}

struct Target: ParsableArguments {
    @Option(help: "Network namespace of node 1 (name under /run/netns, or a path) where entries are created.")
    var sourceNs: String
    @Option(help: "Network namespace of node 2 whose table is watched.") var watchNs: String
    @Option(help: "Server address of the synthetic TCP entries.") var server: String = "10.0.10.143"
    @Option(help: "Server port.") var port: UInt16 = 56002
    @Option(help: "First flow number (keeps runs from reusing tuples).") var first: Int = 0
    @Option(help: "Conntrack timeout of the created entries, seconds.") var entryTimeout: UInt32 = 3600
}

// MARK: Commands

struct Rates: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "For each rate, create entries at that rate for --duration seconds; print lag percentiles (JSON lines).")
    @OptionGroup var target: Target
    @Option(help: "New entries per second, comma separated.") var rates: String = "1000,5000,10000,20000"
    @Option(help: "Seconds per rate.") var duration: Double = 2
    @Option(help: "Seconds to wait for stragglers after the last entry is created.") var wait: Double = 10

    func run() throws {
        let env = try Bench(target)
        var next = target.first
        for rate in rates.split(separator: ",").compactMap({ Int($0) }) where rate > 0 {
            let n = Int(Double(rate) * duration)
            let result = try env.run(flows: next..<(next + n), ratePerSecond: rate, timeout: wait)
            next += n
            print(result.json(extra: ["phase": "\"rate\"", "rate": "\(rate)"]))
            fflush(nil)
        }
    }
}

struct Burst: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create --count entries as fast as possible; print how long until node 2 holds them all (JSON).")
    @OptionGroup var target: Target
    @Option(help: "Entries to create.") var count: Int = 100_000
    @Option(help: "Seconds to wait for stragglers after the last entry is created.") var wait: Double = 60

    func run() throws {
        let env = try Bench(target)
        let result = try env.run(flows: target.first..<(target.first + count), ratePerSecond: 0, timeout: wait)
        print(result.json(extra: ["phase": "\"burst\""]))
    }
}

struct Fill: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create --count entries as fast as possible in one namespace only.")
    @Option(help: "Network namespace (name or path).") var ns: String
    @Option var server: String = "10.0.10.143"
    @Option var port: UInt16 = 56002
    @Option var first: Int = 0
    @Option(help: "Entries to create.") var count: Int = 100_000
    @Option var entryTimeout: UInt32 = 3600

    func run() throws {
        try enterNetns(ns)
        guard let srv = ipv4(server) else { throw ValidationError("bad --server") }
        let creator = try Creator(server: srv, port: port, timeout: entryTimeout)
        let start = Date()
        var failed = 0
        for i in first..<(first + count) where !creator.create(flow: i) { failed += 1 }
        print("{\"phase\":\"fill\",\"flows\":\(count),\"failed\":\(failed),\"seconds\":\(Date().timeIntervalSince(start))}")
    }
}

struct Count: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Count a namespace's IPv4 TCP conntrack entries to --server:--port (all IPv4 entries with --all).")
    @Option(help: "Network namespace (name or path).") var ns: String
    @Option var server: String = "10.0.10.143"
    @Option var port: UInt16 = 56002
    @Flag(help: "Count every IPv4 entry.") var all = false

    func run() throws {
        try enterNetns(ns)
        guard let srv = ipv4(server) else { throw ValidationError("bad --server") }
        guard let h = ctb_open_query() else { throw ValidationError("nfct_open: \(errnoString())") }
        defer { nfct_close(h) }
        let box = CountBox(server: all ? nil : srv, port: port)
        nfct_callback_register(h, NFCT_T_ALL, { _, ct, data in
            let box = Unmanaged<CountBox>.fromOpaque(data!).takeUnretainedValue()
            guard let server = box.server else { box.n += 1; return Int32(NFCT_CB_CONTINUE) }
            var src: UInt32 = 0, dst: UInt32 = 0, sport: UInt16 = 0, dport: UInt16 = 0
            if let ct, ctb_orig_tuple(ct, &src, &dst, &sport, &dport) == 0,
               UInt32(bigEndian: dst) == server, UInt16(bigEndian: dport) == box.port {
                box.n += 1
            }
            return Int32(NFCT_CB_CONTINUE)
        }, Unmanaged.passUnretained(box).toOpaque())
        guard ctb_dump_ipv4(h) == 0 else { throw ValidationError("dump: \(errnoString())") }
        print(box.n)
    }
}

final class CountBox {
    let server: UInt32?
    let port: UInt16
    var n = 0
    init(server: UInt32?, port: UInt16) { self.server = server; self.port = port }
}

// MARK: Machinery

/// Creates the synthetic entries through ctnetlink in the calling thread's namespace.
final class Creator {
    let handle: OpaquePointer
    let ct: OpaquePointer
    private var reportedError = false

    init(server: UInt32, port: UInt16, timeout: UInt32) throws {
        guard let h = ctb_open_query() else { throw ValidationError("nfct_open: \(errnoString())") }
        guard let ct = ctb_new_tcp(0, server.bigEndian, 0, port.bigEndian, timeout) else {
            nfct_close(h)
            throw ValidationError("nfct_new failed")
        }
        handle = h
        self.ct = ct
    }

    deinit {
        nfct_destroy(ct)
        nfct_close(handle)
    }

    /// One NFCT_Q_CREATE (waits for the kernel's ack); true when the entry was made.
    func create(flow i: Int) -> Bool {
        let c = client(i)
        ctb_set_client(ct, c.ip.bigEndian, c.port.bigEndian)
        if nfct_query(handle, NFCT_Q_CREATE, UnsafeRawPointer(ct)) == 0 { return true }
        if !reportedError {
            reportedError = true
            warn("create flow \(i) failed: \(errnoString()) (further failures not reported)")
        }
        return false
    }
}

/// State shared by the creating thread (node 1) and the watching thread (node 2). The per-flow
/// timestamps are written by one thread each and read after both are done.
final class Shared: @unchecked Sendable {
    let first: Int
    let count: Int
    let server: UInt32
    let port: UInt16
    let injectedAt: UnsafeMutablePointer<UInt64>   // 0: not created
    let arrivedAt: UnsafeMutablePointer<UInt64>    // 0: not seen in node 2
    // Watcher-only.
    var arrived = 0
    var overflows = 0
    // Guarded by lock.
    private let lock = NSLock()
    private var finished = false
    private var created = 0
    private var deadline: UInt64 = .max

    init(flows: Range<Int>, server: UInt32, port: UInt16) {
        first = flows.lowerBound
        count = flows.count
        self.server = server
        self.port = port
        injectedAt = .allocate(capacity: max(1, count))
        injectedAt.initialize(repeating: 0, count: max(1, count))
        arrivedAt = .allocate(capacity: max(1, count))
        arrivedAt.initialize(repeating: 0, count: max(1, count))
    }

    deinit {
        injectedAt.deallocate()
        arrivedAt.deallocate()
    }

    func finish(created: Int, deadline: UInt64) {
        lock.withLock {
            finished = true
            self.created = created
            self.deadline = deadline
        }
    }

    /// Stop watching: everything created has arrived, or the wait after the last creation is over.
    func shouldStop(now: UInt64) -> Bool {
        lock.withLock { finished && (arrived >= created || now >= deadline) }
    }

    /// Called for every NEW event in node 2.
    func saw(src: UInt32, dst: UInt32, sport: UInt16, dport: UInt16, at now: UInt64) {
        guard dst == server, dport == port, let i = flowIndex(ip: src, port: sport) else { return }
        let k = i - first
        guard k >= 0, k < count, arrivedAt[k] == 0 else { return }
        arrivedAt[k] = now
        arrived += 1
    }
}

struct Bench {
    let server: UInt32
    let port: UInt16
    let entryTimeout: UInt32
    let watchNs: String

    init(_ t: Target) throws {
        guard let s = ipv4(t.server) else { throw ValidationError("bad --server") }
        server = s
        port = t.port
        entryTimeout = t.entryTimeout
        watchNs = t.watchNs
        // Check that node 2's namespace can be entered before entering node 1's on this thread.
        let fd = open(nsPath(t.watchNs), O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ValidationError("netns \(t.watchNs): \(errnoString())") }
        close(fd)
        try enterNetns(t.sourceNs)
    }

    /// Creates the entries (paced when a rate is given) while a second thread, in node 2's
    /// namespace, takes the arrival time of each from ctnetlink NEW events.
    func run(flows: Range<Int>, ratePerSecond: Int, timeout: Double) throws -> BenchResult {
        let shared = Shared(flows: flows, server: server, port: port)
        let creator = try Creator(server: server, port: port, timeout: entryTimeout)
        let ready = DispatchSemaphore(value: 0)
        let done = DispatchSemaphore(value: 0)
        let errorBox = ErrorBox()
        let ns = watchNs
        let watcher = Thread {
            defer { done.signal() }
            do {
                try watch(ns: ns, shared: shared, ready: ready)
            } catch {
                errorBox.error = "\(error)"
                ready.signal()
            }
        }
        watcher.stackSize = 1 << 20
        watcher.start()
        ready.wait()
        if let e = errorBox.error { done.wait(); throw ValidationError(e) }

        var result = BenchResult()
        let start = monotonicNanos()
        // Paced in 1 ms steps: create what is due, then sleep. A busy-wait would take a core
        // away from the daemons being measured (this machine has two).
        var n = 0
        let total = flows.count
        while n < total {
            var due = total
            if ratePerSecond > 0 {
                let elapsed = Double(monotonicNanos() - start) / 1e9
                due = min(total, Int(elapsed * Double(ratePerSecond)) + 1)
            }
            while n < due {
                let at = monotonicNanos()
                shared.injectedAt[n] = at
                if creator.create(flow: flows.lowerBound + n) {
                    result.injected += 1
                } else {
                    shared.injectedAt[n] = 0
                    result.injectFailed += 1
                }
                n += 1
            }
            if ratePerSecond > 0 && n < total { usleep(1000) }
        }
        let end = monotonicNanos()
        result.injectSeconds = Double(end - start) / 1e9
        shared.finish(created: result.injected, deadline: end + UInt64(timeout * 1e9))
        done.wait()
        if let e = errorBox.error { throw ValidationError(e) }

        var lags: [UInt64] = []
        lags.reserveCapacity(result.injected)
        var last: UInt64 = 0
        for k in 0..<total where shared.injectedAt[k] != 0 && shared.arrivedAt[k] != 0 {
            let a = shared.arrivedAt[k]
            lags.append(a > shared.injectedAt[k] ? (a - shared.injectedAt[k]) / 1000 : 0)
            last = max(last, a)
        }
        result.replicated = lags.count
        result.lagsMicros = lags
        result.lastArrivalSeconds = last > start ? Double(last - start) / 1e9 : 0
        if result.replicated < result.injected {
            warn("\(result.injected - result.replicated) of \(result.injected) entries did not reach node 2 within \(timeout) s")
        }
        return result
    }
}

final class ErrorBox: @unchecked Sendable {
    private let lock = NSLock()
    private var value: String?
    var error: String? {
        get { lock.withLock { value } }
        set { lock.withLock { value = newValue } }
    }
}

/// The watcher thread: enter node 2, subscribe to NEW events, record arrivals until told to stop.
func watch(ns: String, shared: Shared, ready: DispatchSemaphore) throws {
    try enterNetns(ns)
    guard let h = ctb_open_new_events() else { throw ValidationError("nfct_open (events) in \(ns): \(errnoString())") }
    defer { nfct_close(h) }
    // Events queue here while this thread is off the CPU (the daemons run at real-time priority);
    // a large buffer keeps bursts from overflowing it.
    let got = ctb_set_rcvbuf(h, 256 << 20)
    if got < (64 << 20) { warn("event socket buffer only \(got) bytes") }
    _ = ctb_set_rcvtimeo(h, 50_000)
    nfct_callback_register(h, NFCT_T_NEW, { _, ct, data in
        let shared = Unmanaged<Shared>.fromOpaque(data!).takeUnretainedValue()
        let now = monotonicNanos()
        var src: UInt32 = 0, dst: UInt32 = 0, sport: UInt16 = 0, dport: UInt16 = 0
        if let ct, ctb_orig_tuple(ct, &src, &dst, &sport, &dport) == 0 {
            shared.saw(src: UInt32(bigEndian: src), dst: UInt32(bigEndian: dst),
                       sport: UInt16(bigEndian: sport), dport: UInt16(bigEndian: dport), at: now)
        }
        return Int32(shared.shouldStop(now: now) ? NFCT_CB_STOP : NFCT_CB_CONTINUE)
    }, Unmanaged.passUnretained(shared).toOpaque())
    ready.signal()
    while true {
        if nfct_catch(h) == -1 && errno == ENOBUFS { shared.overflows += 1 }
        if shared.shouldStop(now: monotonicNanos()) { break }
    }
    guard shared.overflows > 0 else { return }
    // Events were dropped: look the missing entries up one by one. Their arrival time is the
    // time of the look-up, an upper bound.
    warn("node 2 event socket overflowed \(shared.overflows) times; looking up entries whose event was lost")
    guard let q = ctb_open_query(), let probe = ctb_new_tcp(0, shared.server.bigEndian, 0, shared.port.bigEndian, 0) else {
        throw ValidationError("nfct_open (query): \(errnoString())")
    }
    defer { nfct_destroy(probe); nfct_close(q) }
    var found = 0
    for k in 0..<shared.count where shared.injectedAt[k] != 0 && shared.arrivedAt[k] == 0 {
        let c = client(shared.first + k)
        ctb_set_client(probe, c.ip.bigEndian, c.port.bigEndian)
        if nfct_query(q, NFCT_Q_GET, UnsafeRawPointer(probe)) == 0 {
            shared.arrivedAt[k] = monotonicNanos()
            found += 1
        }
    }
    warn("\(found) entries present in node 2 without a seen event (lag counted up to the look-up)")
}

func nsPath(_ name: String) -> String { name.hasPrefix("/") ? name : "/run/netns/\(name)" }

/// Moves the calling thread (only) into a network namespace.
func enterNetns(_ name: String) throws {
    let fd = open(nsPath(name), O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw ValidationError("netns \(name): \(errnoString())") }
    defer { close(fd) }
    guard ctb_setns_net(fd) == 0 else { throw ValidationError("setns \(name): \(errnoString())") }
}

/// Flow number -> client address and port: 10.200.0.0/16 clients, ports 10000-59999.
let clientBase: UInt32 = 0x0AC8_0000
func client(_ i: Int) -> (ip: UInt32, port: UInt16) {
    (clientBase &+ UInt32(truncatingIfNeeded: i / 50_000), UInt16(10_000 + i % 50_000))
}

/// The inverse of client(_:), nil for tuples that are not ours.
func flowIndex(ip: UInt32, port: UInt16) -> Int? {
    guard ip & 0xFFFF_0000 == clientBase, port >= 10_000, port < 60_000 else { return nil }
    return Int(ip - clientBase) * 50_000 + Int(port) - 10_000
}

func errnoString() -> String { String(cString: strerror(errno)) }

func warn(_ s: String) {
    FileHandle.standardError.write(Data(("tandem-ctbench: " + s + "\n").utf8))
}
