import CTandemShim
import Foundation
import Glibc
import Logging
import Testing
@testable import TandemCore
@testable import TandemDatapath

private final class ResultBox<T>: @unchecked Sendable { var result: Result<T, any Error>? }

/// setns(2): Glibc declares it only under _GNU_SOURCE, which Swift's Glibc module is built without.
private let glibcSetns: (@convention(c) (Int32, Int32) -> Int32)? = {
    guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "setns") else { return nil }
    return unsafeBitCast(sym, to: (@convention(c) (Int32, Int32) -> Int32).self)
}()

/// Runs `body` on a thread of its own inside network namespace `ns` (from `ip netns`), so
/// interface lookups and the netlink attach happen there. The thread ends with `body`, so no
/// shared thread is left in another namespace.
func inNetns<T: Sendable>(_ ns: String, _ body: @escaping @Sendable () throws -> T) throws -> T {
    let box = ResultBox<T>()
    let done = DispatchSemaphore(value: 0)
    let thread = Thread {
        defer { done.signal() }
        let fd = open("/var/run/netns/\(ns)", O_RDONLY)
        guard fd >= 0 else { box.result = .failure(TestFailure("open netns \(ns): errno \(errno)")); return }
        defer { Glibc.close(fd) }
        guard let setns = glibcSetns, setns(fd, 0x4000_0000 /* CLONE_NEWNET */) == 0 else { box.result = .failure(TestFailure("setns \(ns): errno \(errno)")); return }
        box.result = Result { try body() }
    }
    thread.start()
    guard done.wait(timeout: .now() + 30) == .success, let r = box.result else { throw TestFailure("netns thread for \(ns) hung") }
    return try r.get()
}

/// A Datapath loaded by this process and attached to eth0 of a test bed's node namespace (no
/// daemon), so a test can drive the Datapath API directly while real traffic flows. `detach()`
/// on every path.
final class AttachedDatapath: @unchecked Sendable {
    let dp: Datapath
    let bed: TestBed
    let role: String
    private let ifindex: Int32
    private let createdQdisc: Int32
    private var attached = true

    init(bed: TestBed, role: String = "llb1", timeouts: Timeouts = Timeouts()) async throws {
        self.bed = bed
        self.role = role
        let dp = try Datapath(objectPath: Env.bpfObject, connectionTableSize: 4096, logger: Logger(label: "test"))
        // A one-armed node: redirect through the neighbour table out of eth0, as the daemon does
        // when its interfaces do not forward.
        try await dp.apply(settings: DatapathSettings(nodeIP: IPv4Address(10, 0, 10, 141), timeouts: timeouts,
                                                      emitEvents: false, skipFIB: true))
        let fd = dp.ingressProgramFD
        let ns = bed.ns(role)
        do {
            (ifindex, createdQdisc) = try inNetns(ns) {
                let idx = Int32(bitPattern: if_nametoindex("eth0"))
                guard idx > 0 else { throw TestFailure("no eth0 in \(ns)") }
                var created: Int32 = 0
                let rc = tdm_tc_attach_ingress(idx, fd, &created)
                guard rc == 0 else { throw TestFailure("attach in \(ns): \(rc)") }
                return (idx, created)
            }
        } catch {
            await dp.close()
            throw error
        }
        self.dp = dp
    }

    func detach() async {
        if attached {
            attached = false
            let (idx, created) = (ifindex, createdQdisc)
            _ = try? inNetns(bed.ns(role)) { tdm_tc_detach_ingress(idx, created) }
        }
        await dp.close()
    }
}

extension TestBed {
    /// A second client address, 10.0.20.11, on the client namespace (routed by the vcn), so one
    /// test has an allowed and a refused source.
    func addSecondClient() throws {
        try run(["ip", "-n", ns("client"), "addr", "add", "10.0.20.11/24", "dev", "eth0"])
        try run(["ip", "-n", ns("vcn"), "route", "replace", "10.0.20.11/32", "dev", "v-client"])
    }

    /// `X-Tandem-Endpoint` of one new connection from `source` (nil when it fails).
    func whoami(from source: String, port: Int = 56002, timeout: Int = 2) throws -> String? {
        let r = try exec("client", ["curl", "-fsS", "-m", "\(timeout)", "--interface", source, "http://10.0.10.143:\(port)/whoami"])
        return r.ok ? r.stdout.trimmingCharacters(in: .whitespacesAndNewlines) : nil
    }
}

extension Privileged {
    /// allowedSources, least connections and per-service idle timeouts: the datapath's per-service
    /// policies, through BPF_PROG_TEST_RUN and through real traffic in a test bed.
    @Suite(.timeLimit(.minutes(3))) struct ServicePolicy {
        static let vip = IPv4Address(10, 0, 10, 143)
        static let ep1 = Endpoint(ip: IPv4Address(10, 0, 10, 21), port: 80)
        static let ep2 = Endpoint(ip: IPv4Address(10, 0, 10, 22), port: 80)

        func load(timeouts: Timeouts = Timeouts()) async throws -> Datapath {
            let dp = try Datapath(objectPath: Env.bpfObject, connectionTableSize: 4096, logger: Logger(label: "test"))
            try await dp.apply(settings: DatapathSettings(nodeIP: IPv4Address(10, 0, 10, 141),
                                                          portSlice: PortSlice(low: 40000, high: 40999), timeouts: timeouts,
                                                          emitEvents: false))
            return dp
        }

        func service(port: UInt16 = 56002, _ sel: Selection = .roundRobin, endpoints: [Endpoint] = [ep1, ep2],
                     allowed: [String] = [], idleTimeout: UInt32? = nil) -> Service {
            Service(key: ServiceKey(vip: Self.vip, port: port, proto: .tcp), mode: .fullnat, selection: sel, endpoints: endpoints,
                    allowedSources: allowed.compactMap { IPv4Prefix($0) }, idleTimeout: idleTimeout)
        }

        func syn(_ src: IPv4Address, _ sport: UInt16, port: UInt16 = 56002) -> [UInt8] {
            Packets.frame(FlowTuple(source: src, destination: Self.vip, sourcePort: sport, destinationPort: port, proto: 6),
                          tcpFlags: .syn)
        }

        @Test func allowedSourcesRefuseOtherClientsPerService() async throws {
            let dp = try await load()
            defer { Task { await dp.close() } }
            try await dp.install(service(allowed: ["10.0.20.0/28", "192.168.1.7/32"]), slot: 0, hashSeed: 1)
            try await dp.install(service(port: 56003), slot: 1, hashSeed: 1)
            #expect(dp.allowedSources(slot: 0).map(\.description) == ["10.0.20.0/28", "192.168.1.7/32"])
            #expect(dp.allowedSources(slot: 1).isEmpty)
            let shot: Int32 = 2 // TC_ACT_SHOT
            let inside = IPv4Address(10, 0, 20, 10), edge = IPv4Address(10, 0, 20, 15), outside = IPv4Address(10, 0, 20, 16)
            let host = IPv4Address(192, 168, 1, 7), neighbour = IPv4Address(192, 168, 1, 8)
            for (src, allowed) in [(inside, true), (edge, true), (outside, false), (host, true), (neighbour, false)] {
                let out = try dp.testRun(packet: syn(src, 41_000))
                #expect((out.verdict != shot) == allowed, "\(src)")
                if allowed { #expect(Packets.parse(out.packet)?.tuple.destinationPort == 80, "\(src) translated") }
            }
            // The same refused source may use a service without a list.
            #expect(try dp.testRun(packet: syn(outside, 41_001, port: 56003)).verdict != shot)
            #expect(dp.serviceCounters(slot: 0).denied == 2)
            #expect(dp.serviceCounters(slot: 1).denied == 0)
            #expect(dp.stats().sourceDenied == 2)
            #expect(dp.connectionEntries().filter { $0.direction == .original }.count == 4, "refused SYNs create nothing")

            // Narrowed: the old prefix goes, and its established connection keeps going (only new
            // connections are checked).
            let t = FlowTuple(source: inside, destination: Self.vip, sourcePort: 41_000, destinationPort: 56002, proto: 6)
            try await dp.install(service(allowed: ["192.168.1.7/32"]), slot: 0, hashSeed: 1)
            #expect(dp.allowedSources(slot: 0).map(\.description) == ["192.168.1.7/32"])
            #expect(try dp.testRun(packet: Packets.frame(t, tcpFlags: .ack)).verdict != shot, "existing flow kept")
            #expect(try dp.testRun(packet: syn(inside, 41_002)).verdict == shot)
            // Emptied: everyone again.
            try await dp.install(service(), slot: 0, hashSeed: 1)
            #expect(dp.allowedSources(slot: 0).isEmpty)
            #expect(try dp.testRun(packet: syn(outside, 41_003)).verdict != shot)
            #expect(dp.serviceCounters(slot: 0).denied == 3)
            await dp.uninstall(service(port: 56003).key, slot: 1)
            try await dp.install(service(allowed: ["10.0.0.0/8"]), slot: 0, hashSeed: 1)
            await dp.uninstall(service().key, slot: 0)
            #expect(dp.allowedSources(slot: 0).isEmpty, "uninstall removes the slot's prefixes")
        }

        @Test func allowedSourcesAdmitOnlyTheListedClientInTheTestBed() async throws {
            let bed = try TestBed()
            defer { bed.down() }
            try bed.addSecondClient()
            let node = try await AttachedDatapath(bed: bed)
            do {
                try await node.dp.install(service(allowed: ["10.0.20.10/32"]), slot: 0, hashSeed: 1)
                let allowed = try (0..<4).map { _ in try bed.whoami(from: "10.0.20.10") }
                #expect(Set(allowed) == ["ep1", "ep2"], "the listed client is served by both endpoints: \(allowed)")
                let refused = try bed.whoami(from: "10.0.20.11")
                #expect(refused == nil, "the other client's connection fails")
                let denied = node.dp.serviceCounters(slot: 0).denied
                // One SYN, and the retransmissions curl's kernel sent within the 2 s it waited.
                #expect(denied >= 1, "refused SYNs counted: \(denied)")
                #expect(node.dp.stats().sourceDenied == denied)
                #expect(node.dp.connectionEntries().allSatisfy { $0.key.source != IPv4Address(10, 0, 20, 11) })
                // Listing the second client lets it in.
                try await node.dp.install(service(allowed: ["10.0.20.10/32", "10.0.20.11/32"]), slot: 0, hashSeed: 1)
                #expect(try bed.whoami(from: "10.0.20.11") != nil)
            } catch {
                await node.detach()
                throw error
            }
            await node.detach()
        }

        func tuple(_ sport: UInt16, src: IPv4Address = IPv4Address(10, 0, 20, 10)) -> FlowTuple {
            FlowTuple(source: src, destination: Self.vip, sourcePort: sport, destinationPort: 56002, proto: 6)
        }

        func endpointIndex(_ dp: Datapath, _ t: FlowTuple) -> UInt8? {
            dp.connectionEntries().first { $0.key == t && $0.direction == .original }?.endpointIndex
        }

        @Test func leastConnectionsSendsNewFlowsAwayFromTheBusyEndpoint() async throws {
            let dp = try await load()
            defer { Task { await dp.close() } }
            try await dp.resetCounters(slot: 0)
            try await dp.install(service(.leastConnections), slot: 0, hashSeed: 1)
            // Equal counts take turns (the scan starts at the round-robin cursor).
            let first = (0..<6).map { tuple(43_000 + UInt16($0)) }
            for t in first { _ = try dp.testRun(packet: Packets.frame(t, tcpFlags: .syn)) }
            #expect(dp.endpointActiveConnections(slot: 0, count: 2) == [3, 3])
            // Close the ones on endpoint 1 (RST), so three long-lived ones stay on endpoint 0.
            let onOne = first.filter { endpointIndex(dp, $0) == 1 }
            let long = first.filter { endpointIndex(dp, $0) == 0 }
            #expect(onOne.count == 3 && long.count == 3)
            for t in onOne { _ = try dp.testRun(packet: Packets.frame(t, tcpFlags: .rst)) }
            #expect(dp.endpointActiveConnections(slot: 0, count: 2) == [3, 0])
            // A closed connection's later packets give nothing back twice.
            for t in onOne { _ = try dp.testRun(packet: Packets.frame(t, tcpFlags: [.rst, .ack])) }
            #expect(dp.endpointActiveConnections(slot: 0, count: 2) == [3, 0])
            let next = (0..<3).map { tuple(43_100 + UInt16($0)) }
            for t in next { _ = try dp.testRun(packet: Packets.frame(t, tcpFlags: .syn)) }
            #expect(next.map { endpointIndex(dp, $0) } == [1, 1, 1], "new connections go to the idle endpoint")
            #expect(dp.endpointActiveConnections(slot: 0, count: 2) == [3, 3])
            // The long ones end with FIN from both sides (TIME_WAIT): their counts fall back.
            for t in long {
                _ = try dp.testRun(packet: Packets.frame(t, tcpFlags: [.fin, .ack]))
                let fwd = try #require(dp.connectionEntries().first { $0.key == t && $0.direction == .original })
                _ = try dp.testRun(packet: Packets.frame(fwd.translated.reversed, tcpFlags: [.fin, .ack]))
                #expect(dp.connectionEntries().first { $0.key == t }?.state == .timeWait)
            }
            #expect(dp.endpointActiveConnections(slot: 0, count: 2) == [0, 3])
            // A new SYN on a TIME_WAIT tuple reopens it: one count, not two.
            _ = try dp.testRun(packet: Packets.frame(long[0], tcpFlags: .syn))
            #expect(endpointIndex(dp, long[0]) == 0)
            #expect(dp.endpointActiveConnections(slot: 0, count: 2) == [1, 3])
            // Removed from Swift (replication's delete, the fallback reaper's per-half deletes).
            #expect(dp.removeConnection(next[0]))
            let e = try #require(dp.connectionEntries().first { $0.key == next[1] && $0.direction == .original })
            #expect(dp.deleteEntry(next[1]) && dp.deleteEntry(e.peerKey))
            #expect(dp.endpointActiveConnections(slot: 0, count: 2) == [1, 1])
            #expect(!dp.connectionEntries().contains { $0.flags.rawValue & 0x10 != 0 }, "the bookkeeping bit is not shown")
            try await dp.resetCounters(slot: 0)
            #expect(dp.endpointActiveConnections(slot: 0, count: 2) == [0, 0])
        }

        @Test func activeCountsEndWithExpiryAndOrphans() async throws {
            var timeouts = Timeouts()
            timeouts.synSent = 1
            let dp = try await load(timeouts: timeouts)
            defer { Task { await dp.close() } }
            try await dp.install(service(.leastConnections), slot: 0, hashSeed: 1)
            let idle = tuple(44_000), orphaned = tuple(44_001), reopened = tuple(44_002)
            for t in [idle, orphaned, reopened] { _ = try dp.testRun(packet: Packets.frame(t, tcpFlags: .syn)) }
            #expect(dp.endpointActiveConnections(slot: 0, count: 2).reduce(0, +) == 3)
            // LRU eviction of an original: only its reply half is left to give the count back.
            #expect(dp.maps.ct.delete(tdm_flow_key(orphaned)))
            try await Task.sleep(for: .milliseconds(2300))
            // Expired: a packet on the tuple replaces it (one count for the new connection).
            _ = try dp.testRun(packet: Packets.frame(reopened, tcpFlags: .syn))
            #expect(dp.reapInKernel() == 1, "the idle connection")
            #expect(dp.stats().reapedHalves == 1, "the orphan")
            #expect(dp.endpointActiveConnections(slot: 0, count: 2).reduce(0, +) == 1)
        }

        static let paths: [InstallPath] = [.kernel, .userSpace]

        @Test(arguments: paths) func peerFlowsCountLikeLocalOnes(path: InstallPath) async throws {
            let dp = try await load()
            defer { Task { await dp.close() } }
            try await dp.install(service(.leastConnections), slot: 0, hashSeed: 1)
            func record(_ port: UInt16, _ state: ConnectionState, flags: ConnectionFlags = []) -> FlowRecord {
                FlowRecord(key: tuple(port), translated: FlowTuple(source: Self.vip, destination: Self.ep2.ip, sourcePort: port,
                                                                  destinationPort: 80, proto: 6),
                           natMode: .fullnat, state: state, flags: flags, endpointIndex: 1, ageMilliseconds: 1000,
                           remainingMilliseconds: 60_000)
            }
            // An owner's bookkeeping bit in the record changes nothing here.
            for (i, state) in [ConnectionState.established, .established, .finWait].enumerated() {
                try dp.installReplicated(record(45_000 + UInt16(i), state, flags: ConnectionFlags(rawValue: 0x10)), serviceSlot: 0,
                                         endpointIndex: 1, timeouts: Timeouts(), path: path)
            }
            #expect(dp.endpointActiveConnections(slot: 0, count: 2) == [0, 3])
            // Re-installs (refresh, state change) keep one count; the end gives it back.
            try dp.installReplicated(record(45_000, .established), serviceSlot: 0, endpointIndex: 1, timeouts: Timeouts(), path: path)
            #expect(dp.endpointActiveConnections(slot: 0, count: 2) == [0, 3])
            try dp.installReplicated(record(45_002, .timeWait), serviceSlot: 0, endpointIndex: 1, timeouts: Timeouts(), path: path)
            try dp.installReplicated(record(45_002, .timeWait), serviceSlot: 0, endpointIndex: 1, timeouts: Timeouts(), path: path)
            #expect(dp.endpointActiveConnections(slot: 0, count: 2) == [0, 2])
            // A node that takes over sends new clients to the endpoint its peer left idle.
            _ = try dp.testRun(packet: Packets.frame(tuple(45_100), tcpFlags: .syn))
            #expect(endpointIndex(dp, tuple(45_100)) == 0)
            #expect(dp.removeConnection(tuple(45_001)))
            #expect(dp.endpointActiveConnections(slot: 0, count: 2) == [1, 1])
            // A flow of a service this node does not have counts nowhere.
            try dp.installReplicated(record(45_200, .established), serviceSlot: UInt32(TDM_MAX_SERVICES), endpointIndex: 1,
                                     timeouts: Timeouts(), path: path)
            #expect(dp.endpointActiveConnections(slot: 0, count: 2) == [1, 1])
        }

        /// SYN, SYN-ACK, ACK through the program: an ESTABLISHED connection.
        func establish(_ dp: Datapath, _ t: FlowTuple) throws {
            let out = try #require(Packets.parse(try dp.testRun(packet: Packets.frame(t, tcpFlags: .syn)).packet))
            _ = try dp.testRun(packet: Packets.frame(out.tuple.reversed, tcpFlags: [.syn, .ack]))
            _ = try dp.testRun(packet: Packets.frame(t, tcpFlags: .ack))
        }

        @Test func serviceIdleTimeoutExpiresItsConnectionsNotOthers() async throws {
            let dp = try await load() // node defaults: established 6 h, UDP 30 s / 120 s
            defer { Task { await dp.close() } }
            try await dp.install(service(idleTimeout: 2), slot: 0, hashSeed: 1)
            try await dp.install(service(port: 56003), slot: 1, hashSeed: 1)
            let udp = Service(key: ServiceKey(vip: Self.vip, port: 56004, proto: .udp), mode: .fullnat, endpoints: [Self.ep1],
                              idleTimeout: 2)
            try await dp.install(udp, slot: 2, hashSeed: 1)
            let short = tuple(47_000), other = FlowTuple(source: IPv4Address(10, 0, 20, 10), destination: Self.vip, sourcePort: 47_001,
                                                          destinationPort: 56003, proto: 6)
            let handshake = tuple(47_002) // SYN_SENT: the node's 60 s, not the service's
            let datagram = FlowTuple(source: IPv4Address(10, 0, 20, 10), destination: Self.vip, sourcePort: 47_003,
                                     destinationPort: 56004, proto: 17)
            try establish(dp, short)
            try establish(dp, other)
            _ = try dp.testRun(packet: Packets.frame(handshake, tcpFlags: .syn))
            _ = try dp.testRun(packet: Packets.frame(datagram))
            #expect(dp.connectionEntries().first { $0.key == short }?.state == .established)
            try await Task.sleep(for: .milliseconds(1000))
            #expect(dp.reapInKernel() == 0, "not yet: 1 s of 2")
            try await Task.sleep(for: .milliseconds(1500))
            // The Swift fallback reaper, given the datapath's timeouts, agrees with the kernel.
            let entries = dp.connectionEntries()
            let swift = ConnectionReaper(timeouts: dp.effectiveTimeouts(Timeouts())).expired(in: entries)
            #expect(Set(swift.events.map(\.key)) == [short, datagram])
            let otherConn = try #require(Connection.join(entries).first { $0.original.key == other })
            #expect(!otherConn.isExpired(timeouts: dp.effectiveTimeouts(Timeouts())))
            #expect(dp.reapInKernel() == 2, "the service's idle TCP and UDP connections, at 2 s")
            let left = Set(dp.connectionEntries().filter { $0.direction == .original }.map(\.key))
            #expect(left == [other, handshake])

            // Replicated: the owner's remaining time counts down from the service's timeout here too.
            let r = FlowRecord(key: tuple(47_100), translated: FlowTuple(source: Self.vip, destination: Self.ep1.ip, sourcePort: 47_100,
                                                                       destinationPort: 80, proto: 6),
                               natMode: .fullnat, state: .established, flags: [], endpointIndex: 0, ageMilliseconds: 5000,
                               remainingMilliseconds: 500)
            try dp.installReplicated(r, serviceSlot: 0, endpointIndex: 0, timeouts: Timeouts())
            let idle = try #require(dp.connectionEntries().first { $0.key == r.key }).idleSeconds
            #expect(idle > 1.3 && idle < 1.8, "2 s - 0.5 s left: \(idle)")
            try await Task.sleep(for: .milliseconds(700))
            #expect(dp.reapInKernel() == 1, "gone when the owner's copy would be")

            // A packet on an expired connection finds it gone (TC's own check) and opens a new one.
            try establish(dp, tuple(47_200))
            try await Task.sleep(for: .milliseconds(2200))
            let before = dp.stats().expiredReused
            _ = try dp.testRun(packet: Packets.frame(tuple(47_200), tcpFlags: .ack))
            #expect(dp.stats().expiredReused == before + 1)

            // Uninstalled: leftovers fall back to the node's timeouts.
            await dp.uninstall(service().key, slot: 0)
            #expect(dp.effectiveTimeouts(Timeouts()).perService[0] == nil)
            #expect(dp.effectiveTimeouts(Timeouts()).perService[2] == 2)
        }
    }
}
