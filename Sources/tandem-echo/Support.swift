// Shared helpers: output, IPv4 endpoints, raw sockets, clocks.

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

// MARK: - Shared helpers

/// Writes a line to stdout and flushes, so a parent reading a pipe sees it at once.
func emit(_ line: String) {
    print(line)
    fflush(nil)
}

func warn(_ line: String) {
    let bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}

/// "IP:PORT" (IPv4 only, the test bed is IPv4) parsed without touching DNS.
struct Endpoint: ExpressibleByArgument, CustomStringConvertible, Sendable {
    var host: String
    var port: Int

    init?(argument: String) {
        guard let colon = argument.lastIndex(of: ":") else { return nil }
        let host = String(argument[..<colon])
        guard let port = Int(argument[argument.index(after: colon)...]), (1...65535).contains(port),
              !host.isEmpty, IPv4.parse(host) != nil
        else { return nil }
        self.host = host
        self.port = port
    }

    var description: String { "\(host):\(port)" }
}

enum IPv4 {
    /// Network-order s_addr for a dotted quad, or nil.
    static func parse(_ s: String) -> in_addr_t? {
        var addr = in_addr()
        guard inet_pton(AF_INET, s, &addr) == 1 else { return nil }
        return addr.s_addr
    }
}

// MARK: - Raw UDP sockets for the load generator and probe

/// A connected, non-blocking IPv4 socket (UDP or TCP), closed on deinit.
final class RawSocket {
    let fd: Int32

    init(target: Endpoint, udp: Bool, nonBlocking: Bool) throws {
        #if canImport(Glibc)
        let type = Int32(udp ? SOCK_DGRAM.rawValue : SOCK_STREAM.rawValue)
        #else
        let type = udp ? SOCK_DGRAM : SOCK_STREAM
        #endif
        let fd = socket(AF_INET, type, 0)
        guard fd >= 0 else { throw RawSocket.error("socket") }
        self.fd = fd
        var size: Int32 = 4 << 20
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        guard let s = IPv4.parse(target.host) else { throw ValidationError("bad address \(target.host)") }
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = in_port_t(UInt16(target.port).bigEndian)
        sin.sin_addr = in_addr(s_addr: s)
        let rc = withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard rc == 0 else { throw RawSocket.error("connect \(target)") }
        if nonBlocking {
            let flags = fcntl(fd, F_GETFL)
            _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        }
    }

    deinit { close(fd) }

    static func error(_ what: String) -> Error {
        ValidationError("\(what): \(String(cString: strerror(errno)))")
    }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
