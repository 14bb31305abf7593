import Foundation
import Logging
import Synchronization
import TandemCore
import TandemStatus
#if canImport(Glibc)
import Glibc
#endif

public struct BGPError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The node's own BIRD 2 instance (Debian's bird2): started with a generated config in the node's
/// run directory, told of every announcement change with a `configure` over its control socket
/// (BIRD applies the new static routes without resetting sessions), started again if it exits,
/// and stopped with the daemon. BIRD runs under `setpriv --pdeathsig KILL`, from a thread that
/// lives as long as it does, so a daemon that dies takes its speaker (and its routes) along.
public final class BIRDSpeaker: Sendable {
    public struct Paths: Sendable, Equatable {
        public var directory: String
        public var config: String { directory + "/bird.conf" }
        public var socket: String { directory + "/bird.ctl" }
        public var pidFile: String { directory + "/bird.pid" }
        public var log: String { directory + "/bird.log" }
        public var stderr: String { directory + "/bird.stderr" }
        public init(directory: String) { self.directory = directory }
    }

    public let settings: BGPSettings
    public let paths: Paths
    public let birdPath: String
    let logger: Logger
    /// Blocking socket and file work, in order.
    private let queue = DispatchQueue(label: "tandem.bgp.speaker")

    private struct State {
        var routes: [BGPRoute] = []
        var pid: pid_t?
        var stopping = false
        var restarts: UInt64 = 0
        var applyFailures: UInt64 = 0
    }
    private let state = Mutex(State())

    public init(settings: BGPSettings, directory: String, birdPath: String = "/usr/sbin/bird",
                logger: Logger = Logger(label: "tandem.bgp")) {
        self.settings = settings
        self.paths = Paths(directory: directory)
        self.birdPath = birdPath
        self.logger = logger
    }

    /// The config text for `routes`.
    public func configText(_ routes: [BGPRoute]) -> String {
        BIRDConfig.render(settings, routes: routes, logFile: paths.log)
    }

    /// Checks BIRD is there and accepts the generated config, ends a BIRD a killed daemon left
    /// behind, then starts BIRD with no routes and waits for its control socket.
    public func start() async throws(BGPError) {
        guard FileManager.default.isExecutableFile(atPath: birdPath) else {
            throw BGPError("bgp: the BGP speaker \(birdPath) is not there; install BIRD 2 (apt-get install bird2) or set bgp.speaker")
        }
        do {
            try FileManager.default.createDirectory(atPath: paths.directory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        } catch {
            throw BGPError("bgp: cannot create \(paths.directory): \(error.localizedDescription)")
        }
        endLeftover()
        try writeConfig([])
        let check = Self.run([birdPath, "-p", "-c", paths.config])
        guard check.status == 0 else {
            throw BGPError("bgp: BIRD refuses the generated config: \(check.output.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        let thread = Thread { [self] in supervise() }
        thread.name = "tandem-bgp-speaker"
        thread.start()
        let deadline = monotonicNanoseconds() + 10_000_000_000
        while monotonicNanoseconds() < deadline {
            if (try? command("show status")) != nil { return }
            try? await Task.sleep(for: .milliseconds(50))
        }
        throw BGPError("bgp: BIRD did not open its control socket \(paths.socket) within 10 s (see \(paths.stderr))")
    }

    /// Makes `routes` the announced set: the config file first (a BIRD that restarts reads it),
    /// then `configure`.
    public func apply(_ routes: [BGPRoute]) async throws(BGPError) {
        let result: Result<Void, BGPError> = await withCheckedContinuation { done in
            queue.async { [self] in
                do throws(BGPError) {
                    try writeConfig(routes)
                    let reply = try command("configure")
                    guard !reply.isError else { throw BGPError("bgp: BIRD refused the new config: \(reply.text)") }
                    state.withLock { $0.routes = routes }
                    done.resume(returning: .success(()))
                } catch {
                    state.withLock { $0.applyFailures &+= 1 }
                    done.resume(returning: .failure(error))
                }
            }
        }
        try result.get()
    }

    public func status() async -> BGPStatus {
        let rows: [BIRDProtocolRow] = await withCheckedContinuation { done in
            queue.async { [self] in
                done.resume(returning: (try? command("show protocols")).map(BIRDProtocolRow.parse) ?? [])
            }
        }
        let s = state.withLock { $0 }
        var sessions: [BGPStatus.Session] = []
        for (i, n) in settings.neighbors.enumerated() {
            let row = rows.first { $0.name == BIRDConfig.protocolName(i) }
            sessions.append(.init(neighbor: n.address.description, asn: n.asn,
                                  state: row?.state ?? "unknown",
                                  info: row?.info ?? "", since: row?.since ?? ""))
        }
        return BGPStatus(mode: settings.mode.rawValue, running: s.pid != nil, pid: s.pid, restarts: s.restarts,
                         announced: s.routes.map { "\($0.vip) med \($0.attributes.med)" }, sessions: sessions,
                         applyFailures: s.applyFailures)
    }

    /// Shuts BIRD down (its sessions end with a Cease, so routers drop the routes at once).
    public func stop() async {
        let pid: pid_t? = state.withLock {
            $0.stopping = true
            return $0.pid
        }
        guard let pid else { return }
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            queue.async { [self] in
                _ = try? command("down")
                done.resume()
            }
        }
        for _ in 0..<60 {
            if state.withLock({ $0.pid }) == nil { return }
            try? await Task.sleep(for: .milliseconds(50))
        }
        kill(pid, SIGKILL)
    }

    // MARK: - Process

    /// Runs BIRD until it exits, again and again, until `stop`; the thread is BIRD's parent.
    private func supervise() {
        var backoff: UInt32 = 200_000
        while !state.withLock({ $0.stopping }) {
            let started = monotonicNanoseconds()
            guard let pid = spawn() else {
                logger.error("bgp: cannot start BIRD", metadata: ["path": "\(birdPath)"])
                usleep(backoff)
                backoff = min(backoff * 2, 5_000_000)
                continue
            }
            let again = state.withLock { s -> Bool in
                if s.stopping { return false }
                s.pid = pid
                return true
            }
            if !again { kill(pid, SIGKILL) }
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            let stopping = state.withLock { s -> Bool in
                s.pid = nil
                if !s.stopping { s.restarts &+= 1 }
                return s.stopping
            }
            if stopping { break }
            logger.error("bgp: BIRD exited; starting it again", metadata: ["status": "\(status)", "stderr": "\(paths.stderr)"])
            if monotonicNanoseconds() - started > 30_000_000_000 { backoff = 200_000 }
            usleep(backoff)
            backoff = min(backoff * 2, 5_000_000)
        }
    }

    private func spawn() -> pid_t? {
        let args = ["/usr/bin/setpriv", "--pdeathsig", "KILL", "--", birdPath, "-f", "-c", paths.config,
                    "-s", paths.socket, "-P", paths.pidFile]
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, paths.stderr, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var cargs: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) }
        cargs.append(nil)
        defer { cargs.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, args[0], &actions, nil, cargs, environ)
        return rc == 0 ? pid : nil
    }

    /// A BIRD a SIGKILLed daemon left (before the parent-death signal, or started by hand with
    /// this config) would keep announcing and hold the socket: end it.
    private func endLeftover() {
        guard let text = try? String(contentsOfFile: paths.pidFile, encoding: .utf8),
              let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1,
              let cmdline = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return }
        let args = String(decoding: cmdline, as: UTF8.self).split(separator: "\0").map(String.init)
        guard args.contains(paths.config) else { return }
        logger.notice("bgp: ending the BIRD a previous run left behind", metadata: ["pid": "\(pid)"])
        kill(pid, SIGKILL)
        for _ in 0..<100 where kill(pid, 0) == 0 { usleep(10_000) }
    }

    private func writeConfig(_ routes: [BGPRoute]) throws(BGPError) {
        let tmp = paths.config + ".tmp"
        do {
            try configText(routes).write(toFile: tmp, atomically: false, encoding: .utf8)
            if rename(tmp, paths.config) != 0 { throw BGPError("rename: \(String(cString: strerror(errno)))") }
        } catch let e as BGPError {
            throw BGPError("bgp: cannot write \(paths.config): \(e.message)")
        } catch {
            throw BGPError("bgp: cannot write \(paths.config): \(error.localizedDescription)")
        }
    }

    // MARK: - Control socket

    /// One command over a fresh control connection: BIRD's greeting, the command, its reply.
    func command(_ text: String) throws(BGPError) -> BIRDReply {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw BGPError("bgp: socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let path = Array(paths.socket.utf8)
        guard path.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw BGPError("bgp: socket path too long") }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: path)
            raw[path.count] = 0
        }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw BGPError("bgp: cannot reach BIRD at \(paths.socket): \(String(cString: strerror(errno)))") }
        var reader = LineReader(fd: fd)
        _ = try reader.reply()  // 0001 BIRD x.y ready.
        let line = Array((text + "\n").utf8)
        let sent = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard sent == line.count else { throw BGPError("bgp: cannot write to BIRD's control socket") }
        return try reader.reply()
    }

    private struct LineReader {
        let fd: Int32
        var buffer: [UInt8] = []
        var parser = BIRDReplyParser()

        mutating func reply() throws(BGPError) -> BIRDReply {
            var chunk = [UInt8](repeating: 0, count: 4096)
            while true {
                while let nl = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                    let line = String(decoding: buffer[..<nl], as: UTF8.self)
                    buffer.removeSubrange(...nl)
                    do {
                        if let r = try parser.feed(line) { return r }
                    } catch {
                        throw BGPError("bgp: \(error.description)")
                    }
                }
                guard buffer.count < 1 << 22 else { throw BGPError("bgp: BIRD's reply is too long") }
                let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                guard n > 0 else { throw BGPError("bgp: BIRD closed its control connection or did not answer") }
                buffer.append(contentsOf: chunk[..<n])
            }
        }
    }

    /// Runs a short command to the end, with its output.
    static func run(_ args: [String]) -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: args[0])
        p.arguments = Array(args.dropFirst())
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        do { try p.run() } catch { return (-1, "\(error)") }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}
