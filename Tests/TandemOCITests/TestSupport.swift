import Foundation
import Synchronization
@testable import TandemOCI

/// An in-memory file system for config and key tests.
final class MemoryFiles: Sendable {
    let files: Mutex<[String: (bytes: [UInt8], mode: UInt16)]> = Mutex([:])

    func put(_ path: String, _ text: String, mode: UInt16 = 0o600) {
        files.withLock { $0[path] = (Array(text.utf8), mode) }
    }

    func environment(_ variables: [String: String] = ["HOME": "/home/opc"]) -> OCIEnvironment {
        OCIEnvironment(variables: variables,
                       readFile: { path in self.files.withLock { $0[path]?.bytes } },
                       permissions: { path in self.files.withLock { $0[path]?.mode } })
    }
}
