import Foundation
import Testing
import TandemSync
import TandemSyncWire
import TandemSealing
import TandemTestSupport

@Suite struct FuzzTests {
    static func corpus() throws -> [(name: String, bytes: [UInt8])] {
        try FileManager.default.contentsOfDirectory(atPath: Repo.corpus.path).sorted().map { name in
            (name, Array(try Data(contentsOf: Repo.corpus.appendingPathComponent(name))))
        }
    }

    /// Every file of the regression corpus (seeds plus past crashers) through exactly what the
    /// fuzz target runs, and through the opener on both channels, whole and without the
    /// fuzzer's selector byte. Passing means nothing trapped.
    @Test func corpusReplays() throws {
        let files = try Self.corpus()
        #expect(files.count >= 20)
        #expect(files.count < 200, "keep the corpus small; minimize it with -merge=1")
        var opener = SyncOpener(key: Fixtures.key, selfID: Fixtures.selfID)
        for (_, bytes) in files {
            bytes.withUnsafeBytes { SyncDecodeFuzzing.run($0) }
            for channel in SyncChannel.allCases {
                _ = opener.open(bytes, channel: channel)
                _ = opener.open(Array(bytes.dropFirst()), channel: channel)
            }
        }
        // The seed frames are real sealed messages and open.
        #expect(opener.opened >= 1)
    }

    /// Builds the libFuzzer target and runs it for 20 seconds (scripts/fuzz.sh). It must build
    /// here and in CI, and must not find a crash.
    @Test(.timeLimit(.minutes(10))) func boundedFuzzRun() async throws {
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("tandem-fuzz-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: log) }
        let handle = try FileHandle(forWritingTo: log)
        defer { try? handle.close() }

        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["bash", Repo.root.appendingPathComponent("scripts/fuzz.sh").path, "20"]
        process.currentDirectoryURL = Repo.root
        process.standardOutput = handle
        process.standardError = handle
        // Wait without blocking a thread of the shared pool, which other tests need.
        let status: Int32 = try await withCheckedThrowingContinuation { continuation in
            process.terminationHandler = { continuation.resume(returning: $0.terminationStatus) }
            do { try process.run() } catch {
                process.terminationHandler = nil
                continuation.resume(throwing: error)
            }
        }
        let output = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
        #expect(status == 0, "scripts/fuzz.sh 20 exited \(status):\n\(output.suffix(6000))")
        #expect(output.contains("Done "), "the fuzzer did not run:\n\(output.suffix(3000))")
    }
}
