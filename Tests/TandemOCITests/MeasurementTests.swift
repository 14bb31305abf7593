import FakeOCI
import Foundation
import Testing
@testable import TandemOCI

/// Takeover time through the fake with 0, 1 and 3 transient failures, with the production
/// policy (base 0.5 s, cap 4 s, deadline 30 s). Printed for the docs; bounds asserted.
@Suite(.serialized) struct MeasurementTests {
    @Test func takeoverTimings() async throws {
        var lines: [String] = []
        for failures in [0, 1, 3] {
            let bed = try await FakeBed.start()
            if failures > 0 { await bed.store.addFaults(try FaultRule.parse("update:503x\(failures)")) }
            let provider = try await bed.provider("llb2", policy: TakeoverPolicy())
            let report = try await provider.takeover(vip: "10.0.10.143")
            let ms = report.duration.seconds * 1000
            lines.append(String(format: "failures=%d calls=%d takeover=%.1f ms", failures, report.attempts.count, ms))
            #expect(report.outcome == .moved(fromVnicId: "ocid1.vnic.oc1.iad.llb1"))
            // Backoff sums: 0 -> none; 1 -> [0.5,1); 3 -> [3.5,5). The lower bounds show the
            // backoff happened; the upper ones leave room for a loaded CI machine (the test suite
            // runs in parallel with a fuzzer build) while still catching an extra backoff step.
            let minSeconds: [Int: Double] = [0: 0, 1: 0.5, 3: 3.5]
            let maxSeconds: [Int: Double] = [0: 5.0, 1: 6.0, 3: 9.0]
            #expect(report.duration.seconds >= minSeconds[failures] ?? 0)
            #expect(report.duration.seconds < maxSeconds[failures] ?? 0)
            await bed.stop()
        }
        print("OCI takeover timings (fake on loopback, default policy):\n" + lines.joined(separator: "\n"))
    }
}
