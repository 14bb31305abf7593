import Foundation
import Testing
@testable import TandemOCI

/// Runs the built `fake-oci` binary as a subprocess on 127.0.0.1 and drives it with the client.
@Suite(.serialized) struct FakeExecutableTests {
    /// `swift test` builds every product next to the test runner.
    static func binary() -> String? {
        let runner = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var dir = runner.deletingLastPathComponent()
        for _ in 0..<4 {
            let candidate = dir.appendingPathComponent("fake-oci").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return nil
    }

    @Test func binaryServesAndVerifiesAndRunsTheHook() async throws {
        let path = try #require(Self.binary(), "fake-oci was not built next to the test runner (run `swift build` first)")
        let bed = try await FakeBed.start()  // for the config directory and key
        defer { try? FileManager.default.removeItem(atPath: bed.dir) }
        await bed.server.stop()
        let portFile = bed.dir + "/port"
        let hookFile = bed.dir + "/hook.out"
        let publicKey = bed.dir + "/pub.pem"
        try Fixtures.testPublicKey.write(toFile: publicKey, atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = ["--public-key", publicKey, "--port-file", portFile, "--fault", "update:503",
                             "--on-move", "echo {ip} {vnic_ip} > \(hookFile)"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { process.terminate() }; process.waitUntilExit() }
        var port: String?
        for _ in 0..<100 {
            if let text = try? String(contentsOfFile: portFile, encoding: .utf8), !text.isEmpty {
                port = text.trimmingCharacters(in: .whitespacesAndNewlines)
                break
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        let bound = try #require(port, "fake-oci did not write its port")
        var env = OCIEnvironment.live
        env.variables = ["HOME": bed.dir]
        let options = OCIProviderOptions(apiEndpoint: "http://127.0.0.1:\(bound)", imdsEndpoint: "http://127.0.0.1:\(bound)/imds/llb2",
                                         policy: FakeBed.fastPolicy, environment: env)
        let report = try await OCIAssignVIP.run(options: options, vip: "10.0.10.143")
        #expect(report.outcome == .moved(fromVnicId: "ocid1.vnic.oc1.iad.llb1"))
        #expect(report.attempts.contains { $0.status == 503 })
        #expect(try String(contentsOfFile: hookFile, encoding: .utf8) == "10.0.10.143 10.0.10.88\n")
        let checks = await OCIPreflight.run(options: options, vip: "10.0.10.143")
        #expect(checks.first { $0.name == "private-ips" }?.detail.contains("this node's VNIC") == true)
    }
}
