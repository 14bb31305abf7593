import Crypto
import Foundation
import Testing
import TandemCore
import TandemTestSupport
import TandemSync
import TandemSyncWire
import TandemSealing

/// The golden vectors in proto/vectors: the committed files are read and decoded on their own
/// (what another implementation would do), and must also be exactly what the generator produces
/// today (so the encoder has not drifted).
@Suite struct VectorTests {
    static let writing = ProcessInfo.processInfo.environment["TANDEM_WRITE_VECTORS"] == "1"

    /// Regenerates proto/vectors and the seed files of Fuzz/corpus.
    @Test(.enabled(if: writing)) func write() throws {
        for sub in ["proto/vectors/valid", "proto/vectors/invalid"] {
            let dir = Repo.root.appendingPathComponent(sub)
            try? FileManager.default.removeItem(at: dir)
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        }
        try FileManager.default.createDirectory(at: Repo.corpus, withIntermediateDirectories: true)
        for f in try VectorGenerator.files() {
            try Data(f.bytes).write(to: Repo.root.appendingPathComponent(f.path))
        }
    }

    @Test func committedVectorsMatchTheGenerator() throws {
        let generated = try VectorGenerator.files()
        for f in generated {
            let url = Repo.root.appendingPathComponent(f.path)
            let committed = try #require(FileManager.default.contents(atPath: url.path), "\(f.path) is missing")
            if f.path.hasSuffix(".json") {
                #expect(try Describe.canonical(String(decoding: committed, as: UTF8.self))
                        == Describe.canonical(String(decoding: f.bytes, as: UTF8.self)), "\(f.path)")
            } else {
                #expect(Array(committed) == f.bytes, "\(f.path)")
            }
        }
        // Nothing stale: every committed vector is still generated.
        let paths = Set(generated.map(\.path))
        for sub in ["valid", "invalid"] {
            for name in try FileManager.default.contentsOfDirectory(atPath: Repo.vectors.appendingPathComponent(sub).path) {
                #expect(paths.contains("proto/vectors/\(sub)/\(name)"), "stale vector \(sub)/\(name)")
            }
        }
    }

    // MARK: Reading the committed files

    static func json(_ url: URL) throws -> [String: Any] {
        let data = try Data(contentsOf: url)
        return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any], "\(url.path)")
    }

    static func hexFile(_ url: URL) throws -> [UInt8] {
        try #require(Hex.decode(String(decoding: try Data(contentsOf: url), as: UTF8.self)), "\(url.path) is not hex")
    }

    static func channel(_ name: Any?) throws -> SyncChannel {
        try #require(SyncChannel.allCases.first { $0.description == name as? String }, "channel \(String(describing: name))")
    }

    static func names(in sub: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: Repo.vectors.appendingPathComponent(sub).path)
            .filter { $0.hasSuffix(".json") }.map { String($0.dropLast(5)) }.sorted()
    }

    static func same(_ a: Any?, _ b: Any) throws -> Bool {
        guard let a else { return false }
        return try Describe.json(a) == Describe.json(b)
    }

    @Test func validVectorsOpenToTheirDescription() throws {
        var types = Set<SyncMessageType>()
        let names = try Self.names(in: "valid")
        #expect(names.count >= SyncMessageType.allCases.count)
        for name in names {
            let dir = Repo.vectors.appendingPathComponent("valid")
            let description = try Self.json(dir.appendingPathComponent(name + ".json"))
            let bytes = try Self.hexFile(dir.appendingPathComponent(name + ".hex"))
            var opener = Fixtures.opener()
            let channel = try Self.channel(description["channel"])
            switch opener.open(bytes, channel: channel) {
            case .failure(let e):
                Issue.record("\(name): \(e)")
            case .success(let (header, message)):
                types.insert(message.type)
                #expect(try Self.same(description["header"], Describe.header(header)), "\(name) header")
                #expect(try Self.same(description["message"], Describe.message(message)), "\(name) message")
                #expect(description["payload"] as? String == Hex.encode(SyncCodec.encodePayload(message)), "\(name) payload")
                #expect(Int(header.length) + SyncWire.headerSize == bytes.count)
                #expect(bytes.count <= channel.maxFrame)
            }
        }
        #expect(types == Set(SyncMessageType.allCases), "a message type without a vector")
    }

    @Test func invalidVectorsAreDroppedForTheirReason() throws {
        var reasons = Set<SyncDropReason>()
        for name in try Self.names(in: "invalid") {
            let dir = Repo.vectors.appendingPathComponent("invalid")
            let description = try Self.json(dir.appendingPathComponent(name + ".json"))
            let bytes = try Self.hexFile(dir.appendingPathComponent(name + ".hex"))
            let expect = try #require(SyncDropReason(rawValue: description["expect"] as? String ?? ""), "\(name) expect")
            reasons.insert(expect)
            var opener = Fixtures.opener()
            let first = description["openFirst"] as? [String] ?? []
            for f in first {
                let earlier = try Self.hexFile(Repo.vectors.appendingPathComponent("valid/\(f).hex"))
                let result = opener.open(earlier, channel: .datagram)
                #expect((try? result.get()) != nil, "\(name): openFirst \(f) failed")
            }
            let channel = try Self.channel(description["channel"])
            switch opener.open(bytes, channel: channel) {
            case .success:
                Issue.record("\(name): opened, expected \(expect)")
            case .failure(let e):
                #expect(e.reason == expect, "\(name): \(e)")
            }
            #expect(opener.counters[expect] == 1, "\(name)")
            #expect(opener.opened == UInt64(first.count), "\(name)")
            // Malformed payloads also fail on their own, without the sealing around them.
            if let type = (description["type"] as? Int).flatMap({ SyncMessageType(rawValue: UInt8($0)) }),
               let payload = (description["payload"] as? String).flatMap(Hex.decode) {
                #expect(throws: SyncDecodeError.self) { try SyncCodec.decodePayload(type: type, payload) }
            }
        }
        #expect(reasons == Set(SyncDropReason.allCases), "a drop reason without a vector")
    }

    @Test func hashVectors() throws {
        let d = try Self.json(Repo.vectors.appendingPathComponent("hashes.json"))
        func key(_ any: Any?) throws -> FlowTuple {
            let k = try #require(any as? [String: Any])
            return FlowTuple(source: try #require(IPv4Address(k["saddr"] as? String ?? "")),
                             destination: try #require(IPv4Address(k["daddr"] as? String ?? "")),
                             sourcePort: UInt16(try #require(k["sport"] as? Int)),
                             destinationPort: UInt16(try #require(k["dport"] as? Int)),
                             proto: UInt8(try #require(k["proto"] as? Int)))
        }
        let mixes = try #require(d["mix"] as? [[String: Any]])
        #expect(mixes.count == 4)
        for m in mixes {
            let input = try #require(UInt64((m["in"] as? String ?? "").dropFirst(2), radix: 16))
            #expect(Describe.hash(SyncHashing.mix(input)) == m["out"] as? String)
        }
        let flows = try #require(d["flows"] as? [[String: Any]])
        #expect(flows.count == 5)
        for f in flows {
            let h = SyncHashing.flowHash(try key(f["key"]))
            #expect(Describe.hash(h) == f["flowHash"] as? String)
            #expect(SyncHashing.bucket(ofFlowHash: h) == f["bucket"] as? Int)
            #expect(SyncHashing.subBucket(ofFlowHash: h) == f["subBucket"] as? Int)
            #expect(SyncHashing.leaf(ofFlowHash: h) == f["leaf"] as? Int)
            #expect(SyncHashing.leaf(ofFlowHash: h) == SyncHashing.bucket(ofFlowHash: h) * 128 + SyncHashing.subBucket(ofFlowHash: h))
        }
        let entries = try #require(d["entries"] as? [[String: Any]])
        #expect(entries.count == 4)
        for e in entries {
            let record = FlowRecord(key: try key(e["key"]), translated: try key(e["key"]), natMode: .default,
                                    state: .none, flags: [], endpointIndex: 0, ageMilliseconds: 0, remainingMilliseconds: 0)
            let op = try #require(e["op"] as? Int)
            let operation = try #require(SyncEntry.Operation(rawValue: UInt8(op)))
            let version = try #require(UInt64(e["version"] as? String ?? ""))
            let entry = SyncEntry(operation: operation, record: record, version: version, origin: 0)
            // Only key, version and operation go into the hash.
            #expect(Describe.hash(SyncHashing.entryHash(entry)) == e["entryHash"] as? String)
        }
    }

    @Test func sealingVector() throws {
        let d = try Self.json(Repo.vectors.appendingPathComponent("sealing.json"))
        let key = try #require(ClusterKey(hex: d["clusterKey"] as? String ?? ""))
        #expect(key == Fixtures.key)
        #expect(d["salt"] as? String == String(decoding: SyncSealing.salt, as: UTF8.self))
        let sender = UInt32(try #require(d["sender"] as? Int))
        let epoch = try #require(UInt64(d["epoch"] as? String ?? ""))
        let subkey = SyncSealing.subkey(key, sender: sender, epoch: epoch).withUnsafeBytes { Array($0) }
        #expect(Hex.encode(subkey) == d["subkey"] as? String)
        for n in try #require(d["nonces"] as? [[String: Any]]) {
            let rawChannel = try #require(n["channel"] as? Int)
            let channel = try #require(SyncChannel(rawValue: UInt32(rawChannel)))
            let sequence = try #require(UInt64(n["sequence"] as? String ?? ""))
            #expect(Hex.encode(SyncSealing.nonceBytes(channel: channel, sequence: sequence)) == n["nonce"] as? String)
        }
    }

    /// The subkey is HKDF-SHA256 as RFC 5869 defines it: recomputed here from HMAC by hand.
    @Test func subkeyIsHKDFFromScratch() throws {
        var info: [UInt8] = []
        withUnsafeBytes(of: Fixtures.sender.bigEndian) { info += $0 }
        withUnsafeBytes(of: Fixtures.epoch.bigEndian) { info += $0 }
        let prk = Array(HMAC<SHA256>.authenticationCode(for: Fixtures.key.bytes, using: SymmetricKey(data: SyncSealing.salt)))
        let okm = Array(HMAC<SHA256>.authenticationCode(for: info + [1], using: SymmetricKey(data: prk)))
        #expect(okm == VectorGenerator.subkeyBytes(sender: Fixtures.sender, epoch: Fixtures.epoch))
    }
}
