import CLibMnl
import Foundation
import TandemCore
#if canImport(Glibc)
import Glibc
#endif

/// Gratuitous ARP frames: sender IP = target IP = the VIP, sender MAC = this interface's MAC,
/// broadcast Ethernet destination. Neighbours that hold an entry for the VIP replace its MAC with
/// ours (Linux treats both forms below as gratuitous and overrides its lock time for them).
public enum GratuitousARP {
    public enum Form: Sendable { case request, reply }

    /// A 42-byte Ethernet + ARP frame. The request form carries a zero target MAC (RFC 5227's ARP
    /// announcement); the reply form carries target MAC = sender MAC, which Linux requires of a
    /// gratuitous reply.
    public static func frame(_ form: Form, vip: IPv4Address, mac: MACAddress) -> [UInt8] {
        var f: [UInt8] = []
        f.reserveCapacity(42)
        f += MACAddress.broadcast.bytes              // Ethernet destination
        f += mac.bytes                               // Ethernet source
        f += [0x08, 0x06]                            // EtherType ARP
        f += [0x00, 0x01]                            // hardware type Ethernet
        f += [0x08, 0x00]                            // protocol type IPv4
        f += [6, 4]                                  // hardware and protocol address lengths
        f += form == .request ? [0x00, 0x01] : [0x00, 0x02]
        let ip = withUnsafeBytes(of: vip.value.bigEndian) { Array($0) }
        f += mac.bytes + ip                          // sender MAC, sender IP
        f += (form == .request ? [UInt8](repeating: 0, count: 6) : mac.bytes) + ip // target MAC, target IP
        return f
    }

    /// Sends one request and one reply per VIP on a fresh packet socket bound to the interface.
    /// Returns the number of frames sent; throws if the socket can't be opened or nothing went out.
    static func announce(_ vips: [IPv4Address], link: LinkInfo) throws(CloudError) -> Int {
        let fd = tdm_packet_open(link.index)
        guard fd >= 0 else {
            let code = -fd
            let hint = code == EPERM ? " (needs root or CAP_NET_RAW)" : ""
            throw CloudError("cannot open a packet socket on \(link.name): \(LinkSystem.errorText(code))\(hint)")
        }
        defer { close(fd) }
        var sent = 0
        var lastError: Int32 = 0
        for vip in vips {
            for form in [Form.request, .reply] {
                let frame = frame(form, vip: vip, mac: link.mac)
                let rc = frame.withUnsafeBytes { tdm_packet_send_arp(fd, link.index, $0.baseAddress, $0.count) }
                if rc == 0 { sent += 1 } else { lastError = -rc }
            }
        }
        if sent == 0 && !vips.isEmpty {
            throw CloudError("cannot send gratuitous ARP on \(link.name): \(LinkSystem.errorText(lastError))")
        }
        return sent
    }
}
