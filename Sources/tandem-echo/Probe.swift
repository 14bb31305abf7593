// tandem-echo probe: one echo round trip.

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

// MARK: - Probe

struct Probe: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send one message to an echo service and check it comes back unchanged.")

    @Option(help: "Echo service, IPv4:PORT.")
    var target: Endpoint

    @Flag(help: "Use UDP instead of TCP.")
    var udp = false

    @Option(help: "Seconds to wait for the reply.")
    var timeout: Double = 2

    @Option(help: "Message to send.")
    var message: String = "tandem-probe"

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        let deadline = monotonicSeconds() + timeout
        let sock: RawSocket
        do {
            sock = try RawSocket(target: target, udp: udp, nonBlocking: false)
        } catch {
            warn("probe \(target): \(error)")
            throw ExitCode(1)
        }
        let bytes = Array(message.utf8)
        let n = bytes.withUnsafeBytes { send(sock.fd, $0.baseAddress, $0.count, 0) }
        guard n == bytes.count else {
            warn("probe \(target): send failed")
            throw ExitCode(1)
        }
        var got: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65_536)
        var pfd = pollfd(fd: sock.fd, events: Int16(POLLIN), revents: 0)
        while got.count < bytes.count {
            let left = deadline - monotonicSeconds()
            guard left > 0, poll(&pfd, 1, Int32(left * 1000) + 1) > 0 else {
                warn("probe \(target): timeout")
                throw ExitCode(1)
            }
            let r = buf.withUnsafeMutableBytes { recv(sock.fd, $0.baseAddress, $0.count, 0) }
            guard r > 0 else {
                warn("probe \(target): \(r == 0 ? "connection closed" : String(cString: strerror(errno)))")
                throw ExitCode(1)
            }
            got.append(contentsOf: buf[0..<r])
        }
        guard got == bytes else {
            warn("probe \(target): reply differs")
            throw ExitCode(1)
        }
        emit("ok \(udp ? "udp" : "tcp") \(target)")
    }
}
