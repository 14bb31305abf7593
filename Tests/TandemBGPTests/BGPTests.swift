import Foundation
import TandemBGP
import TandemCore
import Testing

private let vip1 = IPv4Address(10, 0, 10, 143)
private let vip2 = IPv4Address(10, 0, 10, 144)

private func settings(mode: BGPMode = .activeActive, bfd: Bool = false, multihop: Int? = nil) -> BGPSettings {
    BGPSettings(asn: 65001, routerID: IPv4Address(10, 0, 10, 141), sourceAddress: IPv4Address(10, 0, 10, 141), mode: mode,
                neighbors: [BGPNeighbor(address: IPv4Address(10, 0, 10, 1), asn: 65000, password: "s3cret", multihop: multihop),
                            BGPNeighbor(address: IPv4Address(10, 0, 10, 2), asn: 65000, port: 1179)],
                holdSeconds: 3, bfd: bfd, communities: [BGPCommunity("65000:100")!, BGPCommunity("65000:1:2")!])
}

@Suite struct BIRDConfigTests {
    @Test func rendersOneSessionPerNeighbourAndOneFilterClausePerRoute() {
        let text = BIRDConfig.render(settings(), routes: [BGPRoute(vip: vip2, attributes: .backup),
                                                         BGPRoute(vip: vip1, attributes: BGPAttributes(localPref: 5000, med: 10, prepend: 2))],
                                     logFile: "/run/x/bird.log")
        #expect(text.contains("router id 10.0.10.141;"))
        #expect(text.contains("  route 10.0.10.143/32 blackhole;\n  route 10.0.10.144/32 blackhole;"))
        #expect(text.contains("if net = 10.0.10.143/32 then { bgp_local_pref = 5000; bgp_med = 10; bgp_path.prepend(65001); bgp_path.prepend(65001); bgp_community.add((65000,100)); bgp_large_community.add((65000,1,2)); accept; }"))
        #expect(text.contains("if net = 10.0.10.144/32 then { bgp_local_pref = 100; bgp_med = 20; bgp_community"))
        #expect(text.contains("protocol bgp tandem_n0 {\n  local 10.0.10.141 as 65001;\n  neighbor 10.0.10.1 port 179 as 65000;"))
        #expect(text.contains("  neighbor 10.0.10.2 port 1179 as 65000;"))
        #expect(text.contains("  password \"s3cret\";"))
        #expect(text.contains("  hold time 3;\n  keepalive time 1;"))
        #expect(text.contains("import none;"))
        #expect(!text.contains("protocol kernel"))
        #expect(!text.contains("bfd"))
    }

    @Test func theSameInputsRenderTheSameText() {
        let a = BIRDConfig.render(settings(), routes: [BGPRoute(vip: vip1, attributes: .primary), BGPRoute(vip: vip2, attributes: .primary)], logFile: "l")
        let b = BIRDConfig.render(settings(), routes: [BGPRoute(vip: vip2, attributes: .primary), BGPRoute(vip: vip1, attributes: .primary)], logFile: "l")
        #expect(a == b)
    }

    @Test func bfdAddsItsProtocolAndMultihopSessions() {
        let text = BIRDConfig.render(settings(bfd: true, multihop: 2), routes: [], logFile: "l")
        #expect(text.contains("protocol bfd tandem_bfd {"))
        #expect(text.contains("interface \"*\" { interval 100 ms; multiplier 3; };"))
        #expect(text.contains("multihop { interval 100 ms; multiplier 3; };"))
        #expect(text.contains("  multihop 2;"))
        #expect(text.contains("  bfd on;"))
    }

    /// BIRD itself parses what we render (`bird -p`).
    @Test func birdAcceptsTheRenderedConfig() throws {
        try #require(FileManager.default.isExecutableFile(atPath: "/usr/sbin/bird"), "BIRD 2 is missing: scripts/deps.sh installs it")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tandem-bgp-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        for s in [settings(), settings(mode: .masterBackup, bfd: true, multihop: 3)] {
            let file = dir.appendingPathComponent("bird.conf")
            try BIRDConfig.render(s, routes: [BGPRoute(vip: vip1, attributes: BGPAttributes(localPref: 1, med: 2, prepend: 1))],
                                  logFile: dir.appendingPathComponent("bird.log").path)
                .write(to: file, atomically: true, encoding: .utf8)
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/sbin/bird")
            p.arguments = ["-p", "-c", file.path]
            let pipe = Pipe()
            p.standardError = pipe
            try p.run()
            p.waitUntilExit()
            let err = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(p.terminationStatus == 0, "bird -p: \(err)")
        }
    }
}

@Suite struct BIRDReplyTests {
    @Test func parsesContinuationsAndTheFinalLine() throws {
        var p = BIRDReplyParser()
        #expect(try p.feed("0001 BIRD 2.0.12 ready.") == BIRDReply(lines: [.init(code: 1, text: "BIRD 2.0.12 ready.")], code: 1))
        #expect(try p.feed("0002-Reading configuration from /run/x/bird.conf") == nil)
        let r = try #require(try p.feed("0003 Reconfigured"))
        #expect(r.code == 3)
        #expect(!r.isError)
        #expect(r.lines.count == 2)
    }

    @Test func errorsAreCodesFrom8000() throws {
        var p = BIRDReplyParser()
        let r = try #require(try p.feed("8002 /run/x/bird.conf:3:1 syntax error"))
        #expect(r.isError)
        #expect(r.text.contains("syntax error"))
    }

    @Test func showProtocolsRows() throws {
        var p = BIRDReplyParser()
        let lines = [
            "2002-Name       Proto      Table      State  Since         Info",
            "1002-device1    Device     ---        up     2026-12-04T21:00:00  ",
            " tandem_vips Static     master4    up     2026-12-04T21:00:00  ",
            " tandem_n0  BGP        ---        up     2026-12-04T21:00:01  Established   ",
            " tandem_n1  BGP        ---        start  2026-12-04T21:00:00  Active        Socket: Connection refused",
            "0000 ",
        ]
        var reply: BIRDReply?
        for l in lines { reply = try p.feed(l) ?? reply }
        let rows = BIRDProtocolRow.parse(try #require(reply))
        #expect(rows.map(\.name) == ["device1", "tandem_vips", "tandem_n0", "tandem_n1"])
        #expect(rows[2].state == "up" && rows[2].info == "Established")
        #expect(rows[3].state == "start" && rows[3].info == "Active Socket: Connection refused")
    }

    @Test func malformedLinesAreErrorsNotCrashes() {
        for bad in ["", "12", "abcd efg", "00x1 hi", " continuation first", "0001?x"] {
            var p = BIRDReplyParser()
            #expect(throws: BIRDReplyParser.ParseError.self) { _ = try p.feed(bad) }
        }
    }
}

@Suite struct BGPValuesTests {
    @Test func communities() {
        #expect(BGPCommunity("65000:100") == .standard(65000, 100))
        #expect(BGPCommunity("4200000000:1:2") == .large(4_200_000_000, 1, 2))
        for bad in ["", "65536:1", "1", "1:2:3:4", "a:b", "1:", ":1"] { #expect(BGPCommunity(bad) == nil, "\(bad)") }
    }

    @Test func passwords() {
        #expect(BGPSettings.isValidPassword("abc-DEF_123 !"))
        for bad in ["", "a\"b", "a\\b", "line\nbreak", String(repeating: "x", count: 81), "é"] {
            #expect(!BGPSettings.isValidPassword(bad), "\(bad)")
        }
    }
}

@Suite struct AnnouncementCoreTests {
    let now: UInt64 = 1_000_000_000

    @Test func activeActiveAnnouncesServingVIPsOnceInSync() {
        var core = AnnouncementCore(mode: .activeActive)
        let vips = [vip1: AnnouncementCore.VIPState(serving: true), vip2: AnnouncementCore.VIPState(serving: false)]
        // Not in sync: a joining node announces nothing.
        #expect(core.onInputs(.init(vips: vips, inSync: false), nowNanos: now) == .apply([]))
        core.onApplied([], ok: true, nowNanos: now)
        #expect(core.onInputs(.init(vips: vips, inSync: false), nowNanos: now) == nil)
        let want = [BGPRoute(vip: vip1, attributes: .primary)]
        #expect(core.onInputs(.init(vips: vips, inSync: true), nowNanos: now) == .apply(want))
        // Asked once while it is with the speaker.
        #expect(core.onInputs(.init(vips: vips, inSync: true), nowNanos: now) == nil)
        core.onApplied(want, ok: true, nowNanos: now)
        #expect(core.announced == want)
        #expect(core.onInputs(.init(vips: vips, inSync: true), nowNanos: now) == nil)
    }

    @Test func allEndpointsDownWithdrawsAndDrainWithdrawsEverything() {
        var core = AnnouncementCore(mode: .activeActive)
        let up = [vip1: AnnouncementCore.VIPState(serving: true)]
        core.onApplied([BGPRoute(vip: vip1, attributes: .primary)], ok: true, nowNanos: now)
        #expect(core.onInputs(.init(vips: up, inSync: true), nowNanos: now) == nil)
        #expect(core.onInputs(.init(vips: [vip1: .init(serving: false)], inSync: true), nowNanos: now) == .apply([]))
        core.onApplied([], ok: true, nowNanos: now)
        #expect(core.onInputs(.init(vips: up, inSync: true, draining: true), nowNanos: now) == nil)
        #expect(core.onInputs(.init(vips: up, inSync: true), nowNanos: now) == .apply([BGPRoute(vip: vip1, attributes: .primary)]))
    }

    @Test func masterBackupAttributes() {
        let core = AnnouncementCore(mode: .masterBackup)
        let vips = [vip1: AnnouncementCore.VIPState(serving: true, primary: true),
                    vip2: AnnouncementCore.VIPState(serving: true, primary: false)]
        #expect(core.desired(.init(vips: vips, inSync: true)) ==
                [BGPRoute(vip: vip1, attributes: .primary), BGPRoute(vip: vip2, attributes: .backup)])
        // A BACKUP out of sync does not offer itself; a MASTER announces regardless.
        #expect(core.desired(.init(vips: vips, inSync: false)) == [BGPRoute(vip: vip1, attributes: .primary)])
    }

    @Test func sourceAddressesWaitForTheSyncAndTheOwnOneSurvivesADrain() {
        let own = IPv4Address(10, 0, 10, 201), peer = IPv4Address(10, 0, 10, 202)
        let core = AnnouncementCore(mode: .activeActive, snatAddress: own, peerSNATAddresses: [peer])
        let vips = [vip1: AnnouncementCore.VIPState(serving: true)]
        #expect(core.desired(.init(vips: vips, inSync: false)) == [])
        #expect(core.desired(.init(vips: vips, inSync: true)) ==
                [BGPRoute(vip: vip1, attributes: .primary), BGPRoute(vip: own, attributes: .primary),
                 BGPRoute(vip: peer, attributes: .backup)])
        // Withdrawn VIP and peers' addresses; its own flows still get their replies.
        #expect(core.desired(.init(vips: vips, inSync: true, draining: true)) == [BGPRoute(vip: own, attributes: .primary)])
        // Every endpoint down: the VIP goes, the source addresses stay (established flows).
        #expect(core.desired(.init(vips: [vip1: .init(serving: false)], inSync: true)).map(\.vip) == [own, peer])
    }

    @Test func aRefusedSetIsRetriedAfterTheBackoff() {
        var core = AnnouncementCore(mode: .activeActive, retryNanos: 1_000)
        let inputs = AnnouncementCore.Inputs(vips: [vip1: .init(serving: true)], inSync: true)
        let want = [BGPRoute(vip: vip1, attributes: .primary)]
        #expect(core.onInputs(inputs, nowNanos: now) == .apply(want))
        core.onApplied(want, ok: false, nowNanos: now)
        #expect(core.failures == 1)
        #expect(core.onInputs(inputs, nowNanos: now + 999) == nil)
        #expect(core.onInputs(inputs, nowNanos: now + 1_000) == .apply(want))
        core.onApplied(want, ok: true, nowNanos: now + 1_001)
        #expect(core.failures == 0)
        #expect(core.announced == want)
    }
}
