import Foundation
import Logging
import TandemCore
import TandemOCI

/// Moves the floating IPs (VIPs) to this node and away from it. The HA shell calls `takeover` when
/// this node becomes MASTER for an instance and `release` when it stops being MASTER; the CLI's
/// `tandem cloud assign-vip` / `release-vip` call the same code by hand.
public protocol CloudProvider: Sendable {
    /// `none`, `l2` or `oci` (for logs and status).
    var name: String { get }
    /// Makes this node the owner of `vips`. Idempotent: taking over VIPs this node already owns
    /// succeeds. `term` is the election's fencing epoch, for logs. Throws `CloudError` with a
    /// message in plain words when a VIP could not be moved.
    func takeover(vips: [IPv4Address], term: UInt64) async throws -> CloudTakeoverResult
    /// Stops this node answering for `vips` at once. Idempotent; never throws (failures are logged).
    func release(vips: [IPv4Address]) async
}

/// What a takeover did and how long it took.
public struct CloudTakeoverResult: Sendable, Equatable, CustomStringConvertible {
    /// The provider's `name`.
    public var provider: String
    /// Wall time of the takeover call, in nanoseconds (monotonic clock).
    public var durationNanos: UInt64
    /// One line in plain words: what moved where.
    public var detail: String

    public init(provider: String, durationNanos: UInt64, detail: String) {
        self.provider = provider
        self.durationNanos = durationNanos
        self.detail = detail
    }

    public var durationMilliseconds: Double { Double(durationNanos) / 1e6 }

    public var description: String {
        "\(provider): \(detail) (\(String(format: "%.1f", durationMilliseconds)) ms)"
    }
}

/// A cloud provider failure, in plain words.
public struct CloudError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Which provider moves the floating IPs.
public enum CloudKind: String, Sendable, CaseIterable, Codable {
    /// Nothing: something else routes the VIP (BGP, kube-loxilb, a static route).
    case none
    /// On-premises layer 2: the VIP as a /32 on an interface, announced by gratuitous ARP.
    case l2
    /// Oracle Cloud: the VIP is a secondary private IP moved between VNICs through the API.
    case oci
    /// BGP (master-backup): the MASTER announces the VIP with the better attributes through the
    /// node's own speaker (TandemBGP); only a running node has one.
    case bgp

    /// Parses a user's spelling (case-insensitive), with a message naming the choices.
    public static func parse(_ text: String) throws(CloudError) -> CloudKind {
        guard let kind = CloudKind(rawValue: text.lowercased()) else {
            throw CloudError("unknown cloud '\(text)' (expected one of: \(allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        return kind
    }
}

public enum CloudProviders {
    /// Builds the provider for `kind`. `interface` is required for `l2` (the interface that holds
    /// the VIPs); `oci` is used for `oci` (the config and key are loaded on the first takeover, or
    /// at once with `OCICloudProvider.prepare()`). Checks only what can be checked without I/O.
    public static func make(kind: CloudKind, interface: String?, oci: OCIProviderOptions = OCIProviderOptions(),
                            logger: Logger) throws(CloudError) -> any CloudProvider {
        switch kind {
        case .none:
            return NoneProvider(logger: logger)
        case .l2:
            guard let interface, !interface.isEmpty else {
                throw CloudError("the l2 cloud needs an interface to put the floating IPs on (--interface, e.g. eth0)")
            }
            guard interface.utf8.count < 16, !interface.contains("/"), !interface.contains(where: \.isWhitespace) else {
                throw CloudError("'\(interface)' is not a valid interface name (at most 15 characters, no '/' or spaces)")
            }
            return L2Provider(interface: interface, logger: logger)
        case .oci:
            return OCICloudProvider(options: oci, logger: logger)
        case .bgp:
            throw CloudError("the bgp cloud announces through the running node's BGP speaker (bgp: in its config); there is nothing to move by hand: use tandem node drain or tandem set cistate")
        }
    }
}

/// Does nothing: for setups where something else routes the VIP to the MASTER (BGP, kube-loxilb,
/// a static route the operator moves). Takeover always succeeds at once.
public struct NoneProvider: CloudProvider {
    public let name = "none"
    let logger: Logger

    public init(logger: Logger = Logger(label: "tandem.cloud.none")) { self.logger = logger }

    public func takeover(vips: [IPv4Address], term: UInt64) async throws -> CloudTakeoverResult {
        logger.debug("no cloud provider: nothing to move", metadata: ["vips": "\(vips)", "term": "\(term)"])
        return CloudTakeoverResult(provider: name, durationNanos: 0,
                                   detail: "nothing moved (cloud none: something else routes \(Self.list(vips)))")
    }

    public func release(vips: [IPv4Address]) async {}

    static func list(_ vips: [IPv4Address]) -> String {
        vips.isEmpty ? "no VIPs" : vips.map(\.description).joined(separator: ", ")
    }
}

/// Nanoseconds since `start` on the continuous clock.
public func elapsedNanos(since start: ContinuousClock.Instant) -> UInt64 {
    let d = ContinuousClock.now - start
    let (s, atto) = d.components
    return UInt64(max(s, 0)) &* 1_000_000_000 &+ UInt64(max(atto, 0) / 1_000_000_000)
}

