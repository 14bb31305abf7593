import Foundation
import Testing
@testable import TandemNode

/// The table scanner's start/stop handshake (review defect d: `running` was written outside the
/// lock `stop()` reads it under).
@Suite struct WorkerLatchTests {
    final class Flag: @unchecked Sendable {
        private let lock = NSLock()
        private var at: Date?
        func set() { lock.lock(); at = Date(); lock.unlock() }
        var value: Date? { lock.lock(); defer { lock.unlock() }; return at }
    }

    @Test func stopReturnsOnlyAfterTheWorkerLeftItsLoopEvenRightAfterStart() {
        for _ in 0..<200 {
            let latch = WorkerLatch()
            let done = Flag()
            latch.begin()
            let t = Thread {
                while latch.waitOrStop(seconds: 5) {}
                done.set()
                latch.finish()
            }
            t.start()
            let start = Date()
            latch.stopAndWait()
            #expect(Date().timeIntervalSince(start) < 2, "stop waited out the worker's sleep")
            #expect(done.value != nil, "stop returned before the worker finished")
            if done.value == nil { break }
        }
    }

    @Test func stopBeforeTheWorkerRunsStillWaitsForIt() {
        let latch = WorkerLatch()
        let done = Flag()
        latch.begin()
        let t = Thread {
            Thread.sleep(forTimeInterval: 0.2)  // the worker is slow to get going
            while latch.waitOrStop(seconds: 5) {}
            done.set()
            latch.finish()
        }
        t.start()
        latch.stopAndWait()
        let returned = Date()
        #expect(done.value.map { $0 <= returned } == true)
    }
}
