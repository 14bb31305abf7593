import Foundation
import Glibc
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing
@testable import TandemHealth

/// setns(2) through dlsym: Glibc declares it only under _GNU_SOURCE.
private let healthSetns: (@convention(c) (Int32, Int32) -> Int32)? = {
    guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "setns") else { return nil }
    return unsafeBitCast(sym, to: (@convention(c) (Int32, Int32) -> Int32).self)
}()

/// One-thread event loop group whose thread sits in network namespace `ns`: the monitor makes
/// every socket on its loop threads, so its probes leave from that namespace. The thread goes
/// away with the group, so no shared thread is left in the namespace.
private func eventLoopGroup(in ns: String) throws -> MultiThreadedEventLoopGroup {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    do {
        try group.next().submit {
            let fd = open("/var/run/netns/\(ns)", O_RDONLY)
            guard fd >= 0 else { throw TestFailure("open netns \(ns): errno \(errno)") }
            defer { Glibc.close(fd) }
            guard let setns = healthSetns, setns(fd, 0x4000_0000 /* CLONE_NEWNET */) == 0 else {
                throw TestFailure("setns \(ns): errno \(errno)")
            }
        }.wait()
    } catch {
        try? group.syncShutdownGracefully()
        throw error
    }
    return group
}

/// Transitions as they arrive, with the monitor's clock.
private final class TransitionLog: Sendable {
    private let box = NIOLockedValueBox<[HealthTransition]>([])
    func append(_ t: HealthTransition) { box.withLockedValue { $0.append(t) } }
    /// The first transition of `id` to `state` at or after `since`.
    func first(_ id: EndpointID, to state: HealthState, since: ContinuousClock.Instant) -> HealthTransition? {
        box.withLockedValue { $0.first { $0.endpoint == id && $0.to == state && $0.at >= since } }
    }
    func count(_ id: EndpointID, since: ContinuousClock.Instant) -> Int {
        box.withLockedValue { $0.filter { $0.endpoint == id && $0.at >= since }.count }
    }
}

extension Privileged {
    /// TandemHealth's monitor, its loop in the bed's llb1 namespace, against real servers on ep1:
    /// nginx (http :80, https :8443 with a self-signed certificate), tandem-echo (tcp and udp
    /// :9100) and ep1's own ICMP. Each kind goes up when served, down when the servers stop
    /// (refused) and when ep1 drops every packet (nftables), and up again.
    @Suite(.timeLimit(.minutes(2))) struct HealthProbe {
        let ep1 = "10.0.10.21"

        func id(_ s: String) -> EndpointID { EndpointID(s) }

        /// Waits (bounded) until every id in `ids` has `state`; returns the ids that did not.
        func waitFor(_ monitor: HealthMonitor, _ ids: [EndpointID], _ state: HealthState, within: Duration) -> [EndpointID] {
            let deadline = ContinuousClock.now + within
            while true {
                let missing = ids.filter { monitor.snapshot(of: $0)?.state != state }
                if missing.isEmpty || ContinuousClock.now > deadline { return missing }
                Thread.sleep(forTimeInterval: 0.01)
            }
        }

        func describe(_ monitor: HealthMonitor) -> String {
            monitor.snapshot().map { "\($0.target.id)=\($0.state.rawValue)(\($0.lastResult?.detail ?? "-"))" }.joined(separator: " ")
        }

        func ms(_ d: Duration) -> Int { Int(d / .milliseconds(1)) }

        @Test func eachKindUpWhenServedDownWhenRefusedOrDropped() throws {
            let bed = try TestBed()
            defer { bed.down() }
            let ns1 = bed.ns("ep1")
            // https: nginx with a self-signed certificate, in the bed's state dir (down.sh removes it).
            let dir = "/run/tandem-testbed/\(bed.name)/ep1/tls"
            try FileManager.default.createDirectory(atPath: dir + "/logs", withIntermediateDirectories: true)
            let cert = try run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ep1",
                                "-keyout", "\(dir)/key.pem", "-out", "\(dir)/cert.pem"])
            try #require(cert.ok, "openssl: \(cert.stderr)")
            let conf = """
                pid \(dir)/nginx.pid;
                error_log \(dir)/logs/error.log warn;
                events { worker_connections 256; }
                http {
                    access_log off;
                    client_body_temp_path \(dir)/body; proxy_temp_path \(dir)/proxy; fastcgi_temp_path \(dir)/fcgi;
                    uwsgi_temp_path \(dir)/uwsgi; scgi_temp_path \(dir)/scgi;
                    server {
                        listen 80; listen 8443 ssl;
                        ssl_certificate \(dir)/cert.pem; ssl_certificate_key \(dir)/key.pem;
                        location = /whoami { default_type text/plain; return 200 "ep1\\n"; }
                        location = /broken { return 503; }
                    }
                }
                """
            try conf.write(toFile: "\(dir)/nginx.conf", atomically: true, encoding: .utf8)
            // The bed's nginx owns :80 on ep1; this test runs its own, so the refusing phase can stop it.
            let stopBedNginx = try run(["bash", "-c", "kill $(cat /run/tandem-testbed/\(bed.name)/ep1/nginx.pid)"])
            try #require(stopBedNginx.ok, "stop bed nginx: \(stopBedNginx.stderr)")
            func startNginx() throws {
                var r = CommandResult(status: -1, stdout: "", stderr: "", timedOut: false)
                for _ in 0..<20 {
                    r = try run(["ip", "netns", "exec", ns1, "nginx", "-e", "\(dir)/logs/error.log", "-p", "\(dir)/", "-c", "\(dir)/nginx.conf"])
                    if r.ok { return }
                    Thread.sleep(forTimeInterval: 0.1)  // the old master may still hold the port
                }
                throw TestFailure("nginx: \(r.stderr)")
            }
            func stopNginx() throws {
                _ = try run(["bash", "-c", "kill -TERM $(cat \(dir)/nginx.pid) 2>/dev/null; for i in $(seq 50); do [ -e \(dir)/nginx.pid ] || exit 0; sleep 0.02; done; exit 1"])
            }
            try startNginx()
            var echo: Child?
            func startEcho() throws {
                echo = try Child(["ip", "netns", "exec", ns1, Env.echo, "serve", "--name", "ep1", "--address", "0.0.0.0", "--port", "9100"],
                                 outPath: "\(dir)/echo.log", errPath: "\(dir)/echo.err")
            }
            func stopEcho() { echo?.wait(timeout: 3, signal: SIGKILL) }
            try startEcho()
            defer { stopEcho() }

            let group = try eventLoopGroup(in: bed.ns("llb1"))
            defer { try? group.syncShutdownGracefully() }
            let log = TransitionLog()
            let monitor = HealthMonitor(group: group, logger: Logger(label: "test.health"), seed: 14) { log.append($0) }
            defer { monitor.shutdown() }

            let specs: [(String, String, UInt16)] = [
                ("http", "http:/whoami:200:body=ep1", 80),
                ("https-insecure", "https:/whoami:200:insecure", 8443),
                ("https-verify", "https:/whoami:200", 8443),
                ("http-503", "http:/broken:200", 80),
                ("tcp", "tcp", 9100),
                ("udp-reply", "udp::hello:hello", 9100),
                ("udp", "udp", 9100),
                ("ping", "ping", 0),
                ("none", "none", 0),
            ]
            for (name, spec, port) in specs {
                try monitor.add(ProbeTarget(id: id(name), address: ep1, port: port, spec: try ProbeSpec.parse(spec)))
            }
            let served = ["http", "https-insecure", "tcp", "udp-reply", "udp", "ping", "none"].map(id)
            // Up when served (the echo server may take a moment to bind).
            var missing = waitFor(monitor, served, .up, within: .seconds(5))
            #expect(missing.isEmpty, "not up: \(missing) \(describe(monitor))")
            // Certificate verification fails against the self-signed certificate; a wrong status fails.
            missing = waitFor(monitor, [id("https-verify"), id("http-503")], .down, within: .seconds(3))
            #expect(missing.isEmpty, "not down: \(describe(monitor))")
            #expect(monitor.snapshot(of: id("https-verify"))?.lastResult?.detail.hasPrefix("tls") == true, "\(describe(monitor))")
            #expect(monitor.snapshot(of: id("http-503"))?.lastResult?.detail == "status 503")

            // Refused: the servers stop; nginx and the echo server's ports answer RST / ICMP unreachable.
            let refusing = ["http", "https-insecure", "tcp", "udp-reply", "udp"].map(id)
            var t = ContinuousClock.now
            try stopNginx()
            stopEcho()
            missing = waitFor(monitor, refusing, .down, within: .seconds(4))
            #expect(missing.isEmpty, "not down when refused: \(describe(monitor))")
            for e in refusing {
                if let tr = log.first(e, to: .down, since: t) {
                    // udp without an expected reply waits for ICMP unreachables, which ep1's kernel
                    // rate-limits per source (a burst of 6, then 1/s), shared with udp-reply's
                    // attempts to the same closed port: seconds, not sub-second (docs/health.md).
                    let bound: Duration = e == id("udp") ? .milliseconds(3500) : .seconds(1)
                    #expect(tr.at - t < bound, "\(e) took \(ms(tr.at - t)) ms")
                    print("health-probe refused \(e): down after \(ms(tr.at - t)) ms (\(tr.reason))")
                }
            }
            #expect(monitor.snapshot(of: id("udp"))?.lastResult?.detail.hasPrefix(ProbeResult.portUnreachable) == true)
            #expect(monitor.snapshot(of: id("ping"))?.state == .up)

            // Back up.
            try startNginx()
            try startEcho()
            missing = waitFor(monitor, served, .up, within: .seconds(5))
            #expect(missing.isEmpty, "not up again: \(describe(monitor))")

            // Dropped: ep1 silently drops everything. udp without an expected reply stays up by
            // LoxiLB's definition (no ICMP unreachable is health).
            let dropping = ["http", "https-insecure", "tcp", "udp-reply", "ping"].map(id)
            let udpTransitions = log.count(id("udp"), since: ContinuousClock.now)
            t = ContinuousClock.now
            // On eth0 (netdev ingress/egress), below the sockets, as a dead link drops: an inet
            // output drop would fail the servers' own sends with EPERM instead.
            let nft = try bed.exec("ep1", ["nft", "add table netdev tdmhealth; add chain netdev tdmhealth in { type filter hook ingress device eth0 priority 0; policy drop; }; add chain netdev tdmhealth out { type filter hook egress device eth0 priority 0; policy drop; }"])
            try #require(nft.ok, "nft: \(nft.stderr)")
            missing = waitFor(monitor, dropping, .down, within: .seconds(3))
            #expect(missing.isEmpty, "not down when dropped: \(describe(monitor))")
            for e in dropping {
                if let tr = log.first(e, to: .down, since: t) {
                    #expect(tr.at - t < .seconds(1), "\(e) took \(ms(tr.at - t)) ms")
                    print("health-probe dropped \(e): down after \(ms(tr.at - t)) ms (\(tr.reason))")
                }
            }
            #expect(monitor.snapshot(of: id("udp"))?.state == .up)
            #expect(log.count(id("udp"), since: t) == udpTransitions)

            // Recovery, and the external verdict: red takes a healthy endpoint out.
            _ = try bed.exec("ep1", ["nft", "delete", "table", "netdev", "tdmhealth"])
            missing = waitFor(monitor, served, .up, within: .seconds(5))
            #expect(missing.isEmpty, "not up after the drop: \(describe(monitor))")
            #expect(monitor.setVerdict(.red, for: id("tcp")))
            #expect(monitor.snapshot(of: id("tcp"))?.state == .down)
            #expect(monitor.snapshot(of: id("tcp"))?.probeState == .up)
            #expect(monitor.setVerdict(.green, for: id("tcp")))
            #expect(monitor.snapshot(of: id("tcp"))?.state == .up)
            let snap = monitor.snapshot(of: id("http"))
            #expect(snap.map { $0.transitions >= 5 && $0.probesSent > 10 && $0.sinceChange != nil } == true)
            monitor.remove(id("http"))
            #expect(monitor.snapshot(of: id("http")) == nil)
        }
    }
}
