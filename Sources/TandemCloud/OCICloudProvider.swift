import Foundation
import Logging
import TandemCore
import TandemOCI
import Synchronization

/// Oracle Cloud: each VIP is a secondary private IP that `takeover` moves onto this instance's VNIC
/// through the Core API (TandemOCI's `OCIProvider`: UpdatePrivateIp, or CreatePrivateIp the first
/// time; retries transient errors within the policy's deadline). Several VIPs move concurrently.
///
/// `release` does nothing in the cloud, on purpose: OCI's move is atomic (one UpdatePrivateIp takes
/// the IP from the old VNIC and gives it to the new one), so there is nothing for the old MASTER
/// to delete, and deleting the private IP would break the next takeover's move into a create. The
/// old MASTER stops forwarding for the VIP through the datapath's gate, not through the cloud.
public final class OCICloudProvider: CloudProvider {
    public let name = "oci"
    public let options: OCIProviderOptions
    let transport: any HTTPTransport
    let logger: Logger
    let loaded = Mutex<OCIProvider?>(nil)

    public init(options: OCIProviderOptions, transport: any HTTPTransport = URLSessionTransport(),
                logger: Logger = Logger(label: "tandem.cloud.oci")) {
        self.options = options
        self.transport = transport
        self.logger = logger
    }

    /// Loads the config and API key and resolves the API endpoint (once; later calls reuse it).
    /// `takeover` calls it; call it earlier to find a bad config before the first failover.
    @discardableResult
    public func prepare() async throws(CloudError) -> OCIProvider {
        if let provider = loaded.withLock({ $0 }) { return provider }
        do {
            let made = try await OCIProvider.make(options: options, transport: transport, logger: logger)
            return loaded.withLock { current in
                if let current { return current }
                current = made
                return made
            }
        } catch {
            throw CloudError("\(error)")
        }
    }

    public func takeover(vips: [IPv4Address], term: UInt64) async throws -> CloudTakeoverResult {
        let start = ContinuousClock.now
        var seen = Set<IPv4Address>()
        let vips = vips.filter { seen.insert($0).inserted }
        guard !vips.isEmpty else {
            return CloudTakeoverResult(provider: name, durationNanos: elapsedNanos(since: start), detail: "no VIPs to take over")
        }
        let provider = try await prepare()
        logger.info("OCI takeover", metadata: ["vips": "\(NoneProvider.list(vips))", "term": "\(term)"])
        let outcomes = await withTaskGroup(of: (Int, Result<TakeoverReport, CloudError>).self) { group in
            for (i, vip) in vips.enumerated() {
                group.addTask {
                    do { return (i, .success(try await provider.takeover(vip: vip.description))) } catch {
                        return (i, .failure(CloudError("\(vip): \(error)")))
                    }
                }
            }
            var out = [Result<TakeoverReport, CloudError>?](repeating: nil, count: vips.count)
            for await (i, outcome) in group { out[i] = outcome }
            return out.compactMap { $0 }
        }
        var moved: [String] = []
        var failed: [String] = []
        for outcome in outcomes {
            switch outcome {
            case .success(let report): moved.append(report.description)
            case .failure(let error): failed.append(error.message)
            }
        }
        guard failed.isEmpty else {
            throw CloudError("OCI takeover failed: " + failed.joined(separator: "; ")
                             + (moved.isEmpty ? "" : " (done: " + moved.joined(separator: "; ") + ")"))
        }
        return CloudTakeoverResult(provider: name, durationNanos: elapsedNanos(since: start),
                                   detail: moved.joined(separator: "; "))
    }

    /// Nothing to do in OCI (see the type's documentation): the next MASTER's takeover moves each
    /// private IP to its own VNIC in one atomic call.
    public func release(vips: [IPv4Address]) async {
        logger.debug("OCI release: nothing to do in the cloud; the next master moves the private IPs",
                     metadata: ["vips": "\(NoneProvider.list(vips))"])
    }
}
