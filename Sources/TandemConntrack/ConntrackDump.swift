import CNetfilterConntrack
import Foundation
import TandemCore

/// A full IPv4 conntrack table dump on a fresh ctnetlink socket in the calling thread's network
/// namespace, shared by the source (initial dump, resync, reconcile) and the sink (reading back
/// what it wrote). Dumps are flow-controlled by the kernel, so they do not overrun.
enum ConntrackDump {
    /// The entries and how many messages could not be parsed; bounded at 60 s.
    static func ipv4(buf: UnsafeMutableRawBufferPointer) -> Result<([KernelConnection], Int), ConntrackSourceError> {
        var err: Int32 = 0
        guard let sock = tct_open(0, 0, &err) else {
            return .failure(ConntrackSourceError(message: "dump socket: \(String(cString: strerror(-err)))"))
        }
        defer { tct_close(sock) }
        let fd = tct_fd(sock)
        let rc = tct_send_dump(sock, 1)
        guard rc == 0 else { return .failure(ConntrackSourceError(message: "dump request: \(String(cString: strerror(-rc)))")) }
        var entries: [KernelConnection] = []
        var malformed = 0
        let deadline = monotonicNanoseconds() + 60_000_000_000
        while monotonicNanoseconds() < deadline {
            let n = tct_recv(fd, buf.baseAddress, buf.count, 1000)
            if n == -EAGAIN || n == -EINTR { continue }
            guard n > 0 else { return .failure(ConntrackSourceError(message: "dump read: \(String(cString: strerror(-n)))")) }
            let data = UnsafeRawBufferPointer(rebasing: buf[0..<Int(n)])
            let (messages, bad) = NetlinkWalk.split(data)
            if bad { malformed += 1 }
            for m in messages {
                switch NetlinkWalk.classify(m, in: data) {
                case .done: return .success((entries, malformed))
                case .error(let e) where e != 0:
                    return .failure(ConntrackSourceError(message: "dump: \(String(cString: strerror(e)))"))
                case .event:
                    if let c = parse(m, in: data) { entries.append(c) } else { malformed += 1 }
                case .malformed: malformed += 1
                case .error, .other: break
                }
            }
        }
        return .failure(ConntrackSourceError(message: "dump did not finish in 60 s"))
    }

    /// One bounds-checked message parsed through libnetfilter_conntrack.
    static func parse(_ m: NetlinkMessage, in data: UnsafeRawBufferPointer) -> KernelConnection? {
        guard let base = data.baseAddress, let ct = nfct_new() else { return nil }
        defer { nfct_destroy(ct) }
        guard tct_parse(base + m.offset, ct) >= 0 else { return nil }
        return KernelConnection(nfct: ct)
    }
}
