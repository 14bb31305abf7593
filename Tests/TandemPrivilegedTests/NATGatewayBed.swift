import Foundation

/// Two nftables NAT gateways between an inside client and an outside server, in namespaces of
/// the test's own (`<prefix>-c`, `-g1`, `-g2`, `-s`):
///
///     c:ca 10.79.1.2 <-> g1:cb 10.79.1.1 | g1:sb 10.79.2.1 <-> s:sa 10.79.2.2
///
/// Both gateways masquerade to their outside address, forward 8080 on it to the client's :80,
/// drop `ct state invalid` (g2 with loose TCP pickup off, so a flow without an entry breaks) and
/// mark flows to the server's :81 with ct mark 0x1 (what a filter can leave out). The server has
/// no route back to 10.79.1.0/24: replies reach the client only through the masquerade. g1
/// carries the traffic; `takeover()` moves its two interfaces, with their addresses, to g2.
/// `down()` deletes everything, on every path.
final class NATGatewayBed {
    let prefix: String
    var c: String { "\(prefix)-c" }
    var g1: String { "\(prefix)-g1" }
    var g2: String { "\(prefix)-g2" }
    var server: String { "\(prefix)-s" }
    private var made: [String] = []
    private var children: [Child] = []
    private var files: [String] = []
    private let tmp = FileManager.default.temporaryDirectory.path

    init(prefix base: String) throws {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789")
        prefix = base + String((0..<5).map { _ in alphabet[Int.random(in: 0..<alphabet.count)] })
        do { try build() } catch {
            down()
            throw error
        }
    }

    func must(_ args: [String]) throws {
        let r = try run(args, timeout: 10)
        guard r.ok else { throw TestFailure("\(args.joined(separator: " ")): \(r.stderr)") }
    }

    private func addr(_ ns: String, _ dev: String, _ a: String) throws {
        try must(["ip", "-n", ns, "addr", "add", a, "dev", "\(prefix)\(dev)"])
        try must(["ip", "-n", ns, "link", "set", "\(prefix)\(dev)", "up"])
    }

    private func build() throws {
        for n in [c, g1, g2, server] {
            try must(["ip", "netns", "add", n])
            made.append(n)
            try must(["ip", "-n", n, "link", "set", "lo", "up"])
        }
        let p = prefix
        try must(["ip", "link", "add", "\(p)ca", "netns", c, "type", "veth", "peer", "name", "\(p)cb", "netns", g1])
        try must(["ip", "link", "add", "\(p)sa", "netns", server, "type", "veth", "peer", "name", "\(p)sb", "netns", g1])
        try addr(c, "ca", "10.79.1.2/24")
        try addr(server, "sa", "10.79.2.2/24")
        try addr(g1, "cb", "10.79.1.1/24")
        try addr(g1, "sb", "10.79.2.1/24")
        try must(["ip", "-n", c, "route", "add", "default", "via", "10.79.1.1"])
        let rules = """
            table ip natgw {
                chain pre { type nat hook prerouting priority dstnat; tcp dport 81 ct mark set 0x1; iifname "\(p)sb" tcp dport 8080 dnat to 10.79.1.2:80; }
                chain post { type nat hook postrouting priority srcnat; oifname "\(p)sb" masquerade; }
                chain forward { type filter hook forward priority filter; ct state invalid drop; }
            }
            """
        let file = "\(tmp)/\(p).nft"
        try rules.write(toFile: file, atomically: true, encoding: .utf8)
        files.append(file)
        for g in [g1, g2] {
            try must(["ip", "netns", "exec", g, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
            try must(["ip", "netns", "exec", g, "nft", "-f", file])
        }
        try must(["ip", "netns", "exec", g2, "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0"])
        children.append(try Child(["ip", "netns", "exec", server, "python3", "-c", Self.echo, "10.79.2.2", "80", "81"],
                                  outPath: "/dev/null", errPath: "/dev/null"))
        children.append(try Child(["ip", "netns", "exec", c, "python3", "-c", Self.echo, "10.79.1.2", "80"],
                                  outPath: "/dev/null", errPath: "/dev/null"))
        Thread.sleep(forTimeInterval: 0.4)
    }

    /// A client in `ns` that sends `pings` pings 0.1 s apart to `host:port` over one connection
    /// and prints `ok N` (or `fail N ...` and exits 1).
    func startClient(in ns: String, to host: String, port: Int, pings: Int = 40) throws -> Child {
        let i = files.count
        let out = "\(tmp)/\(prefix)-\(i).out", err = "\(tmp)/\(prefix)-\(i).err"
        files += [out, err]
        let child = try Child(["ip", "netns", "exec", ns, "python3", "-c", Self.client, host, "\(port)", "\(pings)"],
                              outPath: out, errPath: err)
        children.append(child)
        return child
    }

    /// The floating address moves: g1's interfaces, with their addresses, to g2.
    func takeover() throws {
        for dev in ["cb", "sb"] { try must(["ip", "-n", g1, "link", "set", "\(prefix)\(dev)", "netns", g2]) }
        try addr(g2, "cb", "10.79.1.1/24")
        try addr(g2, "sb", "10.79.2.1/24")
    }

    func down() {
        for k in children { k.wait(timeout: 1, signal: SIGKILL) }
        children.removeAll()
        for n in made.reversed() { _ = try? run(["ip", "netns", "del", n], timeout: 10) }
        made.removeAll()
        for f in files { try? FileManager.default.removeItem(atPath: f) }
        files.removeAll()
    }

    static let echo = """
        import socket, sys, threading
        def echo(c):
            while True:
                d = c.recv(64)
                if not d: break
                c.sendall(d)
        def serve(a, port):
            l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            l.bind((a, port)); l.listen(8)
            while True:
                c, _ = l.accept(); threading.Thread(target=echo, args=(c,), daemon=True).start()
        ports = [int(x) for x in sys.argv[2:]]
        for port in ports[1:]: threading.Thread(target=serve, args=(sys.argv[1], port), daemon=True).start()
        serve(sys.argv[1], ports[0])
        """

    static let client = """
        import socket, sys, time
        n = 0
        t0 = time.time()
        try:
            s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3); s.settimeout(3)
            for i in range(int(sys.argv[3])):
                s.sendall(b'ping'); d = s.recv(64)
                if not d: raise Exception('closed')
                n += 1; time.sleep(0.1)
            print('ok', n, flush=True)
        except Exception as e:
            print('fail', n, repr(e), 'after', round(time.time() - t0, 2), 's', flush=True); sys.exit(1)
        """
}
