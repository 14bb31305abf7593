import Foundation
import Logging
import Testing
@testable import TandemCore
@testable import TandemDatapath

extension Privileged {
    /// Hitless restart, at the datapath: pins on a bpffs of the test's own, adoption of a matching
    /// layout (the entries survive), refusal of another one, and release removing everything.
    @Suite(.timeLimit(.minutes(2))) struct Pinning {
        /// A fresh bpffs mounted under /tmp; unmounting it frees every pin it holds.
        final class BPFFS {
            let path: String
            init() throws {
                path = NSTemporaryDirectory() + "tdm-pins-" + UUID().uuidString.prefix(8).lowercased()
                try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
                let r = try run(["mount", "-t", "bpf", "bpf", path])
                guard r.ok else { throw TestFailure("mount bpffs: \(r.stderr)") }
            }
            deinit {
                _ = try? run(["umount", "-l", path])
                try? FileManager.default.removeItem(atPath: path)
            }
        }

        static let key = ServiceKey(vip: IPv4Address(10, 0, 10, 143), port: 56002, proto: .tcp)
        static let service = Service(key: key, mode: .fullnat, selection: .roundRobin,
                                     endpoints: [Endpoint(ip: IPv4Address(10, 0, 10, 21), port: 80)])

        func open(_ dir: String, tableSize: UInt32 = 4096) throws -> Datapath {
            try Datapath(objectPath: Env.bpfObject, connectionTableSize: tableSize, pinDirectory: dir, logger: Logger(label: "test"))
        }

        @Test func aMatchingLayoutIsAdoptedWithItsEntriesAndResumeRecord() async throws {
            let fs = try BPFFS()
            let dir = fs.path + "/eth0-10_0_10_141"
            let first = try open(dir)
            #expect(first.adoption == .fresh)
            try await first.install(Self.service, slot: 5, hashSeed: 1)
            try first.setActiveVIPs([Self.key.vip])
            try await first.setDownEndpoints(slot: 5, [0])
            let record = GracefulExitRecord(exitedAtMicros: 123, incarnation: 9,
                                              instances: [.init(id: 0xabcd, master: true, term: 4)])
            await first.close(release: false, resume: record)
            let pinned = try FileManager.default.contentsOfDirectory(atPath: dir)
            #expect(pinned.contains("tdm_ct") && pinned.contains("tdm_meta") && pinned.contains("tdm_services"))

            let second = try open(dir)
            #expect(second.adoption == .adopted)
            #expect(second.resumeRecord == record)
            #expect(second.installedServiceSlots() == [Self.key: 5], "the service and its slot survived")
            #expect(second.activeVIPs() == [Self.key.vip], "the VIP gate survived")
            #expect(second.heldDownEndpoints() == [Self.key: ["10.0.10.21:80"]], "the health verdict survived")
            await second.clearResumeRecord()
            await second.close(release: false)

            let third = try open(dir)
            #expect(third.adoption == .adopted)
            #expect(third.resumeRecord == nil, "a consumed resume record is not resumed twice")
            await third.close()
            #expect(!FileManager.default.fileExists(atPath: dir), "release removes the pins")
        }

        @Test func anotherLayoutIsRefusedAndReplaced() async throws {
            let fs = try BPFFS()
            let dir = fs.path + "/eth0-10_0_10_88"
            let first = try open(dir, tableSize: 4096)
            try await first.install(Self.service, slot: 2, hashSeed: 1)
            await first.close(release: false)
            // A different connection table size is a different map: not adoptable.
            let second = try open(dir, tableSize: 8192)
            guard case .refused(let why) = second.adoption else {
                Issue.record("a changed layout was adopted: \(second.adoption)")
                await second.close()
                return
            }
            #expect(why.contains("layout"))
            #expect(second.installedServiceSlots().isEmpty, "started empty")
            await second.close(release: false)
            let third = try open(dir, tableSize: 8192)
            #expect(third.adoption == .adopted, "the new layout's pins are adoptable in turn")
            await third.close()
        }

        @Test func aPinDirectoryOffBPFFSIsAClearError() throws {
            let dir = NSTemporaryDirectory() + "tdm-not-bpffs-" + UUID().uuidString.prefix(8).lowercased()
            #expect(throws: DatapathError.self) { _ = try open(dir) }
            #expect(!FileManager.default.fileExists(atPath: dir), "nothing was created")
        }
    }
}
