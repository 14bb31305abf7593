import Foundation
import Logging
import NIOConcurrencyHelpers
import Testing
import TandemCloud
import TandemCore
import TandemHA
import TandemSync
import TandemSealing

/// The HA shell's shutdown (review defect a): after `stop()` has begun (the node announced its
/// leave) no queued takeover may move the floating IP back. Loopback only.
@Suite(.serialized, .timeLimit(.minutes(1))) struct HAShellStopTests {
    /// Records every call; the first takeover waits until the test opens the gate.
    final class GatedProvider: CloudProvider, @unchecked Sendable {
        let name = "test"
        let state = NIOLockedValueBox((takeovers: [UInt64](), releases: 0, gateOpen: false, firstStarted: false))

        func takeover(vips: [IPv4Address], term: UInt64) async throws -> CloudTakeoverResult {
            let first = state.withLockedValue { s -> Bool in
                s.takeovers.append(term)
                defer { s.firstStarted = true }
                return !s.firstStarted
            }
            if first {
                while !state.withLockedValue({ $0.gateOpen }) { try? await Task.sleep(for: .milliseconds(5)) }
            }
            return CloudTakeoverResult(provider: name, durationNanos: 0, detail: "moved \(vips)")
        }

        func release(vips: [IPv4Address]) async {
            state.withLockedValue { $0.releases += 1 }
        }
    }

    func waitFor(_ seconds: Double, _ check: () -> Bool) async -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            if check() { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return false
    }

    @Test func aTakeoverQueuedBeforeStopDoesNotRunAfterTheLeave() async throws {
        let provider = GatedProvider()
        let key = try #require(ClusterKey(bytes: (0..<32).map { _ in UInt8.random(in: 0...255) }))
        var shell: HAShell?
        for _ in 0..<20 where shell == nil {
            var config = HAShellConfig(selfID: 0x7f00_0001, bindAddress: IPv4Address(127, 0, 0, 1),
                                       port: UInt16.random(in: 20_000...60_000),
                                       peers: [HAPeer(id: 0x7f00_0002, address: IPv4Address(127, 0, 0, 2))], key: key,
                                       instances: [HAInstanceConfig(name: "llb-inst0", vips: [IPv4Address(10, 99, 0, 1)])])
            config.realtime = false
            let s = HAShell(config: config, hooks: HAHooks(serviceVIPs: { [] }, setActiveVIPs: { _ in },
                                                           replicationInSync: { true }),
                            provider: provider, logger: Logger(label: "test"))
            do {
                try await s.start()
                shell = s
            } catch {
                await s.stop()
            }
        }
        let ha = try #require(shell)
        // MASTER from outside: its takeover starts and blocks in the provider. The move runs on a
        // task of the shared pool, which the parallel unit tests can keep busy for seconds on two
        // cores (seen in CI: 4 s), so the wait is generous; the gate, not the timing, orders the rest.
        try await ha.setExternal(instance: "llb-inst0", state: "MASTER")
        #expect(await waitFor(30) { provider.state.withLockedValue { $0.firstStarted } })
        // A second move queues behind it (a service change re-asserts the MASTER's VIPs).
        ha.servicesChanged()
        try await Task.sleep(for: .milliseconds(100))
        // Shutdown begins while the first move is still running; then the first move finishes.
        let stopping = Task { await ha.stop() }
        try await Task.sleep(for: .milliseconds(200))
        provider.state.withLockedValue { $0.gateOpen = true }
        _ = await stopping.value
        let s = provider.state.withLockedValue { $0 }
        #expect(s.takeovers.count == 1, "takeovers after the leave: \(s.takeovers)")
        #expect(s.releases >= 1, "the VIPs were released on stop")
    }
}
