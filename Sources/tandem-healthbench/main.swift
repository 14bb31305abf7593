// tandem-healthbench: probes endpoints with TandemHealth's monitor and prints every transition
// as a JSON line, for bench/health-probes.sh (which injects the faults and times them).
//
//   tandem-healthbench --duration 60 [--interval-ms N --timeout-ms N --failures N --successes N
//                      --attempts N --jitter F] NAME=SPEC@IP:PORT ...
//
// Lines: {"event":"transition","wall":<unix s>,"endpoint":...,"from":...,"to":...,"reason":...}
// and at the end {"event":"summary","endpoint":...,"probes":N,"transitions":N,"state":...}.

import Logging
import NIOPosix
import TandemHealth

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Set by SIGTERM/SIGINT: stop, print the summary, exit.
nonisolated(unsafe) var stopRequested: sig_atomic_t = 0

func emit(_ line: String) {
    let s = line + "\n"
    _ = s.withCString { write(1, $0, strlen($0)) }
}

func wallNow() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func json(_ s: String) -> String {
    var o = "\""
    for c in s.unicodeScalars {
        switch c {
        case "\"": o += "\\\""
        case "\\": o += "\\\\"
        case "\n": o += "\\n"
        default: o += c.value < 0x20 ? " " : String(c)
        }
    }
    return o + "\""
}

func ms(_ d: Duration) -> Int64 { d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000 }

func fail(_ msg: String) -> Never {
    let s = "tandem-healthbench: \(msg)\n"
    _ = s.withCString { write(2, $0, strlen($0)) }
    exit(2)
}

@main
struct HealthBench {
    static func main() async {
        var args = Array(CommandLine.arguments.dropFirst())
        var duration = 60.0
        // Overrides from the command line; the rest are each kind's defaults.
        var interval: Duration?, timeout: Duration?, failures: Int?, successes: Int?, attempts: Int?, jitter: Double?
        var targets: [ProbeTarget] = []
        func value(_ name: String) -> String {
            guard !args.isEmpty else { fail("\(name) needs a value") }
            return args.removeFirst()
        }
        func int(_ name: String) -> Int {
            guard let v = Int(value(name)) else { fail("\(name) needs an integer") }
            return v
        }
        while !args.isEmpty {
            let a = args.removeFirst()
            switch a {
            case "--duration": duration = Double(value(a)) ?? duration
            case "--interval-ms": interval = .milliseconds(int(a))
            case "--timeout-ms": timeout = .milliseconds(int(a))
            case "--failures": failures = int(a)
            case "--successes": successes = int(a)
            case "--attempts": attempts = int(a)
            case "--jitter": jitter = Double(value(a))
            default:
                // NAME=SPEC@IP:PORT; SPEC may contain ':' but not '@'.
                guard let eq = a.firstIndex(of: "="), let at = a.lastIndex(of: "@"), eq < at,
                      let colon = a[at...].lastIndex(of: ":"), let port = UInt16(a[a.index(after: colon)...]) else {
                    fail("bad endpoint '\(a)'; want NAME=SPEC@IP:PORT")
                }
                targets.append(ProbeTarget(id: EndpointID(String(a[..<eq])),
                                           address: String(a[a.index(after: at)..<colon]), port: port,
                                           spec: ProbeSpec(kind: .none)))
                targets[targets.count - 1].spec = { () -> ProbeSpec in
                    do { return try ProbeSpec.parse(String(a[a.index(after: eq)..<at])) } catch { fail("\(error)") }
                }()
            }
        }
        guard !targets.isEmpty else { fail("no endpoints") }
        var logger = Logger(label: "tandem.healthbench")
        logger.logLevel = .warning
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let monitor = HealthMonitor(group: group, logger: logger) { t in
            emit("{\"event\":\"transition\",\"wall\":\(wallNow()),\"endpoint\":\(json(t.endpoint.rawValue)),"
                + "\"from\":\"\(t.from.rawValue)\",\"to\":\"\(t.to.rawValue)\",\"reason\":\(json(t.reason))}")
        }
        var timings: [String] = []
        for var t in targets {
            if let interval { t.spec.timing.interval = interval }
            if let timeout { t.spec.timing.timeout = timeout }
            if let failures { t.spec.timing.failuresToDown = failures }
            if let successes { t.spec.timing.successesToUp = successes }
            if let attempts { t.spec.timing.attempts = attempts }
            if let jitter { t.spec.timing.jitter = jitter }
            do { try monitor.add(t) } catch { fail("\(error)") }
            let tm = t.spec.timing
            timings.append("\(json(t.id.rawValue)):{\"interval_ms\":\(ms(tm.interval)),\"timeout_ms\":\(ms(tm.timeout)),"
                + "\"failures\":\(tm.failuresToDown),\"successes\":\(tm.successesToUp),\"attempts\":\(tm.attempts),\"jitter\":\(tm.jitter)}")
        }
        emit("{\"event\":\"start\",\"wall\":\(wallNow()),\"timing\":{\(timings.joined(separator: ","))}}")
        signal(SIGTERM) { _ in stopRequested = 1 }
        signal(SIGINT) { _ in stopRequested = 1 }
        let end = ContinuousClock.now + .milliseconds(Int(duration * 1000))
        var nextStats = ContinuousClock.now
        while stopRequested == 0, ContinuousClock.now < end {
            if ContinuousClock.now >= nextStats {
                // Counters once a second, so the script can tell probe failure rates per phase.
                nextStats += .seconds(1)
                let parts = monitor.snapshot().map { "\(json($0.target.id.rawValue)):[\($0.probesSent),\($0.probesFailed)]" }
                emit("{\"event\":\"stats\",\"wall\":\(wallNow()),\"probes\":{\(parts.joined(separator: ","))}}")
            }
            try? await Task.sleep(for: .milliseconds(50))
        }
        for s in monitor.snapshot() {
            emit("{\"event\":\"summary\",\"endpoint\":\(json(s.target.id.rawValue)),\"probes\":\(s.probesSent),\"failed\":\(s.probesFailed),"
                + "\"transitions\":\(s.transitions),\"state\":\"\(s.state.rawValue)\",\"last\":\(json(s.lastResult?.detail ?? ""))}")
        }
        monitor.shutdown()
        try? await group.shutdownGracefully()
    }
}
