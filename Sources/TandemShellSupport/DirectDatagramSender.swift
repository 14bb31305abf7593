import Glibc
import TandemCore

/// A plain UDP socket for sending from whatever thread has the datagram: the replication shell's
/// local changes leave from the thread that read them (the ring-buffer or conntrack reader)
/// instead of waking the shell's event loop first, a thread hop that cost 30-40 us per event.
/// Sends never block: a full socket buffer or any error is the caller's to handle (the shell
/// hands such a datagram to its loop's channel). Bound to the node's address with a port of the
/// kernel's choice; receivers accept any source port (they check the sealed header's sender).
public final class DirectDatagramSender: Sendable {
    public struct Peer: Sendable {
        public let id: UInt32
        fileprivate let address: sockaddr_in
    }

    private let fd: Int32

    /// Nil when the socket cannot be made or bound (the caller then sends through its loop).
    public init?(bindAddress: IPv4Address) {
        let s = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { return nil }
        var local = Self.socketAddress(bindAddress, port: 0)
        let bound = withUnsafePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else {
            Glibc.close(s)
            return nil
        }
        // Room for a burst's datagrams before a send would fail with EAGAIN.
        var size: Int32 = 4 << 20
        _ = setsockopt(s, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        fd = s
    }

    deinit { Glibc.close(fd) }

    public static func peer(id: UInt32, address: IPv4Address, port: UInt16) -> Peer {
        Peer(id: id, address: socketAddress(address, port: port))
    }

    /// Sends one datagram without blocking; 0 or the errno of the failure.
    public func send(_ bytes: [UInt8], to peer: Peer) -> Int32 {
        var to = peer.address
        let n = bytes.withUnsafeBytes { b in
            withUnsafePointer(to: &to) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, b.baseAddress, b.count, Int32(MSG_DONTWAIT), $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
        return n == bytes.count ? 0 : (n < 0 ? errno : EMSGSIZE)
    }

    private static func socketAddress(_ a: IPv4Address, port: UInt16) -> sockaddr_in {
        var s = sockaddr_in()
        s.sin_family = sa_family_t(AF_INET)
        s.sin_port = port.bigEndian
        s.sin_addr = in_addr(s_addr: a.value.bigEndian)
        return s
    }
}
