import ArgumentParser
import Foundation
import Logging
import TandemCloud
import TandemCore
import TandemOCI

/// `tandem cloud ...`: check a cloud provider's setup and move the floating IP by hand (drills,
/// recovery), through the same `CloudProvider` code the HA daemon runs.
struct Cloud: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check the cloud provider and move the floating IP by hand.",
        discussion: """
        Providers: none (something else routes the VIP: BGP, kube-loxilb, a static route), \
        l2 (the VIP as a /32 on --interface, announced by gratuitous ARP), \
        oci (the VIP is a secondary private IP moved between VNICs through the OCI API).
        """,
        subcommands: [Check.self, AssignVIP.self, ReleaseVIP.self])

    /// Flags every `tandem cloud` subcommand shares.
    struct Options: ParsableArguments {
        @Option(name: .long, help: "Cloud provider: none | l2 | oci.")
        var cloud: String

        @Option(name: .long, help: "l2: the Ethernet interface that holds the floating IP (e.g. eth0).")
        var interface: String?

        @Option(name: .long, help: "oci: config file (default: ~/.oci/config, then $OCI_CONFIG_FILE, then ~/.oraclebmc/config).")
        var ociConfig: String?

        @Option(name: .long, help: "oci: profile in the config file (default: DEFAULT).")
        var profile: String?

        @Option(name: .long, help: "oci: Core API base URL (default: from the region).")
        var apiEndpoint: String?

        @Option(name: .long, help: "oci: instance metadata (IMDS) base URL (default: http://169.254.169.254).")
        var imdsEndpoint: String?

        @Option(name: .long, help: "oci: this node's VNIC OCID (default: found through IMDS).")
        var vnicId: String?

        @Option(name: .long, help: "Log level on stderr: trace, debug, info, notice, warning, error.")
        var logLevel: String = "warning"

        /// The provider kind, and that the flags given belong to it.
        func kind() throws -> CloudKind {
            let kind: CloudKind
            do { kind = try CloudKind.parse(cloud) } catch { throw ValidationError(error.message) }
            let ociFlags = [("--oci-config", ociConfig), ("--profile", profile), ("--api-endpoint", apiEndpoint),
                            ("--imds-endpoint", imdsEndpoint), ("--vnic-id", vnicId)].filter { $0.1 != nil }.map(\.0)
            if kind != .oci, let flag = ociFlags.first {
                throw ValidationError("\(flag) is an OCI flag; it has no meaning with --cloud=\(kind.rawValue)")
            }
            if kind == .l2 {
                guard let interface, !interface.isEmpty else {
                    throw ValidationError("--cloud=l2 needs --interface (the interface that holds the floating IP, e.g. eth0)")
                }
            } else if interface != nil {
                throw ValidationError("--interface is for --cloud=l2; it has no meaning with --cloud=\(kind.rawValue)")
            }
            return kind
        }

        var ociOptions: OCIProviderOptions {
            OCIProviderOptions(configPath: ociConfig, profile: profile, apiEndpoint: apiEndpoint,
                               imdsEndpoint: imdsEndpoint ?? IMDSClient.defaultEndpoint, vnicId: vnicId)
        }

        func logger() -> Logger {
            var logger = Logger(label: "tandem.cloud") { StreamLogHandler.standardError(label: $0) }
            logger.logLevel = Logger.Level(rawValue: logLevel) ?? .warning
            return logger
        }

        func provider(_ kind: CloudKind) throws -> any CloudProvider {
            do { return try CloudProviders.make(kind: kind, interface: interface, oci: ociOptions, logger: logger()) } catch {
                throw ValidationError(error.message)
            }
        }
    }

    /// Parses `--vip` strictly (dotted quad) and refuses addresses that can't float.
    static func parseVIP(_ text: String) throws -> IPv4Address {
        guard let vip = IPv4Address(text) else {
            throw ValidationError("'\(text)' is not an IPv4 address (--vip takes a dotted quad, e.g. 10.0.10.143)")
        }
        guard !vip.isUnspecified, !vip.isLoopback, !vip.isMulticastOrBroadcast else {
            throw ValidationError("\(vip) can't be a floating IP (unspecified, loopback, multicast or broadcast)")
        }
        return vip
    }

    /// A runtime failure: one line on stderr, exit status 1.
    static func fail(_ message: String) -> ExitCode {
        FileHandle.standardError.write(Data("tandem: \(message)\n".utf8))
        return ExitCode(1)
    }

    static func milliseconds(since start: ContinuousClock.Instant) -> String {
        let (s, atto) = (ContinuousClock.now - start).components
        return String(format: "%.1f ms", Double(s) * 1000 + Double(atto) / 1e15)
    }

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Read-only checks that the provider can move the floating IP here. Exits non-zero unless all pass.")

        @OptionGroup var options: Options
        @Option(name: .long, help: "The floating IP to check (optional).") var vip: String?

        func run() async throws {
            let kind = try options.kind()
            if let vip { _ = try Cloud.parseVIP(vip) }
            let results: [CheckResult]
            switch kind {
            case .none:
                print("cloud none: nothing to check (something else routes the floating IP: BGP, kube-loxilb or a static route)")
                return
            case .l2:
                results = L2Preflight.run(interface: options.interface ?? "", vip: vip)
            case .oci:
                results = await OCIPreflight.run(options: options.ociOptions, vip: vip, logger: options.logger())
            case .bgp:
                print("cloud bgp: the running node's speaker announces the VIP; see its sessions with tandem get bgp")
                return
            }
            print(OCIPreflight.render(results))
            guard OCIPreflight.passed(results) else { throw ExitCode(1) }
        }
    }

    struct AssignVIP: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "assign-vip",
            abstract: "Move the floating IP to this node now (drills, recovery by hand).",
            discussion: """
            l2: adds VIP/32 to --interface and announces it by gratuitous ARP on the HA schedule \
            (0, 50 ms, 150 ms, 350 ms, 750 ms, 1.5 s, 3 s); waits for the whole schedule unless --no-wait. \
            oci: moves (or creates) the private IP on this instance's VNIC.
            """)

        @OptionGroup var options: Options
        @Option(name: .long, help: "The floating IP.") var vip: String
        @Flag(name: .long, help: "l2: return after the first gratuitous ARP instead of waiting for the whole schedule.")
        var noWait = false

        func run() async throws {
            let kind = try options.kind()
            let address = try Cloud.parseVIP(vip)
            guard kind != .none else {
                throw ValidationError("assign-vip needs --cloud=l2 or --cloud=oci (with none, something else routes the floating IP)")
            }
            if noWait && kind != .l2 { throw ValidationError("--no-wait is for --cloud=l2") }
            let provider = try options.provider(kind)
            let start = ContinuousClock.now
            if let oci = provider as? OCICloudProvider {
                // Config, key and endpoint first: a bad one fails here, before anything moves.
                do { try await oci.prepare() } catch { throw Cloud.fail(error.message) }
            }
            let result: CloudTakeoverResult
            do {
                result = try await provider.takeover(vips: [address], term: 0)
            } catch {
                throw Cloud.fail("assign-vip \(address) failed: \(error)")
            }
            print("assigned \(address) with \(result.provider) in \(String(format: "%.1f ms", result.durationMilliseconds)): \(result.detail)")
            if let l2 = provider as? L2Provider, !noWait {
                await l2.waitForAnnouncements()
                print("gratuitous ARP schedule done after \(Cloud.milliseconds(since: start))")
            }
        }
    }

    struct ReleaseVIP: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "release-vip",
            abstract: "l2: remove the floating IP from this node's interface (it stops answering for it at once).")

        @OptionGroup var options: Options
        @Option(name: .long, help: "The floating IP.") var vip: String

        func run() async throws {
            let kind = try options.kind()
            let address = try Cloud.parseVIP(vip)
            guard kind == .l2 else {
                throw ValidationError(kind == .oci
                    ? "release-vip is for --cloud=l2: in OCI there is nothing to remove; the next assign-vip moves the private IP atomically"
                    : "release-vip is for --cloud=l2 (with none, something else routes the floating IP)")
            }
            guard let l2 = try options.provider(kind) as? L2Provider else { throw Cloud.fail("internal: not an l2 provider") }
            let start = ContinuousClock.now
            let outcome: (removed: [IPv4Address], absent: [IPv4Address])
            do { outcome = try l2.removeAddresses([address]) } catch { throw Cloud.fail("release-vip \(address) failed: \(error.message)") }
            if outcome.removed.isEmpty {
                print("\(address) was not on \(l2.interface); nothing to remove")
            } else {
                print("released \(address): removed \(address)/32 from \(l2.interface) in \(Cloud.milliseconds(since: start))")
            }
        }
    }
}
