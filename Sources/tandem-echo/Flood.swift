// tandem-echo flood: UDP load generator.

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

// MARK: - Flood

struct Flood: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "UDP load generator: send datagrams to an echo service and count the replies.",
        discussion: """
            Prints one JSON object: sent, received, bad (replies of the wrong size), and sent_pps /
            recv_pps over the sending time. Always stops after --duration plus a short drain.
            """)

    @Option(help: "Echo service to hit, IPv4:PORT.")
    var target: Endpoint

    @Option(help: "Payload bytes per datagram.")
    var size: Int = 64

    @Option(help: "Seconds of sending (bounded to 1 hour).")
    var duration: Double = 10

    @Option(help: "Datagrams per second in total; 0 sends as fast as possible.")
    var rate: Int = 0

    @Option(help: "Source sockets (flows), each with its own source port.")
    var flows: Int = 8

    @Option(help: "Max datagrams in flight in total (closed loop); 0 for no limit.")
    var window: Int = 0

    @Option(help: "Seconds to wait for late replies after sending stops.")
    var drain: Double = 0.3

    func validate() throws {
        guard (1...65_507).contains(size) else { throw ValidationError("size must be 1...65507") }
        guard duration > 0, duration <= 3600 else { throw ValidationError("duration must be in (0, 3600]") }
        guard rate >= 0 else { throw ValidationError("rate must be >= 0") }
        guard (1...1024).contains(flows) else { throw ValidationError("flows must be 1...1024") }
        guard window >= 0 else { throw ValidationError("window must be >= 0") }
        guard drain >= 0, drain <= 10 else { throw ValidationError("drain must be in [0, 10]") }
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        let sockets = try (0..<flows).map { _ in try RawSocket(target: target, udp: true, nonBlocking: true) }
        var payload = [UInt8](repeating: 0x5a, count: size)
        var recvBuf = [UInt8](repeating: 0, count: 65_536)
        var pfds = sockets.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }

        var sent = 0, received = 0, bad = 0, sendErrors = 0
        var lostCredit = 0        // in-flight datagrams written off as lost (closed loop only)
        var lastProgress = 0.0
        let batch = 32
        let start = monotonicSeconds()
        let end = start + duration
        var now = start
        lastProgress = now
        var next = 0

        func drainReceives() {
            for s in sockets {
                while true {
                    let n = recvBuf.withUnsafeMutableBytes { recv(s.fd, $0.baseAddress, $0.count, 0) }
                    if n < 0 { break }  // EAGAIN, or an ICMP error reported on the socket
                    if n == size { received += 1 } else { bad += 1 }
                }
            }
        }

        while now < end {
            var allowed = batch
            if rate > 0 {
                let due = Int(Double(rate) * (now - start)) - sent
                allowed = min(allowed, max(0, due))
            }
            if window > 0 {
                let inFlight = sent - received - bad - lostCredit
                if inFlight >= window, now - lastProgress > 0.05 {
                    lostCredit += inFlight   // replies that never came: stop waiting for them
                    lastProgress = now
                }
                allowed = min(allowed, max(0, window - (sent - received - bad - lostCredit)))
            }
            if allowed > 0 {
                let s = sockets[next]
                next = (next + 1) % sockets.count
                for i in 0..<allowed {
                    // Sequence number in the first bytes, so the payload is not constant.
                    if size >= 4 {
                        let seq = UInt32(truncatingIfNeeded: sent + i)
                        payload[0] = UInt8(truncatingIfNeeded: seq >> 24)
                        payload[1] = UInt8(truncatingIfNeeded: seq >> 16)
                        payload[2] = UInt8(truncatingIfNeeded: seq >> 8)
                        payload[3] = UInt8(truncatingIfNeeded: seq)
                    }
                    let n = payload.withUnsafeBytes { send(s.fd, $0.baseAddress, $0.count, 0) }
                    if n == size { sent += 1 } else { sendErrors += 1; break }
                }
            }
            let before = received + bad
            drainReceives()
            if received + bad > before { lastProgress = now }
            if allowed == 0 {
                // Nothing may be sent now: wait for replies (or the rate) briefly.
                _ = poll(&pfds, nfds_t(pfds.count), 1)
            }
            now = monotonicSeconds()
        }
        let sendEnd = now
        let drainEnd = sendEnd + drain
        while now < drainEnd, received + bad < sent {
            _ = poll(&pfds, nfds_t(pfds.count), 10)
            drainReceives()
            now = monotonicSeconds()
        }
        let elapsed = max(sendEnd - start, 1e-9)
        let sentPps = Double(sent) / elapsed
        let recvPps = Double(received) / elapsed
        let loss = sent > 0 ? Double(sent - received) / Double(sent) : 0
        emit("""
            {"target":"\(target)","size":\(size),"flows":\(flows),"rate":\(rate),"window":\(window),\
            "duration":\(fmt(elapsed)),"sent":\(sent),"received":\(received),"bad":\(bad),\
            "send_errors":\(sendErrors),"sent_pps":\(fmt(sentPps)),"recv_pps":\(fmt(recvPps)),\
            "loss":\(fmt(loss))}
            """)
    }

    private func fmt(_ x: Double) -> String {
        String(Double(Int((x * 1000).rounded())) / 1000)
    }
}
