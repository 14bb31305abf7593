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
            // Backoff sum bounds: 0 -> none; 1 -> [0.5,1); 3 -> [3.5,5).
            let maxSeconds: [Int: Double] = [0: 1.0, 1: 2.0, 3: 6.0]
            #expect(report.duration.seconds < maxSeconds[failures] ?? 0)
            await bed.stop()
        }
        print("OCI takeover timings (fake on loopback, default policy):\n" + lines.joined(separator: "\n"))
    }
}
