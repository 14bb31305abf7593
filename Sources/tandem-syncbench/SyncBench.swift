import ArgumentParser
import CLibBPF
import CTandemShim
import Foundation
import TandemBenchSupport

/// Drives the replication benchmark from outside the daemons: creates connections in node 1's
/// datapath by running its own loaded program over synthetic SYNs (BPF_PROG_TEST_RUN, so the
/// entries and ring-buffer events are exactly what real traffic makes), and watches node 2's
/// connection map for them to appear. Programs and maps are found by id (root only).
@main
struct SyncBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tandem-syncbench",
        abstract: "Replication benchmark driver: inject flows into one node, time their arrival in another.",
        subcommands: [Rates.self, Burst.self, Fill.self, Release.self, Count.self, Core.self])
}

struct Target: ParsableArguments {
    @Option(help: "Program id of node 1's tandem_ingress.") var prog: UInt32
    @Option(help: "Map id of node 2's tdm_ct.") var watch: UInt32
    @Option(help: "VIP the synthetic flows go to.") var vip: String = "10.0.10.143"
    @Option(help: "Service port.") var port: UInt16 = 56002
    @Option(help: "First flow number (keeps runs from reusing tuples).") var first: Int = 0
    @Option(help: "Process id of node 2's daemon (its table writes wake the arrival checks).")
    var watchPID: Int32
    @Option(help: "bench_arrivals.o, which reports node 2's table writes (default: the repository's bpf/obj).")
    var arrivals: String = Target.defaultArrivalsObject

    /// The executable as run from .build/<configuration>/ of the repository (the symlink, not its target).
    static var defaultArrivalsObject: String {
        URL(fileURLWithPath: CommandLine.arguments[0])
            .deletingLastPathComponent().appendingPathComponent("../../bpf/obj/bench_arrivals.o").standardized.path
    }
}

// MARK: Commands

struct Rates: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "For each rate, open flows at that rate for --duration seconds; print lag percentiles (JSON lines).")
    @OptionGroup var target: Target
    @Option(help: "New flows per second, comma separated.") var rates: String = "1000,5000,10000,20000"
    @Option(help: "Seconds per rate.") var duration: Double = 2

    func run() throws {
        let env = try Bench(target)
        var next = target.first
        for rate in rates.split(separator: ",").compactMap({ Int($0) }) where rate > 0 {
            let n = Int(Double(rate) * duration)
            let result = env.run(flows: next..<(next + n), ratePerSecond: rate, timeout: 10)
            next += n
            print(result.json(extra: ["phase": "\"rate\"", "rate": "\(rate)"]))
        }
    }
}

struct Burst: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Open --count flows as fast as possible; print how long until node 2 holds them all (JSON).")
    @OptionGroup var target: Target
    @Option(help: "Flows to open.") var count: Int = 100_000

    func run() throws {
        let env = try Bench(target)
        let result = env.run(flows: target.first..<(target.first + count), ratePerSecond: 0, timeout: 60)
        print(result.json(extra: ["phase": "\"burst\""]))
    }
}

struct Fill: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Open --count flows as fast as possible in node 1 only.")
    @Option(help: "Program id of node 1's tandem_ingress.") var prog: UInt32
    @Option var vip: String = "10.0.10.143"
    @Option var port: UInt16 = 56002
    @Option var first: Int = 0
    @Option(help: "Flows to open.") var count: Int = 100_000

    func run() throws {
        let fd = bpf_prog_get_fd_by_id(prog)
        guard fd >= 0 else { throw ValidationError("program id \(prog): \(String(cString: strerror(errno)))") }
        guard let vipAddr = ipv4(vip) else { throw ValidationError("bad --vip") }
        let start = Date()
        var failed = 0
        for i in first..<(first + count) where !inject(fd: fd, flow: i, vip: vipAddr, port: port) { failed += 1 }
        print("{\"phase\":\"fill\",\"flows\":\(count),\"failed\":\(failed),\"seconds\":\(Date().timeIntervalSince(start))}")
    }
}

struct Release: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Resume a stopped node 1 (SIGCONT) whose datapath queued --count new flows, and time until node 2 holds them all (JSON).",
        discussion: """
        Measures the replication pipeline alone (ring buffer -> sender -> network -> receiver -> \
        node 2's map), without an injector competing for the CPU: the flows were created by `fill` \
        while node 1's daemon was stopped, so their events wait in the ring buffer.
        """)
    @Option(help: "Map id of node 2's tdm_ct.") var watch: UInt32
    @Option var vip: String = "10.0.10.143"
    @Option var port: UInt16 = 56002
    @Option var first: Int = 0
    @Option(help: "Flows queued in node 1.") var count: Int = 40_000
    @Option(help: "Process id of node 1's (stopped) daemon.") var pid: Int32
    @Option(help: "Seconds to wait for the last flow.") var timeout: Double = 60
    @Option(help: "Map id of node 1's tdm_ct: flows the fill could not create (no free port) are not waited for.")
    var source: UInt32?

    func run() throws {
        let fd = bpf_map_get_fd_by_id(watch)
        guard fd >= 0 else { throw ValidationError("map id \(watch): \(String(cString: strerror(errno)))") }
        guard let v = ipv4(vip) else { throw ValidationError("bad --vip") }
        var value = [UInt8](repeating: 0, count: 88)
        var keys = (first..<(first + count)).map { flowKey($0, vip: v, port: port) }
        if let source {
            let sfd = bpf_map_get_fd_by_id(source)
            guard sfd >= 0 else { throw ValidationError("map id \(source): \(String(cString: strerror(errno)))") }
            keys = keys.filter { key in
                var k = key
                return value.withUnsafeMutableBytes { bpf_map_lookup_elem(sfd, &k, $0.baseAddress) } == 0
            }
        }
        let start = monotonicNanos()
        guard kill(pid, SIGCONT) == 0 else { throw ValidationError("SIGCONT \(pid): \(String(cString: strerror(errno)))") }
        var found = 0
        var last = start
        let deadline = start + UInt64(timeout * 1e9)
        // In order, stopping at the first missing flow: one lookup per arrival, not per waiting flow.
        while found < keys.count && monotonicNanos() < deadline {
            while found < keys.count {
                var k = keys[found]
                guard value.withUnsafeMutableBytes({ bpf_map_lookup_elem(fd, &k, $0.baseAddress) }) == 0 else { break }
                found += 1
                last = monotonicNanos()
            }
            if found < keys.count { usleep(200) }
        }
        let seconds = Double(last - start) / 1e9
        print("{\"phase\":\"pipeline\",\"flows\":\(keys.count),\"replicated\":\(found),\"seconds\":\(seconds),\"entries_per_second\":\(seconds > 0 ? Int(Double(found) / seconds) : 0)}")
    }
}

struct Count: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Count entries in a map (by id).")
    @Option(help: "Map id.") var map: UInt32
    func run() throws {
        let fd = bpf_map_get_fd_by_id(map)
        guard fd >= 0 else { throw ValidationError("map id \(map): \(String(cString: strerror(errno)))") }
        print(countEntries(fd: fd))
    }
}

// MARK: Machinery

/// Flows waiting to show up in node 2's map, shared by the injecting and the polling thread.
final class Pending: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [(key: tdm_flow_key, at: UInt64)] = []
    private var done = false
    func add(_ key: tdm_flow_key, at: UInt64) { lock.withLock { items.append((key, at)) } }
    func take() -> [(key: tdm_flow_key, at: UInt64)] { lock.withLock { defer { items.removeAll() }; return items } }
    func finish() { lock.withLock { done = true } }
    var finished: Bool { lock.withLock { done } }
}

struct Bench {
    let progFD: Int32
    let watchFD: Int32
    let arrivals: ArrivalWatch
    let vip: UInt32
    let port: UInt16

    init(_ t: Target) throws {
        progFD = bpf_prog_get_fd_by_id(t.prog)
        guard progFD >= 0 else { throw ValidationError("program id \(t.prog): \(String(cString: strerror(errno)))") }
        watchFD = bpf_map_get_fd_by_id(t.watch)
        guard watchFD >= 0 else { throw ValidationError("map id \(t.watch): \(String(cString: strerror(errno)))") }
        guard let v = ipv4(t.vip) else { throw ValidationError("bad --vip") }
        vip = v
        port = t.port
        arrivals = try ArrivalWatch(objectPath: t.arrivals, pid: t.watchPID)
    }

    /// Opens the flows (paced when a rate is given) while a second thread times their writes to node 2's map.
    func run(flows: Range<Int>, ratePerSecond: Int, timeout: Double) -> BenchResult {
        let pending = Pending()
        let box = ResultBox()
        let arrivals = self.arrivals
        let watch = watchFD
        let inOrder = ratePerSecond == 0
        let poller = Thread {
            var waiting: [(key: tdm_flow_key, at: UInt64)] = []
            var lags: [UInt64] = []
            var timeline: [(UInt64, UInt64)] = []
            var last: UInt64 = 0
            let deadlineAfterFinish = UInt64(timeout * 1e9)
            var finishedAt: UInt64?
            var value = [UInt8](repeating: 0, count: 88)
            func found(_ key: tdm_flow_key) -> Bool {
                var k = key
                return value.withUnsafeMutableBytes { v in bpf_map_lookup_elem(watch, &k, v.baseAddress) } == 0
            }
            func arrived(_ w: (key: tdm_flow_key, at: UInt64)) {
                // Timed after the lookup found it, so never before its write.
                let now = monotonicNanos()
                let lag = now > w.at ? (now - w.at) / 1000 : 0
                lags.append(lag)
                timeline.append((w.at, lag))
                last = now
            }
            while true {
                // Read `finished` before taking, so nothing added before finish() is missed.
                let finished = pending.finished
                waiting += pending.take()
                if inOrder {
                    // A burst: check from the oldest flow forward and stop at the first missing
                    // one, so a check costs a lookup per arrival rather than one per waiting flow.
                    // A flow that overtook an older one is recorded when the older one lands:
                    // its lag can only be overstated.
                    var i = 0
                    while i < waiting.count, found(waiting[i].key) {
                        arrived(waiting[i])
                        i += 1
                    }
                    waiting.removeFirst(i)
                } else {
                    var kept: [(key: tdm_flow_key, at: UInt64)] = []
                    kept.reserveCapacity(waiting.count)
                    for w in waiting {
                        if found(w.key) { arrived(w) } else { kept.append(w) }
                    }
                    waiting = kept
                }
                if finished {
                    let now = monotonicNanos()
                    if finishedAt == nil { finishedAt = now }
                    if waiting.isEmpty { break }
                    if let f = finishedAt, now > f + deadlineAfterFinish { break }
                }
                // Until node 2 writes; the timeout catches flows injected meanwhile that were
                // already written (their write woke this thread before they were taken).
                _ = arrivals.wait(timeoutMilliseconds: 5)
            }
            if ProcessInfo.processInfo.environment["SYNCBENCH_TIMELINE"] == "1", let t0 = timeline.map(\.0).min() {
                var worst: [Int: UInt64] = [:]
                for (at, lag) in timeline { worst[Int((at - t0) / 100_000_000), default: 0] = max(worst[Int((at - t0) / 100_000_000), default: 0], lag) }
                let line = worst.keys.sorted().map { "\($0 * 100)ms:\(worst[$0]! / 1000)" }.joined(separator: " ")
                FileHandle.standardError.write(Data(("max lag per 100 ms (ms) from CLOCK_MONOTONIC \(Double(t0) / 1e9) s: " + line + "\n").utf8))
            }
            box.set(lags: lags, last: last)
        }
        poller.start()
        var result = BenchResult()
        let start = monotonicNanos()
        // Paced in 1 ms steps: inject what is due, then sleep. A busy-wait would take a core away
        // from the daemons being measured (this machine has two).
        var n = 0
        let all = Array(flows)
        while n < all.count {
            var due = all.count
            if ratePerSecond > 0 {
                let elapsed = Double(monotonicNanos() - start) / 1e9
                due = min(all.count, Int(elapsed * Double(ratePerSecond)) + 1)
            }
            while n < due {
                let i = all[n]
                let key = flowKey(i, vip: vip, port: port)
                let at = monotonicNanos()
                if inject(fd: progFD, flow: i, vip: vip, port: port) {
                    result.injected += 1
                    pending.add(key, at: at)
                } else {
                    result.injectFailed += 1
                }
                n += 1
            }
            if ratePerSecond > 0 && n < all.count { usleep(1000) }
        }
        result.injectSeconds = Double(monotonicNanos() - start) / 1e9
        pending.finish()
        let (lags, last) = box.wait()
        result.replicated = lags.count
        result.lagsMicros = lags
        result.lastArrivalSeconds = last > start ? Double(last - start) / 1e9 : 0
        return result
    }
}

final class ResultBox: @unchecked Sendable {
    private let cond = NSCondition()
    private var lags: [UInt64]?
    private var last: UInt64 = 0
    func set(lags: [UInt64], last: UInt64) {
        cond.lock()
        self.lags = lags
        self.last = last
        cond.signal()
        cond.unlock()
    }
    func wait() -> ([UInt64], UInt64) {
        cond.lock()
        while lags == nil { cond.wait() }
        defer { cond.unlock() }
        return (lags ?? [], last)
    }
}

/// Flow number -> client address and port: 10.100.0.0/16 clients, ports 10000-59999.
func client(_ i: Int) -> (ip: UInt32, port: UInt16) {
    (0x0A64_0000 &+ UInt32(truncatingIfNeeded: i / 50_000), UInt16(10_000 + i % 50_000))
}

func flowKey(_ i: Int, vip: UInt32, port: UInt16) -> tdm_flow_key {
    let c = client(i)
    var k = tdm_flow_key()
    k.saddr = c.ip.bigEndian
    k.daddr = vip.bigEndian
    k.sport = c.port.bigEndian
    k.dport = port.bigEndian
    k.proto = 6
    return k
}

/// One SYN through the program; true when the program accepted it (it made an entry).
func inject(fd: Int32, flow i: Int, vip: UInt32, port: UInt16) -> Bool {
    let c = client(i)
    var p = [UInt8](repeating: 0, count: 54)
    p[0..<6] = [0x02, 0, 0, 0, 0, 0x01]
    p[6..<12] = [0x02, 0, 0, 0, 0, 0x02]
    p[12] = 0x08
    p[14] = 0x45
    p[16] = 0; p[17] = 40
    p[20] = 0x40
    p[22] = 64
    p[23] = 6
    put32(&p, 26, c.ip)
    put32(&p, 30, vip)
    put16(&p, 24, checksum(p[14..<34]))
    put16(&p, 34, c.port)
    put16(&p, 36, port)
    put32(&p, 38, UInt32(truncatingIfNeeded: i &* 2_654_435_761))
    p[46] = 0x50
    p[47] = 0x02
    put16(&p, 48, 64_240)
    var pseudo = [UInt8](p[26..<34])
    pseudo += [0, 6, 0, 20]
    pseudo += p[34..<54]
    put16(&p, 50, checksum(pseudo[...]))
    var out = [UInt8](repeating: 0, count: 256)
    var outLen = UInt32(out.count)
    var ret: UInt32 = 0
    let rc = p.withUnsafeBytes { pb in
        out.withUnsafeMutableBytes { ob in
            tdm_prog_test_run(fd, pb.baseAddress, UInt32(pb.count), ob.baseAddress, &outLen, &ret)
        }
    }
    // TC_ACT_SHOT (2) means the datapath refused the flow (no port, table full).
    return rc == 0 && ret != 2
}

func put16(_ p: inout [UInt8], _ at: Int, _ v: UInt16) {
    p[at] = UInt8(v >> 8)
    p[at + 1] = UInt8(v & 0xff)
}

func put32(_ p: inout [UInt8], _ at: Int, _ v: UInt32) {
    put16(&p, at, UInt16(v >> 16))
    put16(&p, at + 2, UInt16(v & 0xffff))
}

func checksum(_ bytes: ArraySlice<UInt8>) -> UInt16 {
    var sum: UInt32 = 0
    var i = bytes.startIndex
    while i + 1 < bytes.endIndex {
        sum += UInt32(bytes[i]) << 8 | UInt32(bytes[i + 1])
        i += 2
    }
    if i < bytes.endIndex { sum += UInt32(bytes[i]) << 8 }
    while sum > 0xffff { sum = (sum & 0xffff) + (sum >> 16) }
    return ~UInt16(sum)
}

func countEntries(fd: Int32) -> Int {
    var key = tdm_flow_key()
    var next = tdm_flow_key()
    var n = 0
    var rc = bpf_map_get_next_key(fd, nil, &next)
    while rc == 0 {
        n += 1
        key = next
        rc = bpf_map_get_next_key(fd, &key, &next)
    }
    return n
}
