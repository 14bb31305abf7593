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

/// Runs a command with a hard time limit, capturing its output.
@discardableResult
func run(_ args: [String], env: [String: String] = [:], timeout: TimeInterval = 30, stdin: String? = nil) throws -> CommandResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = args
    var environment = ProcessInfo.processInfo.environment
    for (k, v) in env { environment[k] = v }
    p.environment = environment
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    let inPipe = Pipe()
    p.standardInput = stdin == nil ? FileHandle.nullDevice : inPipe
    // Drain the pipes while the process runs so a chatty command cannot block on a full pipe.
    let outData = DataBox(), errData = DataBox()
    out.fileHandleForReading.readabilityHandler = { outData.append($0.availableData) }
    err.fileHandleForReading.readabilityHandler = { errData.append($0.availableData) }
    try p.run()
    if let stdin {
        inPipe.fileHandleForWriting.write(Data(stdin.utf8))
        try? inPipe.fileHandleForWriting.close()
    }
    let deadline = Date().addingTimeInterval(timeout)
    var timedOut = false
    while p.isRunning {
        if Date() > deadline {
            timedOut = true
            p.terminate()
            Thread.sleep(forTimeInterval: 0.5)
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
            break
        }
        Thread.sleep(forTimeInterval: 0.02)
    }
    p.waitUntilExit()
    out.fileHandleForReading.readabilityHandler = nil
    err.fileHandleForReading.readabilityHandler = nil
    outData.append(out.fileHandleForReading.readDataToEndOfFile())
    errData.append(err.fileHandleForReading.readDataToEndOfFile())
    return CommandResult(status: p.terminationStatus, stdout: outData.string, stderr: errData.string, timedOut: timedOut)
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
    let process = Process()
    let log = DataBox()
    let configPath: String

    init(bed: TestBed, role: String = "llb1", config: String, extraArgs: [String] = []) throws {
        self.bed = bed
        self.role = role
        configPath = FileManager.default.temporaryDirectory.appendingPathComponent("\(bed.name)-\(role).yaml").path
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        process.arguments = ["netns", "exec", bed.ns(role), Env.tandem, "node", "run", "--config", configPath,
                             "--bpf-object", Env.bpfObject] + extraArgs
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        let log = log
        pipe.fileHandleForReading.readabilityHandler = { log.append($0.availableData) }
        try process.run()
        // Ready when the API answers.
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if !process.isRunning { throw TestFailure("daemon exited early: \(log.string)") }
            if let r = try? cli(["get", "lb", "-o", "json"]), r.ok { return }
            Thread.sleep(forTimeInterval: 0.2)
        }
        stop()
        throw TestFailure("daemon API did not come up: \(log.string)")
    }

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
        if process.isRunning {
            kill(process.processIdentifier, SIGTERM)
            let deadline = Date().addingTimeInterval(10)
            while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        }
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: configPath)
        return process.terminationStatus
    }
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
