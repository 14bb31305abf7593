// tandem-echo: the test bed's endpoint server, UDP load generator and failover flow checker.
//
//   tandem-echo [serve] --address 0.0.0.0 --port 9000 [--name NAME]
//       TCP and UDP echo on the same port. Prints one line starting with "ready" once both are
//       bound ("ready tcp=ADDR:PORT udp=ADDR:PORT name=NAME"), exits 0 on SIGTERM/SIGINT.
//       Open connections are dropped at exit; accepted sockets are not drained. Everything is
//       echoed byte for byte, except UDP datagrams starting with "TDMF" (flows mode): those come
//       back followed by a 1-byte length and NAME (default: the hostname).
//   tandem-echo flood --target IP:PORT --size 64 --duration 10 --rate 0 [--flows 8] [--window 0]
//       UDP load generator: sends datagrams, counts the echoed ones, prints one JSON object.
//   tandem-echo probe --target IP:PORT [--udp] [--timeout 2]
//       Sends one message, expects it back byte for byte; exit 0 on success, 1 otherwise.
//   tandem-echo flows --tcp-target IP:PORT --tcp N --udp-target IP:PORT --udp M [...]
//       Long-lived flows checking every echoed byte; reports survivors and the longest stall as
//       one JSON line. Exit 0 if all survived, 1 if not, 2 on bad arguments or failed setup.

import ArgumentParser
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Entry point

struct TandemEcho: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tandem-echo",
        abstract: "Echo endpoint, UDP load generator and failover flow checker for the Tandem test bed.",
        subcommands: [Serve.self, Flood.self, Probe.self, Flows.self],
        defaultSubcommand: Serve.self)
}

// As TandemEcho.main(), except that `flows` exits 2 (not 64) on bad arguments.
do {
    var command = try TandemEcho.parseAsRoot()
    try command.run()
} catch {
    if CommandLine.arguments.dropFirst().first == "flows",
       TandemEcho.exitCode(for: error) == .validationFailure {
        warn(TandemEcho.fullMessage(for: error))
        exit(2)
    }
    TandemEcho.exit(withError: error)
}
