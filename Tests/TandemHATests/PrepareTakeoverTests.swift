import Foundation
import Logging
import NIOConcurrencyHelpers
import Testing
import TandemCloud
import TandemCore
import TandemHA
import TandemSealing

/// `HAHooks.prepareTakeover`: what must be in place before traffic arrives (a held kernel
/// conntrack table, committed) finishes before the provider moves the floating IP, and a node that
/// lost its term meanwhile does not move it at all. Loopback only.
@Suite(.serialized, .timeLimit(.minutes(1))) struct PrepareTakeoverTests {
    /// Records when each takeover started.
    final class RecordingProvider: CloudProvider, @unchecked Sendable {
        let name = "test"
        let starts = NIOLockedValueBox([ContinuousClock.Instant]())
        func takeover(vips: [IPv4Address], term: UInt64) async throws -> CloudTakeoverResult {
            starts.withLockedValue { $0.append(.now) }
            return CloudTakeoverResult(provider: name, durationNanos: 0, detail: "moved \(vips)")
        }
        func release(vips: [IPv4Address]) async {}
    }

    /// A provider call that takes until it is cancelled (or 10 s): a slow cloud API.
    final class SlowProvider: CloudProvider, @unchecked Sendable {
        let name = "slow"
        let entered = NIOLockedValueBox(false)
        let sawCancellation = NIOLockedValueBox(false)
        let moved = NIOLockedValueBox(false)
        func takeover(vips: [IPv4Address], term: UInt64) async throws -> CloudTakeoverResult {
            entered.withLockedValue { $0 = true }
            let end = ContinuousClock.now + .seconds(10)
            while ContinuousClock.now < end {
                if Task.isCancelled {
                    sawCancellation.withLockedValue { $0 = true }
                    throw CancellationError()
                }
                try? await Task.sleep(for: .milliseconds(5))
            }
            moved.withLockedValue { $0 = true }
            return CloudTakeoverResult(provider: name, durationNanos: 0, detail: "moved \(vips)")
        }
        func release(vips: [IPv4Address]) async {}
    }

    func waitFor(_ seconds: Double, _ check: () async -> Bool) async -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            if await check() { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return false
    }

    func startShell(provider: any CloudProvider,
                    prepare: @escaping @Sendable ([IPv4Address], UInt64) async -> Void) async throws -> HAShell {
        let key = try #require(ClusterKey(bytes: (0..<32).map { _ in UInt8.random(in: 0...255) }))
        for _ in 0..<20 {
            var config = HAShellConfig(selfID: 0x7f00_0001, bindAddress: IPv4Address(127, 0, 0, 1),
                                       port: UInt16.random(in: 20_000...60_000),
                                       peers: [HAPeer(id: 0x7f00_0002, address: IPv4Address(127, 0, 0, 2))], key: key,
                                       instances: [HAInstanceConfig(name: "llb-inst0", vips: [IPv4Address(10, 99, 0, 1)])])
            config.realtime = false
            let s = HAShell(config: config,
                            hooks: HAHooks(serviceVIPs: { [] }, setActiveVIPs: { _ in }, replicationInSync: { true },
                                           prepareTakeover: prepare),
                            provider: provider, logger: Logger(label: "test"))
            do {
                try await s.start()
                return s
            } catch {
                await s.stop()
            }
        }
        throw CancellationError()
    }

    @Test func theMoveWaitsForThePreparation() async throws {
        let provider = RecordingProvider()
        let prepared = NIOLockedValueBox<ContinuousClock.Instant?>(nil)
        let ha = try await startShell(provider: provider) { _, _ in
            try? await Task.sleep(for: .milliseconds(300))
            prepared.withLockedValue { $0 = .now }
        }
        try await ha.setExternal(instance: "llb-inst0", state: "MASTER")
        // Generous: the move runs on the shared pool, which parallel unit tests keep busy.
        #expect(await waitFor(30) { !provider.starts.withLockedValue { $0 }.isEmpty })
        let start = try #require(provider.starts.withLockedValue { $0.first })
        let done = try #require(prepared.withLockedValue { $0 })
        #expect(done <= start, "the provider moved the IP before the preparation finished")
        let status = await ha.status()
        let prepareMs = try #require(status?.instances.first?.lastPrepareMs)
        #expect(prepareMs >= 300)
        await ha.stop()
    }

    /// Both nodes claimed at start and this one lost: its provider call still running must stop
    /// (a finished move would pull the floating IP from the winner), and it is neither counted
    /// as a takeover nor as a failure (no FAULT).
    @Test func aTermLostWhileTheProviderWorksCancelsTheMove() async throws {
        let provider = SlowProvider()
        let ha = try await startShell(provider: provider) { _, _ in }
        try await ha.setExternal(instance: "llb-inst0", state: "MASTER")
        #expect(await waitFor(30) { provider.entered.withLockedValue { $0 } })
        try await ha.setExternal(instance: "llb-inst0", state: "BACKUP")
        #expect(await waitFor(5) { provider.sawCancellation.withLockedValue { $0 } }, "the move was not cancelled")
        #expect(!provider.moved.withLockedValue { $0 })
        try await Task.sleep(for: .milliseconds(200))
        let instance = try #require(await ha.status()?.instances.first)
        #expect(instance.role == "BACKUP")
        #expect(instance.takeovers == 0 && instance.takeoverFailures == 0, "\(instance)")
        await ha.stop()
    }

    @Test func aTermLostDuringThePreparationMovesNothing() async throws {
        let provider = RecordingProvider()
        let release = NIOLockedValueBox(false)
        let entered = NIOLockedValueBox(false)
        let ha = try await startShell(provider: provider) { _, _ in
            entered.withLockedValue { $0 = true }
            while !release.withLockedValue({ $0 }) { try? await Task.sleep(for: .milliseconds(5)) }
        }
        try await ha.setExternal(instance: "llb-inst0", state: "MASTER")
        #expect(await waitFor(30) { entered.withLockedValue { $0 } })
        // While the preparation runs, the operator forces the instance BACKUP.
        try await ha.setExternal(instance: "llb-inst0", state: "BACKUP")
        release.withLockedValue { $0 = true }
        try await Task.sleep(for: .milliseconds(300))
        #expect(provider.starts.withLockedValue { $0 }.isEmpty, "a node that is no longer MASTER moved the IP")
        await ha.stop()
    }
}
