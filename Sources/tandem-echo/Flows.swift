// tandem-echo flows: long-lived TCP and UDP flows that check every echoed byte, for failover tests.
// The engine is in FlowsRunner.swift, the message format in FlowMessage.swift.

import ArgumentParser
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

struct Flows: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Long-lived TCP and UDP echo flows that check every byte; reports which survived and the longest stall.",
        discussion: """
            Opens --tcp TCP connections and --udp UDP flows (each its own socket and source port). Every \
            --interval-ms each flow sends a --size byte message ("TDMF", flow id, sequence number, \
            pseudo-random filler) and checks what comes back: TCP as an exact byte stream, UDP one \
            message at a time (stop and wait, resent every 50 ms until echoed; duplicate echoes are \
            ignored). Over UDP, `serve` appends its --name to these messages; a UDP flow fails if the \
            name ever changes (it was moved to another endpoint).

            A flow fails on a TCP reset, close or error, on wrong bytes, on a UDP endpoint change, on \
            no echo for more than --stall-limit seconds, or if messages are still unanswered at the \
            end. Failed flows are not reopened. The stall of a flow is its longest time without an \
            echo, from the moment all initial flows are established (late flows: from their first \
            echo; their time from opening to the first echo is reported separately) to the end (when \
            sending stopped, or the flow failed).

            --ready-file PATH is written once every initial flow is established and has \
            been echoed. SIGUSR1 opens --late-tcp/--late-udp more flows (once); PATH.late is written \
            when each of them has been echoed or has failed. Stale PATH and PATH.late are removed at \
            start. SIGTERM, SIGINT or --duration (counted from the moment all initial flows echo) stop \
            sending; outstanding echoes are awaited for up to 2 s.

            Output: a summary on stderr and one JSON line on stdout with "tcp" and "udp" \
            ({"total","survived","failed"}, late flows included), "late" ({"tcp","udp","survived","firstEchoMs"}), \
            "longestStallMs", "longestStallTcpMs", "longestStallUdpMs", "messages", "bytes" (echoed \
            and checked), "failures" (the first 20 {"flow":"tcp-17","reason":"..."}), "failureCount", \
            "udpResends", "loopLagMs", "loopCpuPercent" and "sendRatePercent" (how late this \
            client's timers ran, how busy its event loop was, which share of the send ticks it managed: \
            a late, busy or slow client was overloaded and the stalls are partly its own), "udpEndpoints" ({"NAME":flows}), "durationS", and \
            "error" on exit 2.

            Exit status: 0 if every flow survived, 1 if any failed, 2 on bad arguments or if the \
            initial flows were not all established within --connect-timeout.
            """)

    @Option(help: "TCP echo service, IPv4:PORT.")
    var tcpTarget: Endpoint?

    @Option(help: "Initial TCP connections.")
    var tcp: Int = 0

    @Option(help: "UDP echo service, IPv4:PORT (a tandem-echo serve: it must append its name).")
    var udpTarget: Endpoint?

    @Option(help: "Initial UDP flows.")
    var udp: Int = 0

    @Option(help: "Milliseconds between a flow's messages.")
    var intervalMs: Int = 20

    @Option(help: "Bytes per message (12...65000).")
    var size: Int = 64

    @Option(help: "Seconds to run once established (default: until SIGTERM/SIGINT).")
    var duration: Double?

    @Option(help: "TCP connections opened on SIGUSR1.")
    var lateTcp: Int = 0

    @Option(help: "UDP flows opened on SIGUSR1.")
    var lateUdp: Int = 0

    @Option(help: "Seconds without echo progress after which a flow fails.")
    var stallLimit: Double = 10

    @Option(help: "File written once all initial flows echo; PATH.late once the late flows do.")
    var readyFile: String?

    @Option(help: "Seconds for all initial flows to connect and get their first echo.")
    var connectTimeout: Double = 3

    func validate() throws {
        for (name, value) in [("tcp", tcp), ("udp", udp), ("late-tcp", lateTcp), ("late-udp", lateUdp)] {
            guard (0...20_000).contains(value) else { throw ValidationError("--\(name) must be 0...20000") }
        }
        guard tcp + udp >= 1 else { throw ValidationError("no flows: give --tcp N and/or --udp M") }
        guard tcp + lateTcp == 0 || tcpTarget != nil else { throw ValidationError("--tcp/--late-tcp need --tcp-target") }
        guard udp + lateUdp == 0 || udpTarget != nil else { throw ValidationError("--udp/--late-udp need --udp-target") }
        guard (1...60_000).contains(intervalMs) else { throw ValidationError("--interval-ms must be 1...60000") }
        guard (FlowMessage.headerSize...65_000).contains(size) else {
            throw ValidationError("--size must be \(FlowMessage.headerSize)...65000")
        }
        if let duration {
            guard duration > 0, duration <= 7 * 86_400 else { throw ValidationError("--duration must be in (0, 604800]") }
        }
        guard stallLimit > 0, stallLimit <= 3600 else { throw ValidationError("--stall-limit must be in (0, 3600]") }
        guard connectTimeout > 0, connectTimeout <= 3600 else {
            throw ValidationError("--connect-timeout must be in (0, 3600]")
        }
        if let readyFile, readyFile.isEmpty { throw ValidationError("--ready-file must not be empty") }
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        raiseFileLimit(to: tcp + udp + lateTcp + lateUdp + 64)
        let config: FlowsConfig
        do {
            config = FlowsConfig(
                tcpTarget: try tcpTarget.map { try SocketAddress(ipAddress: $0.host, port: $0.port) },
                udpTarget: try udpTarget.map { try SocketAddress(ipAddress: $0.host, port: $0.port) },
                tcp: tcp, udp: udp, lateTCP: lateTcp, lateUDP: lateUdp,
                interval: .milliseconds(Int64(intervalMs)), size: size,
                duration: duration.map { .nanoseconds(Int64($0 * 1e9)) },
                stallLimit: .nanoseconds(Int64(stallLimit * 1e9)),
                connectTimeout: .nanoseconds(Int64(connectTimeout * 1e9)),
                readyFile: readyFile)
        } catch {
            warn("tandem-echo flows: \(error)")
            throw ExitCode(2)
        }

        // Block the signals before any thread exists (threads inherit the mask) and take them
        // with sigwait on this thread. SIGUSR2 is the runner telling this thread it is done.
        var signals = sigset_t()
        sigemptyset(&signals)
        for s in [SIGTERM, SIGINT, SIGUSR1, SIGUSR2] { sigaddset(&signals, s) }
        pthread_sigmask(SIG_BLOCK, &signals, nil)
        let mainThread = pthread_self()

        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let (runner, finished) = try loop.submit {
            let runner = FlowsRunner(loop: loop, config: config)
            return (NIOLoopBound(runner, eventLoop: loop), runner.done.futureResult)
        }.wait()
        finished.whenComplete { _ in _ = pthread_kill(mainThread, SIGUSR2) }
        loop.execute { runner.value.start() }

        waiting: while true {
            var signo: Int32 = 0
            guard sigwait(&signals, &signo) == 0 else { continue }
            switch signo {
            case SIGUSR1:
                loop.execute { runner.value.openLate() }
            case SIGUSR2:
                if (try? loop.submit { runner.value.isFinished }.wait()) ?? true { break waiting }
            default:
                let reason = signo == SIGINT ? "SIGINT" : "SIGTERM"
                loop.execute { runner.value.stop(reason: reason) }
                break waiting
            }
        }
        let report = try finished.wait()
        try? group.syncShutdownGracefully()

        printSummary(report, config: config)
        emit(json(report))
        if report.exitCode != 0 { throw ExitCode(report.exitCode) }
    }

    private func printSummary(_ r: FlowsReport, config: FlowsConfig) {
        func pct(_ a: Int, _ b: Int) -> String { b == 0 ? "-" : formatFixed(100 * Double(a) / Double(b), decimals: 1) + " %" }
        if let error = r.error { warn("flows: ERROR: \(error)") }
        warn("flows: tcp \(r.tcpSurvived)/\(r.tcpTotal) survived (\(pct(r.tcpSurvived, r.tcpTotal))), "
             + "udp \(r.udpSurvived)/\(r.udpTotal) survived (\(pct(r.udpSurvived, r.udpTotal))), "
             + "late \(r.lateTCP) tcp + \(r.lateUDP) udp (\(r.lateSurvived) survived"
             + (r.lateTCP + r.lateUDP > 0 ? ", first echo within \(millis(r.lateFirstEcho)) ms of opening)" : ")"))
        warn("flows: longest stall \(millis(r.longestStall)) ms (tcp \(millis(r.longestStallTCP)) ms, "
             + "udp \(millis(r.longestStallUDP)) ms); \(r.messages) messages, \(r.bytes) bytes echoed in "
             + "\(formatFixed(r.durationS, decimals: 2)) s; \(r.udpResends) udp resends, "
             + "\(r.udpDuplicates) duplicate udp echoes")
        if !r.udpEndpoints.isEmpty {
            warn("flows: udp flows per endpoint: " + r.udpEndpoints.map { "\($0.name)=\($0.flows)" }.joined(separator: " "))
        }
        if !r.failures.isEmpty {
            warn("flows: \(r.failures.count) failed flow(s):")
            for f in r.failures.prefix(20) { warn("  \(f.flow): \(f.reason)") }
            if r.failures.count > 20 {
                // The rest grouped by reason, numbers blanked: "42 x udp: # message(s) never echoed...".
                var groups: [String: Int] = [:]
                for f in r.failures.dropFirst(20) {
                    let proto = f.flow.prefix { $0 != "-" }
                    groups["\(proto): \(blankNumbers(f.reason))", default: 0] += 1
                }
                warn("  ... and \(r.failures.count - 20) more:")
                for (reason, n) in groups.sorted(by: { $0.value > $1.value }) { warn("    \(n) x \(reason)") }
            }
        }
        if r.durationS >= 1,
           r.loopCPU > 80 || r.sendRate < 95 || r.loopLag > max(config.interval.nanoseconds, 50_000_000) {
            warn("flows: WARNING: this client was overloaded (event loop \(formatFixed(r.loopCPU, decimals: 0)) % "
                 + "busy, \(formatFixed(r.sendRate, decimals: 0)) % of the send ticks ran, timers up to "
                 + "\(millis(r.loopLag)) ms late; a debug build?): the stall figures include its own delays")
        }
        warn("flows: " + (r.exitCode == 0 ? "all flows survived" : "exit \(r.exitCode)"))
    }

    private func json(_ r: FlowsReport) -> String {
        func proto(_ total: Int, _ survived: Int) -> String {
            "{\"total\":\(total),\"survived\":\(survived),\"failed\":\(total - survived)}"
        }
        let failures = r.failures.prefix(20).map {
            "{\"flow\":\(jsonString($0.flow)),\"reason\":\(jsonString($0.reason))}"
        }.joined(separator: ",")
        let endpoints = r.udpEndpoints.map { "\(jsonString($0.name)):\($0.flows)" }.joined(separator: ",")
        var out = "{\"tcp\":\(proto(r.tcpTotal, r.tcpSurvived)),\"udp\":\(proto(r.udpTotal, r.udpSurvived)),"
        out += "\"late\":{\"tcp\":\(r.lateTCP),\"udp\":\(r.lateUDP),\"survived\":\(r.lateSurvived),"
        out += "\"firstEchoMs\":\(millis(r.lateFirstEcho))},"
        out += "\"longestStallMs\":\(millis(r.longestStall)),\"longestStallTcpMs\":\(millis(r.longestStallTCP)),"
        out += "\"longestStallUdpMs\":\(millis(r.longestStallUDP)),"
        out += "\"messages\":\(r.messages),\"bytes\":\(r.bytes),\"failures\":[\(failures)],"
        out += "\"failureCount\":\(r.failures.count),\"udpResends\":\(r.udpResends),"
        out += "\"loopLagMs\":\(millis(r.loopLag)),"
        out += "\"loopCpuPercent\":\(formatFixed(r.loopCPU, decimals: 1)),"
        out += "\"sendRatePercent\":\(formatFixed(r.sendRate, decimals: 1)),\"udpEndpoints\":{\(endpoints)},\"durationS\":\(formatFixed(r.durationS, decimals: 3))"
        if let error = r.error { out += ",\"error\":\(jsonString(error))" }
        let stalls = r.stalls.map {
            "[\($0.flow),\($0.tcp ? 1 : 0),\(formatFixed($0.startUnixMs, decimals: 1)),\(formatFixed($0.endUnixMs, decimals: 1))]"
        }.joined(separator: ",")
        out += ",\"startedAtUnixMs\":\(formatFixed(r.startedAtUnixMs, decimals: 1))"
        if let ready = r.readyAtUnixMs { out += ",\"readyAtUnixMs\":\(formatFixed(ready, decimals: 1))" }
        out += ",\"endedAtUnixMs\":\(formatFixed(r.endedAtUnixMs, decimals: 1)),\"stalls\":[\(stalls)]"
        return out + "}"
    }
}

/// A JSON string literal.
func jsonString(_ s: String) -> String {
    var out = "\""
    for scalar in s.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where scalar.value < 0x20:
            let hex = String(scalar.value, radix: 16)
            out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out + "\""
}

/// Raises the soft open-file limit towards the hard one if `needed` descriptors would not fit.
func raiseFileLimit(to needed: Int) {
    var limit = rlimit()
    #if canImport(Glibc)
    let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
    #else
    let resource = RLIMIT_NOFILE
    #endif
    guard getrlimit(resource, &limit) == 0, limit.rlim_cur < rlim_t(needed) else { return }
    limit.rlim_cur = min(limit.rlim_max, rlim_t(needed))
    _ = setrlimit(resource, &limit)
}

/// The text with every number ("12", "3.5") replaced by "#".
private func blankNumbers(_ s: String) -> String {
    let chars = Array(s)
    var out = ""
    var i = 0
    while i < chars.count {
        guard chars[i].isASCII, chars[i].isNumber else {
            out.append(chars[i])
            i += 1
            continue
        }
        while i < chars.count, chars[i].isASCII,
              chars[i].isNumber || (chars[i] == "." && i + 1 < chars.count && chars[i + 1].isNumber) {
            i += 1
        }
        out.append("#")
    }
    return out
}
