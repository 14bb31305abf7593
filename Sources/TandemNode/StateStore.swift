import Foundation
import TandemAPI
import TandemAPIModels
import TandemCore

/// What the API changed, kept on disk so a node that crashes or reboots comes back serving what it
/// served. JSON Lines: a header line, then one record per line, so a damaged file is reported by
/// line number. Written whole and atomically (temporary file, fsync, rename, fsync of the folder)
/// before the API answers.
public struct NodeState: Sendable, Equatable {
    public static let formatVersion = 1

    /// Every service as the API last left it, with all of its stored fields.
    public var services: [LoadBalancerEntry] = []
    /// Keys ("vip:port/proto") of services deleted through the API, oldest first: a config-file
    /// service among them stays deleted across restarts, and a repeated delete of any of them is
    /// a success (kube-loxilb retries a delete that failed until it succeeds).
    public var deleted: [String] = []
    /// Versions of the cluster-shared service table by key ("vip:port/proto"): one per service
    /// and per tombstone (a delete peers must learn of), so a restarted node neither loses a
    /// write to an older copy nor brings a deleted service back.
    public var stamps: [String: ServiceStamp] = [:]
    /// External endpoint verdicts (LoxiLB's endpointhoststate: green, yellow, red) by host address.
    public var hostStates: [String: String] = [:]
    /// The cluster-shared version of each host state (proto/SPEC.md §14.5); a host without one
    /// (a file from before they were shared) gets version 1.
    public var hostStamps: [String: ServiceStamp] = [:]
    /// LoxiLB endpoint objects (`POST config/endpoint`), as a POST would recreate them.
    public var endpoints: [EndpointObjectEntry] = []

    public init(services: [LoadBalancerEntry] = [], deleted: [String] = [], stamps: [String: ServiceStamp] = [:],
                hostStates: [String: String] = [:]) {
        self.services = services
        self.deleted = deleted
        self.stamps = stamps
        self.hostStates = hostStates
    }
}

/// A shared service's version (proto/SPEC.md §14).
public struct ServiceStamp: Codable, Sendable, Equatable {
    public var version: UInt64
    public var origin: UInt32
    /// Set for a tombstone: when the delete was made or learned (wall clock µs).
    public var tombstonedAt: UInt64?
    public init(version: UInt64, origin: UInt32, tombstonedAt: UInt64? = nil) {
        self.version = version
        self.origin = origin
        self.tombstonedAt = tombstonedAt
    }
}

public struct StateFileError: Error, Equatable, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Reads and writes the state file. Not thread-safe on its own: the node controller (an actor)
/// owns it.
public struct StateStore: Sendable {
    public let path: String

    public init(path: String) { self.path = path }

    public static let defaultPath = "/var/lib/tandem/state.jsonl"

    private struct Header: Codable {
        var tandemState: Int
    }

    /// One record line. Exactly one of service, deleted and stamp is set.
    private struct Record: Codable {
        var service: LoadBalancerEntry?
        var deleted: String?
        /// A key with its shared-table version (with version, origin, tombstonedAt beside it).
        var stamp: String?
        var version: UInt64?
        var origin: UInt32?
        var tombstonedAt: UInt64?
        /// An endpoint host's external verdict (with state beside it).
        var hostState: String?
        var state: String?
        /// A LoxiLB endpoint object.
        var endpoint: EndpointObjectEntry?
    }

    /// The stored state, or nil when there is no file yet. A file that exists but cannot be read
    /// or parsed is an error naming the file and line; nothing is changed.
    public func load() throws(StateFileError) -> NodeState? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw StateFileError("state file \(path) cannot be read (permissions?)")
        }
        return try Self.parse(data, path: path)
    }

    static func parse(_ data: Data, path: String) throws(StateFileError) -> NodeState {
        let lines = data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        let decoder = JSONDecoder()
        guard let first = lines.first, !first.isEmpty else {
            throw StateFileError("state file \(path) line 1: empty; expected the header {\"tandemState\":\(NodeState.formatVersion)}")
        }
        do {
            let h = try decoder.decode(Header.self, from: Data(first))
            guard h.tandemState == NodeState.formatVersion else {
                throw StateFileError("state file \(path) line 1: format version \(h.tandemState); this build reads version \(NodeState.formatVersion)")
            }
        } catch let e as StateFileError {
            throw e
        } catch {
            throw StateFileError("state file \(path) line 1: not a Tandem state header: \(short(error))")
        }
        var state = NodeState()
        var keys = Set<String>()
        for (i, line) in lines.enumerated().dropFirst() {
            let n = i + 1
            if line.isEmpty {
                // Only the final newline may leave an empty line.
                if i == lines.count - 1 { continue }
                throw StateFileError("state file \(path) line \(n): empty line inside the file")
            }
            let r: Record
            do { r = try decoder.decode(Record.self, from: Data(line)) } catch {
                throw StateFileError("state file \(path) line \(n): \(short(error))")
            }
            if let e = r.endpoint {
                guard r.service == nil, r.deleted == nil, r.stamp == nil, r.hostState == nil else {
                    throw StateFileError("state file \(path) line \(n): a record must hold exactly one of service, deleted, stamp, hostState, endpoint")
                }
                do throws(ServiceError) { _ = try e.validated() } catch {
                    throw StateFileError("state file \(path) line \(n): endpoint object: \(error.message)")
                }
                state.endpoints.append(e)
                continue
            }
            if let host = r.hostState {
                guard r.service == nil, r.deleted == nil, r.stamp == nil, IPv4Address(host) != nil,
                      let st = r.state, ["green", "yellow", "red"].contains(st) else {
                    throw StateFileError("state file \(path) line \(n): a hostState record needs an IPv4 address and a state of green, yellow or red")
                }
                state.hostStates[host] = st
                if let v = r.version, v > 0, let o = r.origin, o != 0 { state.hostStamps[host] = ServiceStamp(version: v, origin: o) }
                continue
            }
            switch (r.service, r.deleted ?? r.stamp) {
            case (nil, let k?) where r.stamp != nil && r.deleted == nil:
                guard ServiceKey(text: k) != nil else {
                    throw StateFileError("state file \(path) line \(n): stamp key '\(k)' is not vip:port/proto")
                }
                guard let v = r.version, v > 0, let o = r.origin, o != 0 else {
                    throw StateFileError("state file \(path) line \(n): a stamp needs a non-zero version and origin")
                }
                guard state.stamps[k] == nil else {
                    throw StateFileError("state file \(path) line \(n): stamp \(k) appears twice")
                }
                state.stamps[k] = ServiceStamp(version: v, origin: o, tombstonedAt: r.tombstonedAt)
            case (let s?, nil) where r.stamp == nil:
                let key: String
                do throws(ServiceError) { key = try s.toService().key.description } catch {
                    throw StateFileError("state file \(path) line \(n): \(error.message)")
                }
                guard keys.insert(key).inserted else {
                    throw StateFileError("state file \(path) line \(n): service \(key) appears twice")
                }
                state.services.append(s)
            case (nil, let d?) where r.stamp == nil: state.deleted.append(d)
            default:
                throw StateFileError("state file \(path) line \(n): a record must hold exactly one of service, deleted, stamp")
            }
        }
        return state
    }

    private static func short(_ error: any Error) -> String {
        (error as? DecodingError).map(NodeConfig.describe) ?? "\(error)"
    }

    /// The bytes `save` writes: the header, then one record per line.
    static func render(_ state: NodeState) throws -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var out = try enc.encode(Header(tandemState: NodeState.formatVersion))
        out.append(UInt8(ascii: "\n"))
        func line(_ r: Record) throws {
            out.append(try enc.encode(r))
            out.append(UInt8(ascii: "\n"))
        }
        for s in state.services { try line(Record(service: s)) }
        for d in state.deleted { try line(Record(deleted: d)) }
        for (k, st) in state.stamps.sorted(by: { $0.key < $1.key }) {
            try line(Record(stamp: k, version: st.version, origin: st.origin, tombstonedAt: st.tombstonedAt))
        }
        for (h, st) in state.hostStates.sorted(by: { $0.key < $1.key }) {
            let stamp = state.hostStamps[h]
            try line(Record(version: stamp?.version, origin: stamp?.origin, hostState: h, state: st))
        }
        for e in state.endpoints { try line(Record(endpoint: e)) }
        return out
    }

    /// Writes the whole state atomically: a reader (or a restart after a crash at any point) sees
    /// the old file or the new one, never a mix.
    public func save(_ state: NodeState) throws(StateFileError) {
        let data: Data
        do { data = try Self.render(state) } catch { throw StateFileError("cannot encode the state: \(error)") }
        let url = URL(fileURLWithPath: path)
        let dir = url.deletingLastPathComponent().path
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        } catch {
            throw StateFileError("cannot create the state folder \(dir): \(error.localizedDescription)")
        }
        let tmp = "\(path).tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw StateFileError("cannot write \(tmp): \(String(cString: strerror(errno)))") }
        var ok = data.withUnsafeBytes { raw -> Bool in
            var off = 0
            while off < raw.count {
                let n = write(fd, raw.baseAddress.map { $0 + off }, raw.count - off)
                if n < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                off += n
            }
            return true
        }
        let writeErrno = errno
        if ok && fsync(fd) != 0 { ok = false }
        close(fd)
        guard ok else {
            unlink(tmp)
            throw StateFileError("cannot write \(tmp): \(String(cString: strerror(writeErrno)))")
        }
        guard rename(tmp, path) == 0 else {
            let why = String(cString: strerror(errno))
            unlink(tmp)
            throw StateFileError("cannot replace \(path): \(why)")
        }
        // The rename itself must reach the disk before the write counts as done.
        let dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 {
            fsync(dfd)
            close(dfd)
        }
    }
}
