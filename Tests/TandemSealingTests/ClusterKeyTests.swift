import Foundation
import Testing
import TandemSync
import TandemSealing
import TandemTestSupport

@Suite struct ClusterKeyTests {
    static let hex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

    /// Writes `bytes` to a fresh file with `mode`, runs `body` with its path, cleans up.
    func withKeyFile<R>(_ bytes: [UInt8], mode: Int = 0o600, _ body: (String) throws -> R) throws -> R {
        let dir = try TempFiles.directory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("cluster.key")
        try TempFiles.write(bytes, to: url, mode: mode)
        return try body(url.path)
    }

    func loadError(_ path: String) -> ClusterKeyError? {
        do {
            _ = try ClusterKey.load(path: path)
            return nil
        } catch { return error }
    }

    @Test func hexRoundTrip() throws {
        let key = try #require(ClusterKey(hex: Self.hex))
        #expect(key == Fixtures.key)
        #expect(key.hexString == Self.hex)
        #expect(ClusterKey(hex: Self.hex.uppercased()) == key)
        #expect(ClusterKey(hex: String(Self.hex.dropLast())) == nil)
        #expect(ClusterKey(hex: Self.hex + "0") == nil)
        #expect(ClusterKey(hex: "g" + Self.hex.dropFirst()) == nil)
        #expect(ClusterKey(bytes: [UInt8](repeating: 0, count: 31)) == nil)
        #expect(ClusterKey(bytes: [UInt8](repeating: 0, count: 33)) == nil)
    }

    @Test func generate() {
        var a = TestRNG(seed: 1)
        var b = TestRNG(seed: 1)
        let k1 = ClusterKey.generate(using: &a)
        #expect(k1 == ClusterKey.generate(using: &b))
        #expect(k1 != ClusterKey.generate(using: &a))
        #expect(k1.bytes.count == 32)
        #expect(ClusterKey(hex: k1.hexString) == k1)
        #expect(ClusterKey.generate() != ClusterKey.generate())
    }

    @Test func loadsHexAndRawFiles() throws {
        for contents in [Self.hex, Self.hex + "\n", Self.hex + "\r\n", Self.hex + "  \n\n", Self.hex.uppercased() + "\n"] {
            let key = try withKeyFile(Array(contents.utf8)) { try ClusterKey.load(path: $0) }
            #expect(key == Fixtures.key, "\(contents.debugDescription)")
        }
        let raw = try withKeyFile(Fixtures.key.bytes) { try ClusterKey.load(path: $0) }
        #expect(raw == Fixtures.key)
        // What a keygen command writes loads back.
        let generated = ClusterKey.generate()
        #expect(try withKeyFile(Array((generated.hexString + "\n").utf8)) { try ClusterKey.load(path: $0) } == generated)
        // Mode 0400 is fine too.
        #expect(try withKeyFile(Array(Self.hex.utf8), mode: 0o400) { try ClusterKey.load(path: $0) } == Fixtures.key)
    }

    @Test(arguments: [0o644, 0o640, 0o604, 0o660, 0o601, 0o610, 0o777])
    func refusesFilesOthersCanRead(_ mode: Int) throws {
        let (error, path) = try withKeyFile(Array(Self.hex.utf8), mode: mode) { (loadError($0), $0) }
        #expect(error == .tooOpen(path: path, mode: UInt32(mode)))
        if mode == 0o644 {
            #expect(error?.description == "key file \(path) is readable by group or others (mode 0644); run chmod 600 \(path)")
        }
    }

    @Test func missingFile() {
        let path = "/nonexistent-\(UUID().uuidString)/cluster.key"
        let error = loadError(path)
        #expect(error == .missing(path: path))
        #expect(error?.description == "cluster key file \(path) does not exist")
    }

    @Test func directoryIsNotAKeyFile() throws {
        let dir = try TempFiles.directory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: dir.path)
        #expect(loadError(dir.path) == .notRegularFile(path: dir.path))
    }

    @Test(arguments: [
        ("empty", ""),
        ("63 digits", String(hex.dropLast())),
        ("65 digits", hex + "0"),
        ("32 digits", String(hex.prefix(32))),
        ("leading space", " " + hex),
        ("non-hex", "z" + hex.dropFirst()),
        ("two keys", hex + "\n" + hex + "\n"),
        ("text", "not a key\n"),
    ])
    func refusesWrongFormats(_ name: String, _ contents: String) throws {
        let (error, path) = try withKeyFile(Array(contents.utf8)) { (loadError($0), $0) }
        guard case .badFormat(let p, _) = error else {
            Issue.record("\(name): expected badFormat, got \(String(describing: error))")
            return
        }
        #expect(p == path)
        #expect(error?.description.hasPrefix("cluster key file \(path) is malformed: expected 64 hex digits or 32 raw bytes") == true)
    }

    @Test func refusesWrongRawLengths() throws {
        for n in [31, 33, 64 + 7, 5000] {
            let bytes = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 200) }
            let error = try withKeyFile(bytes) { loadError($0) }
            guard case .badFormat = error else {
                Issue.record("\(n) raw bytes: \(String(describing: error))")
                continue
            }
        }
    }

    @Test func descriptionsAreOneLineNamingThePath() {
        let errors: [ClusterKeyError] = [
            .missing(path: "/k"), .unreadable(path: "/k", reason: "Permission denied"), .notRegularFile(path: "/k"),
            .tooOpen(path: "/k", mode: 0o644), .badFormat(path: "/k", detail: "x"),
        ]
        for e in errors {
            #expect(!e.description.contains("\n"))
            #expect(e.description.contains("/k"))
            #expect(e.path == "/k")
        }
    }
}
