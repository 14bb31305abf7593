import Foundation

/// A raw TCP client for the servers' tests: connects to 127.0.0.1 and watches for the server
/// closing, reading (and ignoring) whatever the server sends first.
public enum LoopbackClient {
    /// A TCP connection to 127.0.0.1:port; the file descriptor.
    public static func connect(port: UInt16) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EMFILE) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { close(fd); throw POSIXError(.ECONNREFUSED) }
        return fd
    }

    /// `secondsUntilClosed` on a thread of its own: the blocking reads must not hold a thread of
    /// the cooperative pool (two on a 2-core machine), which the servers under test and the other
    /// tests running in parallel need (seen: a held pool made a server miss its own deadlines).
    public static func waitSecondsUntilClosed(_ fd: Int32, limit: Double) async -> Double? {
        await offPool { secondsUntilClosed(fd, limit: limit) }
    }

    /// `bytesUntilClosed` on a thread of its own (see `waitSecondsUntilClosed`).
    public static func waitBytesUntilClosed(_ fd: Int32, limit: Double) async -> Int? {
        await offPool { bytesUntilClosed(fd, limit: limit) }
    }

    static func offPool<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            Thread.detachNewThread { continuation.resume(returning: work()) }
        }
    }

    /// Seconds until the server closed `fd` (read returned 0 or an error), or nil within `limit`.
    public static func secondsUntilClosed(_ fd: Int32, limit: Double) -> Double? {
        let start = Date()
        var tv = timeval(tv_sec: 0, tv_usec: 20_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var buf = [UInt8](repeating: 0, count: 256)
        while Date().timeIntervalSince(start) < limit {
            let n = recv(fd, &buf, buf.count, 0)
            if n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) { return Date().timeIntervalSince(start) }
        }
        return nil
    }

    /// Bytes received until the server closed `fd`, or nil if it stayed open for `limit` seconds.
    public static func bytesUntilClosed(_ fd: Int32, limit: Double) -> Int? {
        let start = Date()
        var tv = timeval(tv_sec: 0, tv_usec: 20_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var buf = [UInt8](repeating: 0, count: 4096)
        var total = 0
        while Date().timeIntervalSince(start) < limit {
            let n = recv(fd, &buf, buf.count, 0)
            if n > 0 { total += n; continue }
            if n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK) { return total }
        }
        return nil
    }
}
