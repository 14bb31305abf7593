import Foundation
import Testing

/// Paths and preconditions shared by the privileged tests.
enum Env {
    static let repo: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static var bin: URL {
        if let d = ProcessInfo.processInfo.environment["TANDEM_BIN_DIR"] { return URL(fileURLWithPath: d) }
        return repo.appendingPathComponent(".build/debug")
    }
    static var tandem: String { bin.appendingPathComponent("tandem").path }
    static var echo: String { bin.appendingPathComponent("tandem-echo").path }
    static var bpfObject: String { repo.appendingPathComponent("bpf/obj/tandem_lb.o").path }
    static var isRoot: Bool { geteuid() == 0 }
    static var inCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }
    /// Runs as root; in CI the suite always runs, so a missing precondition fails loudly there
    /// instead of skipping.
    static var privilegedEnabled: Bool { isRoot || inCI }
}

struct CommandResult {
    var status: Int32
    var stdout: String
    var stderr: String
    var timedOut: Bool
    var ok: Bool { status == 0 && !timedOut }
}

/// A child process started with posix_spawn, its output going to files. Foundation's Process
/// missed child exits under the test runner here, so children are reaped with waitpid directly.
final class Child {
    let pid: pid_t
    let outPath: String
    let errPath: String
    private(set) var status: Int32?

    init(_ args: [String], env: [String: String] = [:], outPath: String, errPath: String) throws {
        self.outPath = outPath
        self.errPath = errPath
        var environment = ProcessInfo.processInfo.environment
        for (k, v) in env { environment[k] = v }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        let argv = (["/usr/bin/env"] + args).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var child: pid_t = 0
        let rc = posix_spawn(&child, "/usr/bin/env", &actions, nil, argv, envp)
        guard rc == 0 else { throw TestFailure("posix_spawn \(args): \(String(cString: strerror(rc)))") }
        pid = child
    }

    /// Reaps the child if it has exited; true while it runs.
    var isRunning: Bool {
        if status != nil { return false }
        var st: Int32 = 0
        let r = waitpid(pid, &st, WNOHANG)
        if r == pid {
            // WIFEXITED / WEXITSTATUS, spelled out: Glibc's macros are not imported.
            status = (st & 0x7f) == 0 ? (st >> 8) & 0xff : 128 + (st & 0x7f)
            return false
        }
        return r == 0
    }

    /// Waits up to `timeout`; on expiry sends SIGTERM, then SIGKILL. Returns whether it timed out.
    @discardableResult
    func wait(timeout: TimeInterval, signal: Int32? = nil) -> Bool {
        if let signal, isRunning { kill(pid, signal) }
        let deadline = Date().addingTimeInterval(timeout)
        while isRunning {
            if Date() > deadline {
                kill(pid, SIGTERM)
                let hard = Date().addingTimeInterval(2)
                while isRunning && Date() < hard { Thread.sleep(forTimeInterval: 0.02) }
                if isRunning { kill(pid, SIGKILL) }
                while isRunning { Thread.sleep(forTimeInterval: 0.02) }
                return true
            }
            Thread.sleep(forTimeInterval: 0.02)
        }
        return false
    }

    var stdout: String { (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "" }
    var stderr: String { (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "" }
}

/// Runs a command with a hard time limit, capturing its output in temporary files (not pipes:
/// daemons a command starts, such as nginx, inherit and keep its descriptors open).
@discardableResult
func run(_ args: [String], env: [String: String] = [:], timeout: TimeInterval = 30) throws -> CommandResult {
    let base = FileManager.default.temporaryDirectory.appendingPathComponent("tdm-\(UUID().uuidString)").path
    defer {
        try? FileManager.default.removeItem(atPath: base + ".out")
        try? FileManager.default.removeItem(atPath: base + ".err")
    }
    let c = try Child(args, env: env, outPath: base + ".out", errPath: base + ".err")
    let timedOut = c.wait(timeout: timeout)
    return CommandResult(status: c.status ?? -1, stdout: c.stdout, stderr: c.stderr, timedOut: timedOut)
}

final class DataBox: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    func append(_ d: Data) { lock.withLock { data.append(d) } }
    var string: String { lock.withLock { String(decoding: data, as: UTF8.self) } }
}

/// A test bed from testbed/up.sh with a unique prefix, torn down by `down()` on every path.
final class TestBed {
    let name: String
    let nodes: Int

    init(nodes: Int = 1) throws {
        name = "t" + String(UUID().uuidString.lowercased().filter { $0.isLetter || $0.isNumber }.prefix(5))
        self.nodes = nodes
        let r = try run(["bash", Env.repo.appendingPathComponent("testbed/up.sh").path],
                        env: ["TB": name, "NODES": "\(nodes)", "TANDEM_ECHO": Env.echo], timeout: 90)
        guard r.ok else {
            down()
            throw TestFailure("testbed up failed: \(r.stderr.suffix(2000))")
        }
    }

    func ns(_ role: String) -> String { "\(name)-\(role)" }

    @discardableResult
    func exec(_ role: String, _ args: [String], timeout: TimeInterval = 30) throws -> CommandResult {
        try run(["ip", "netns", "exec", ns(role)] + args, timeout: timeout)
    }

    /// Routes the endpoints' replies to the client subnet through llb1, as a default-mode (DNAT
    /// only) deployment needs: the LB must see the replies to undo the translation.
    func routeRepliesThroughNode() throws {
        for ep in ["10.0.10.21", "10.0.10.22"] {
            try run(["ip", "-n", ns("vcn"), "rule", "add", "from", ep, "to", "10.0.20.0/24", "lookup", "100"])
        }
        try run(["ip", "-n", ns("vcn"), "route", "add", "10.0.20.0/24", "via", "10.0.10.141", "dev", "v-llb1", "table", "100"])
    }

    func down() {
        _ = try? run(["bash", Env.repo.appendingPathComponent("testbed/down.sh").path], env: ["TB": name], timeout: 60)
    }
}

/// A `tandem node run` inside a namespace; stopped with SIGTERM (then SIGKILL) by `stop()`.
final class NodeDaemon {
    let bed: TestBed
    let role: String
    let child: Child
    let configPath: String
    let logPath: String
    /// The node's state file, unique to the bed and role (never /var/lib/tandem): a test that
    /// restarts a daemon passes the same path again.
    let statePath: String
    let scheme: String
    private let ownsState: Bool

    init(bed: TestBed, role: String = "llb1", config: String, extraArgs: [String] = [], statePath: String? = nil,
         scheme: String = "http") throws {
        self.bed = bed
        self.role = role
        self.scheme = scheme
        let tmp = FileManager.default.temporaryDirectory
        configPath = tmp.appendingPathComponent("\(bed.name)-\(role).yaml").path
        logPath = tmp.appendingPathComponent("\(bed.name)-\(role).log").path
        ownsState = statePath == nil
        self.statePath = statePath ?? tmp.appendingPathComponent("\(bed.name)-\(role)-state.jsonl").path
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        child = try Child(["ip", "netns", "exec", bed.ns(role), Env.tandem, "node", "run", "--config", configPath,
                           "--bpf-object", Env.bpfObject, "--state-file", self.statePath] + extraArgs,
                          outPath: logPath, errPath: logPath + ".err")
        // Ready when the API answers.
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if !child.isRunning { throw TestFailure("daemon exited early: \(log)") }
            if let r = try? bed.exec(role, ["curl", "-sk", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}", "\(scheme)://127.0.0.1:11111/netlox/v1"]),
               r.stdout == "200" { return }
            Thread.sleep(forTimeInterval: 0.2)
        }
        stop()
        throw TestFailure("daemon API did not come up: \(log)")
    }

    var log: String { child.stdout + child.stderr }

    func cli(_ args: [String], timeout: TimeInterval = 15) throws -> CommandResult {
        try bed.exec(role, [Env.tandem] + args, timeout: timeout)
    }

    func api(_ method: String, _ path: String, body: String? = nil) throws -> CommandResult {
        var args = ["curl", "-sS", "-m", "5", "-X", method, "-w", "\n%{http_code}", "http://127.0.0.1:11111\(path)"]
        if let body { args += ["-H", "Content-Type: application/json", "--data-binary", body] }
        return try bed.exec(role, args)
    }

    /// Sends SIGTERM and waits; returns the exit status.
    @discardableResult
    func stop() -> Int32 {
        child.wait(timeout: 10, signal: SIGTERM)
        try? FileManager.default.removeItem(atPath: configPath)
        return child.status ?? -1
    }

    /// Removes the state file (tests that restart a daemon call it once at the end).
    func removeState() {
        try? FileManager.default.removeItem(atPath: statePath)
        try? FileManager.default.removeItem(atPath: statePath + ".tmp")
    }

    deinit {
        if child.isRunning { kill(child.pid, SIGKILL); child.wait(timeout: 5) }
        if ownsState { removeState() }
        try? FileManager.default.removeItem(atPath: logPath)
        try? FileManager.default.removeItem(atPath: logPath + ".err")
    }
}

/// A cluster key file (64 hex characters, mode 0600) named after the bed; the caller removes it.
func clusterKeyFile(_ bed: TestBed, tag: String = "") throws -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("\(bed.name)\(tag.isEmpty ? "" : "-" + tag).key").path
    let hex = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
    try (hex + "\n").write(toFile: path, atomically: true, encoding: .utf8)
    chmod(path, 0o600)
    return path
}

/// Polls `check` (a throw counts as not yet) until it holds; the seconds it took, or nil after `seconds`.
func waitFor(_ seconds: Double, _ check: () throws -> Bool) -> Double? {
    let start = Date()
    while Date().timeIntervalSince(start) < seconds {
        if (try? check()) == true { return Date().timeIntervalSince(start) }
        Thread.sleep(forTimeInterval: 0.05)
    }
    return nil
}

/// Runs a test-bed script (testbed/failover.sh, testbed/ecmp.sh) under a unique bed name, tears the
/// bed down after it, and returns its result with the JSON summary its last stdout line holds.
func runBedScript(_ script: String, _ args: [String], timeout: TimeInterval) throws -> (result: CommandResult, summary: [String: Any]) {
    let name = "t" + String(UUID().uuidString.lowercased().filter { $0.isLetter || $0.isNumber }.prefix(5))
    let r = try run(["bash", Env.repo.appendingPathComponent(script).path] + args,
                    env: ["TB": name, "TANDEM_BIN": Env.bin.path], timeout: timeout)
    defer { _ = try? run(["bash", Env.repo.appendingPathComponent("testbed/down.sh").path], env: ["TB": name]) }
    let line = r.stdout.split(separator: "\n").last.map(String.init) ?? ""
    guard let summary = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] else {
        throw TestFailure("\(script) printed no summary (exit \(r.status), timed out \(r.timedOut)): \(r.stderr.suffix(4000))")
    }
    return (r, summary)
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// The single-service config most tests start from.
func nodeConfig(mode: String = "fullnat", sel: String = "rr", proto: String = "tcp", port: Int = 56002,
                targetPort: Int = 80, weights: [Int] = [1, 1], extra: String = "") -> String {
    """
    interfaces: [eth0]
    \(extra)
    services:
      - externalIP: 10.0.10.143
        port: \(port)
        protocol: \(proto)
        mode: \(mode)
        sel: \(sel)
        name: svc
        endpoints:
          - {ip: 10.0.10.21, port: \(targetPort), weight: \(weights[0])}
          - {ip: 10.0.10.22, port: \(targetPort), weight: \(weights[1])}
    """
}
