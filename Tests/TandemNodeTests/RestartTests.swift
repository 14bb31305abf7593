import Testing
import TandemCore
import TandemDatapath
@testable import TandemNode

/// The pure parts of a hitless restart: whether pins are adopted, whether a resume record still
/// counts, where the pins live, and that a restored service gets its old slot back.
@Suite struct RestartTests {
    @Test("pins are adopted only with the same layout version and fingerprint")
    func adoptionRule() {
        #expect(DatapathAdoption.decide(pinnedFingerprint: nil, pinnedLayoutVersion: nil, otherPins: false,
                                        fingerprint: 1, layoutVersion: 1) == .fresh)
        #expect(DatapathAdoption.decide(pinnedFingerprint: 7, pinnedLayoutVersion: 1, otherPins: true,
                                        fingerprint: 7, layoutVersion: 1) == .adopted)
        guard case .refused(let why) = DatapathAdoption.decide(pinnedFingerprint: 7, pinnedLayoutVersion: 1, otherPins: true,
                                                                fingerprint: 8, layoutVersion: 1) else {
            Issue.record("a changed fingerprint was adopted")
            return
        }
        #expect(why.contains("0000000000000007") && why.contains("0000000000000008"))
        guard case .refused(let v) = DatapathAdoption.decide(pinnedFingerprint: 7, pinnedLayoutVersion: 2, otherPins: true,
                                                              fingerprint: 7, layoutVersion: 3) else {
            Issue.record("a changed layout version was adopted")
            return
        }
        #expect(v.contains("version 2") && v.contains("needs 3"))
        // Maps without a layout record: a first start that died half-way; never adopted.
        if case .refused = DatapathAdoption.decide(pinnedFingerprint: nil, pinnedLayoutVersion: nil, otherPins: true,
                                                   fingerprint: 7, layoutVersion: 1) {} else {
            Issue.record("pins without tdm_meta were not refused")
        }
    }

    @Test("a resume record counts only within the peers' restart hold")
    func resumeFreshness() {
        let r = GracefulExitRecord(exitedAtMicros: 1_000_000, incarnation: 5, instances: [])
        #expect(r.isFresh(nowMicros: 1_000_000, holdMicros: 10_000_000))
        #expect(r.isFresh(nowMicros: 10_999_999, holdMicros: 10_000_000))
        #expect(!r.isFresh(nowMicros: 11_000_000, holdMicros: 10_000_000))
        #expect(!r.isFresh(nowMicros: 999_999, holdMicros: 10_000_000), "a clock that went back proves nothing")
    }

    @Test("one pin directory per node instance, with no dot in its name (bpffs refuses them)")
    func pinDirectoryName() {
        let ip = IPv4Address("10.0.10.141")!
        #expect(NodeRunner.pinDirectory(base: nil, interface: "eth0", nodeIP: ip) == "/sys/fs/bpf/tandem/eth0-10_0_10_141")
        #expect(NodeRunner.pinDirectory(base: "/run/x", interface: "ens3.100", nodeIP: ip) == "/run/x/ens3_100-10_0_10_141")
    }

    @Test("cluster.restartHoldSeconds: 1-300, default 10 s")
    func restartHold() throws {
        let base = "interfaces: [eth0]\ncluster:\n  peers: [10.0.0.2]\n  keyFile: /k\n"
        #expect(try NodeConfig.parse(yaml: base).ha(interfaces: ["eth0"])?.restartHoldNanos == 10_000_000_000)
        #expect(try NodeConfig.parse(yaml: base + "  restartHoldSeconds: 2.5\n").ha(interfaces: ["eth0"])?.restartHoldNanos
            == 2_500_000_000)
        #expect(throws: ConfigError.self) { try NodeConfig.parse(yaml: base + "  restartHoldSeconds: 0\n").ha(interfaces: ["eth0"]) }
        #expect(throws: ConfigError.self) { try NodeConfig.parse(yaml: base + "  restartHoldSeconds: 301\n").ha(interfaces: ["eth0"]) }
        let c = try NodeConfig.parse(yaml: "interfaces: [eth0]\npersistDatapath: true\npinDirectory: /run/pins\n")
        #expect(c.persistDatapath == true && c.pinDirectory == "/run/pins")
    }

    @Test("a service restored onto an adopted datapath takes its old slot, if free")
    func preferredSlot() throws {
        func svc(_ port: UInt16) -> Service {
            Service(key: ServiceKey(vip: IPv4Address("10.0.0.1")!, port: port, proto: .tcp), mode: .fullnat, selection: .roundRobin,
                    endpoints: [Endpoint(ip: IPv4Address("10.0.1.1")!, port: 80)])
        }
        var t = ServiceTable()
        #expect(try t.add(svc(1), preferredSlot: 17) == 17)
        #expect(try t.add(svc(2)) == 0)
        #expect(try t.add(svc(3), preferredSlot: 17) == 1, "taken: the next free one")
        #expect(try t.add(svc(4), preferredSlot: 0) == 2, "taken: the next free one")
    }
}

@Suite struct ExitRequestTests {
    @Test("SIGTERM keeps a persisted datapath; SIGINT or --release release it, and a release stands")
    func exitModes() {
        let persisted = ExitRequest(persist: true)
        #expect(!persisted.release)
        persisted.request(release: false)  // SIGTERM, tandem node stop
        #expect(!persisted.release)
        persisted.request(release: true)   // SIGINT, --release
        #expect(persisted.release)
        persisted.request(release: false)  // systemd's SIGTERM after an ExecStop that sent SIGINT
        #expect(persisted.release)
        let plain = ExitRequest(persist: false)
        #expect(plain.release)
        plain.request(release: false)
        #expect(plain.release, "without pins there is nothing to keep")
    }
}
