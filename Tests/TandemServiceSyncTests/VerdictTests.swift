import Testing
import TandemCore
import TandemServiceSync
import TandemSyncWire

/// Which verdicts a node's datapath follows (proto/SPEC.md §14.5), without I/O: the clocks are
/// passed in.
@Suite struct ClusterVerdictTests {
    static let web = ServiceKey(vip: IPv4Address(10, 0, 10, 143), port: 80, proto: .tcp)
    static let dns = ServiceKey(vip: IPv4Address(10, 0, 10, 143), port: 53, proto: .udp)
    static let ep1 = EndpointRef(IPv4Address(10, 0, 10, 21), 80)
    static let ep2 = EndpointRef(IPv4Address(10, 0, 10, 22), 80)
    static let eps = [ep1, ep2]
    static let master: UInt32 = 1
    static let backup: UInt32 = 2
    static let s: UInt64 = 1_000_000_000

    static func node(_ id: UInt32) -> ClusterVerdicts {
        var n = ClusterVerdicts(selfID: id)
        n.setServed([web: eps, dns: [EndpointRef(IPv4Address(10, 0, 10, 21), 53)]], nowMicros: 1_000)
        return n
    }

    /// What the exchange does: the receiver gets the sender's published set.
    static func deliver(_ from: ClusterVerdicts, to: inout ClusterVerdicts, epoch: UInt64 = 1, at nanos: UInt64)
        -> ClusterVerdicts.Received
    {
        to.receive(from.published(), from: from.selfID, epoch: epoch, nowNanos: nanos, nowMicros: 5_000_000)
    }

    @Test func aBackupFollowsAFreshMastersVerdictEvenWhenItsOwnProbesDisagree() {
        var m = Self.node(Self.master)
        var b = Self.node(Self.backup)
        let r1 = m.setProbe(Self.web, Self.ep1, down: true, atMicros: 2_000, nowMicros: 2_000)
        #expect(r1)
        let r2 = Self.deliver(m, to: &b, at: 10 * Self.s)
        #expect(r2 == .accepted(hostsChanged: []))
        let e = b.effective(Self.web, endpoints: Self.eps, master: Self.master, nowNanos: 11 * Self.s)
        #expect(e.source == .peer(Self.master) && e.downSet == [Self.ep1])
        #expect(e.down[Self.ep1]?.sinceMicros == 2_000 && e.down[Self.ep1]?.reasons == [.probe])
        // Its own view is unchanged and still shown.
        #expect(b.ownDown(Self.web, endpoints: Self.eps).isEmpty)
        // The master itself, and a node that knows no master, use their own.
        #expect(m.effective(Self.web, endpoints: Self.eps, master: Self.master, nowNanos: 11 * Self.s).source == .own)
        #expect(b.effective(Self.web, endpoints: Self.eps, master: nil, nowNanos: 11 * Self.s).downSet.isEmpty)
        // A MASTER's up verdict is mirrored too: the backup's own down does not take over.
        b.setProbe(Self.web, Self.ep2, down: true, atMicros: 3_000, nowMicros: 3_000)
        #expect(b.effective(Self.web, endpoints: Self.eps, master: Self.master, nowNanos: 11 * Self.s).downSet == [Self.ep1])
    }

    @Test func bothNodesBuildTheSameMaglevTable() {
        var m = Self.node(Self.master)
        var b = Self.node(Self.backup)
        m.setProbe(Self.web, Self.ep2, down: true, atMicros: 2_000, nowMicros: 2_000)
        _ = Self.deliver(m, to: &b, at: Self.s)
        let endpoints = [Endpoint(ip: Self.ep1.address, port: 80), Endpoint(ip: Self.ep2.address, port: 80)]
        func table(_ n: ClusterVerdicts) -> [UInt8] {
            let down = n.effective(Self.web, endpoints: Self.eps, master: Self.master, nowNanos: 2 * Self.s).downSet
            return Maglev.table(endpoints: endpoints, seed: 99,
                                down: Set(endpoints.indices.filter { down.contains(EndpointRef(endpoints[$0])) }))
        }
        #expect(table(m) == table(b))
        #expect(table(m) != Maglev.table(endpoints: endpoints, seed: 99))
    }

    @Test func aStaleOrSilentMastersSetGivesWayToOwnVerdicts() {
        var m = Self.node(Self.master)
        var b = Self.node(Self.backup)
        m.setProbe(Self.web, Self.ep1, down: true, atMicros: 2_000, nowMicros: 2_000)
        _ = Self.deliver(m, to: &b, at: 10 * Self.s)
        #expect(b.effective(Self.web, endpoints: Self.eps, master: Self.master, nowNanos: 16 * Self.s).source == .peer(Self.master))
        #expect(b.effective(Self.web, endpoints: Self.eps, master: Self.master, nowNanos: 16 * Self.s + 1).source == .own)
        // The same set again refreshes it without counting as new.
        let r3 = Self.deliver(m, to: &b, at: 15 * Self.s)
        #expect(r3 == .outdated)
        #expect(b.effective(Self.web, endpoints: Self.eps, master: Self.master, nowNanos: 20 * Self.s).source == .peer(Self.master))
        #expect(b.counters.received == 1 && b.counters.outdated == 1)
    }

    @Test func aServiceTheMasterDoesNotServeKeepsOwnVerdicts() {
        var m = ClusterVerdicts(selfID: Self.master)
        m.setServed([Self.web: Self.eps], nowMicros: 1_000)
        var b = Self.node(Self.backup)
        let dnsEp = [EndpointRef(IPv4Address(10, 0, 10, 21), 53)]
        b.setProbe(Self.dns, dnsEp[0], down: true, atMicros: 2_000, nowMicros: 2_000)
        _ = Self.deliver(m, to: &b, at: Self.s)
        let e = b.effective(Self.dns, endpoints: dnsEp, master: Self.master, nowNanos: Self.s)
        #expect(e.source == .own && e.downSet == Set(dnsEp))
        // Listed with nothing down: mirrored as "all in rotation".
        #expect(b.effective(Self.web, endpoints: Self.eps, master: Self.master, nowNanos: Self.s).source == .peer(Self.master))
    }

    @Test func endpointsTheLocalServiceLacksAreIgnored() {
        var m = ClusterVerdicts(selfID: Self.master)
        let other = EndpointRef(IPv4Address(10, 0, 10, 23), 80)
        m.setServed([Self.web: Self.eps + [other]], nowMicros: 1_000)
        m.setProbe(Self.web, other, down: true, atMicros: 2_000, nowMicros: 2_000)
        var b = Self.node(Self.backup)
        _ = Self.deliver(m, to: &b, at: Self.s)
        let e = b.effective(Self.web, endpoints: Self.eps, master: Self.master, nowNanos: Self.s)
        #expect(e.source == .peer(Self.master) && e.down.isEmpty)
    }

    @Test func olderSetsAreIgnoredButARestartedSenderIsTaken() {
        var m = Self.node(Self.master)
        var b = Self.node(Self.backup)
        m.setProbe(Self.web, Self.ep1, down: true, atMicros: 2_000, nowMicros: 2_000)
        let first = m.published()
        m.setProbe(Self.web, Self.ep1, down: false, atMicros: 3_000, nowMicros: 3_000)
        let second = m.published()
        #expect(second.generation > first.generation)
        let r4 = b.receive(second, from: Self.master, epoch: 1, nowNanos: Self.s, nowMicros: 4_000)
        #expect(r4 == .accepted(hostsChanged: []))
        // A reordered exchange delivers the older one afterwards: nothing changes.
        let r5 = b.receive(first, from: Self.master, epoch: 1, nowNanos: Self.s, nowMicros: 4_000)
        #expect(r5 == .outdated)
        #expect(b.effective(Self.web, endpoints: Self.eps, master: Self.master, nowNanos: Self.s).down.isEmpty)
        // After a restart (a newer epoch) a set is taken whatever its generation.
        let r6 = b.receive(first, from: Self.master, epoch: 2, nowNanos: Self.s, nowMicros: 4_000)
        #expect(r6 == .accepted(hostsChanged: []))
        #expect(b.effective(Self.web, endpoints: Self.eps, master: Self.master, nowNanos: Self.s).downSet == [Self.ep1])
    }

    @Test func hostStatesMergeNewestWriteWinsAndRedTakesEndpointsOut() {
        var a = Self.node(1)
        var b = Self.node(2)
        let red = a.setHostLocal(Self.ep1.address, .red, nowMicros: 10_000)
        #expect(red.origin == 1 && red.version == 10_000)
        // Every endpoint at the host, in every service, with the host state as the reason.
        let own = a.ownDown(Self.web, endpoints: Self.eps)
        #expect(own[Self.ep1]?.reasons == [.hostState] && own[Self.ep1]?.sinceMicros == 10_000)
        #expect(a.ownDown(Self.dns, endpoints: [EndpointRef(Self.ep1.address, 53)]).count == 1)
        guard case .accepted(let changed) = Self.deliver(a, to: &b, at: Self.s) else { Issue.record("not taken"); return }
        #expect(changed == [Self.ep1.address])
        #expect(b.ownDown(Self.web, endpoints: Self.eps).keys.sorted() == [Self.ep1])
        // A later green through b clears it on both.
        b.setHostLocal(Self.ep1.address, .green, nowMicros: 20_000)
        #expect(b.hosts[Self.ep1.address]?.version ?? 0 > red.version)
        _ = a.receive(b.published(), from: 2, epoch: 1, nowNanos: Self.s, nowMicros: 21_000)
        #expect(a.ownDown(Self.web, endpoints: Self.eps).isEmpty)
        // An older write arriving late changes nothing; equal versions go to the higher origin.
        let r7 = a.mergeHosts([red], nowMicros: 22_000)
        #expect(r7.isEmpty)
        let tie = HostVerdict(host: Self.ep2.address, state: .red, version: 30_000, origin: 1)
        let tieHigher = HostVerdict(host: Self.ep2.address, state: .yellow, version: 30_000, origin: 3)
        let r8 = a.mergeHosts([tieHigher], nowMicros: 30_000)
        #expect(r8 == [Self.ep2.address])
        let r9 = a.mergeHosts([tie], nowMicros: 30_000)
        #expect(r9.isEmpty)
        #expect(a.hosts[Self.ep2.address]?.state == .yellow)
        // The next local write outranks everything seen.
        let r10 = a.setHostLocal(Self.ep2.address, .red, nowMicros: 1)
        #expect(r10.version > 30_000)
    }

    @Test func hostStatesAreCapped() {
        var a = ClusterVerdicts(selfID: 1)
        a.maxHosts = 2
        let list = (1...3).map { HostVerdict(host: IPv4Address(10, 0, 0, UInt8($0)), state: .red, version: 5, origin: 2) }
        let r11 = a.mergeHosts(list, nowMicros: 1)
        #expect(r11.count == 2)
        #expect(a.counters.hostStatesOverCap == 1)
    }

    @Test func thePublishedSetListsEveryServiceAndChangesOnlyWithItsContent() {
        var a = Self.node(1)
        let g0 = a.published().generation
        #expect(a.published().services.map(\.key) == [Self.dns, Self.web].sorted())
        #expect(a.published().services.allSatisfy { $0.down.isEmpty })
        let r12 = a.setProbe(Self.web, Self.ep1, down: false, atMicros: 5, nowMicros: 5)
        #expect(!r12, "already up")
        #expect(a.published().generation == g0)
        let r13 = a.setProbe(Self.web, Self.ep2, down: true, atMicros: 5, nowMicros: 5)
        #expect(r13)
        let r14 = a.setProbe(Self.web, Self.ep2, down: true, atMicros: 6, nowMicros: 6)
        #expect(!r14, "already down")
        let g1 = a.published().generation
        #expect(g1 > g0)
        #expect(a.published().services.first { $0.key == Self.web }?.down.map(\.identity) == ["10.0.10.22:80"])
        // An endpoint removed from the service takes its verdict with it.
        let r15 = a.setServed([Self.web: [Self.ep1]], nowMicros: 7)
        #expect(r15)
        #expect(a.probeDown.isEmpty && a.published().generation > g1)
        let r16 = a.setServed([Self.web: [Self.ep1]], nowMicros: 8)
        #expect(!r16)
    }

    @Test func aLargeSetSplitsIntoPartsThatAssembleBack() throws {
        let services = (0..<256).map { i in
            ServiceVerdict(key: ServiceKey(vip: IPv4Address(UInt32(0xc633_6400 + i)), port: 80, proto: .tcp),
                           down: (0..<64).map { DownEndpoint(address: IPv4Address(UInt32(0x0a00_0001 + $0)), port: 80,
                                                             reasons: [.probe], sinceMicros: 1) })
        }
        let hosts = (0..<16384).map { HostVerdict(host: IPv4Address(UInt32(0x0b00_0000 + $0)), state: .red, version: 1, origin: 1) }
        let set = VerdictSet(generation: 42, services: services, hosts: hosts)
        let parts = set.parts()
        #expect(parts.count <= SyncWire.maxVerdictParts)
        #expect(parts.enumerated().allSatisfy { Int($1.part) == $0 && $1.more == ($0 < parts.count - 1) })
        var assembler = VerdictAssembler()
        var got: VerdictSet?
        for p in parts {
            let m = SyncMessage.endpointVerdicts(p)
            #expect(SyncCodec.payloadSize(m) <= SyncChannel.config.maxPayload)
            guard case .endpointVerdicts(let decoded) = try SyncCodec.decodePayload(type: .endpointVerdicts,
                                                                                    SyncCodec.encodePayload(m)) else { continue }
            got = try assembler.add(decoded)
        }
        #expect(got == set)
        // An empty set is one empty part.
        #expect(VerdictSet(generation: 1, services: [], hosts: []).parts().count == 1)
    }

    @Test func partsOutOfOrderOrOfAnotherSetAreRefused() throws {
        let services = (0..<80).map { i in
            ServiceVerdict(key: ServiceKey(vip: IPv4Address(UInt32(0xc633_6400 + i)), port: 80, proto: .tcp),
                           down: (0..<64).map { DownEndpoint(address: IPv4Address(UInt32(0x0a00_0001 + $0)), port: 80,
                                                             reasons: [.probe], sinceMicros: 1) })
        }
        let parts = VerdictSet(generation: 9, services: services, hosts: []).parts()
        #expect(parts.count == 2)
        var a = VerdictAssembler()
        #expect(throws: VerdictAssemblyError.self) { _ = try a.add(parts[1]) }
        var b = VerdictAssembler()
        _ = try b.add(parts[0])
        var other = parts[1]
        other.generation = 10
        #expect(throws: VerdictAssemblyError.self) { _ = try b.add(other) }
        var c = VerdictAssembler()
        _ = try c.add(parts[0])
        var repeated = parts[1]
        repeated.services[0] = parts[0].services[0]
        #expect(throws: VerdictAssemblyError.self) { _ = try c.add(repeated) }
    }
}
