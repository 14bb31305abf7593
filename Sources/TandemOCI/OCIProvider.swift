import Foundation
import Logging
import Synchronization

/// Options shared by the daemon, `tandem cloud check` and `tandem cloud assign-vip`.
public struct OCIProviderOptions: Sendable {
    /// `--oci-config`; nil = the SDK lookup order.
    public var configPath: String?
    /// `--profile`; nil = DEFAULT.
    public var profile: String?
    /// `--api-endpoint`, e.g. `http://127.0.0.1:9443`; nil = derived from the region.
    public var apiEndpoint: String?
    /// `--imds-endpoint`.
    public var imdsEndpoint: String
    /// A configured VNIC OCID; skips IMDS VNIC discovery.
    public var vnicId: String?
    public var policy: TakeoverPolicy
    public var environment: OCIEnvironment

    public init(configPath: String? = nil, profile: String? = nil, apiEndpoint: String? = nil,
                imdsEndpoint: String = IMDSClient.defaultEndpoint, vnicId: String? = nil,
                policy: TakeoverPolicy = TakeoverPolicy(), environment: OCIEnvironment = .live) {
        self.configPath = configPath
        self.profile = profile
        self.apiEndpoint = apiEndpoint
        self.imdsEndpoint = imdsEndpoint
        self.vnicId = vnicId
        self.policy = policy
        self.environment = environment
    }
}

public enum OCIProviderError: Error, Sendable, Equatable, CustomStringConvertible {
    case config(OCIConfigError)
    case key(OCIKeyError)
    case invalidEndpoint(String)
    case imds(IMDSError)
    case regionUnknown
    case invalidVIP(String)
    case vipOutsideEverySubnet(vip: String, subnets: [String])
    case takeover(TakeoverError, attempts: [TakeoverAttempt])

    public var description: String {
        switch self {
        case .config(let e): return "OCI config: \(e)"
        case .key(let e): return "OCI API key: \(e)"
        case .invalidEndpoint(let url): return "invalid endpoint URL '\(url)' (expected http(s)://host[:port])"
        case .imds(let e): return "\(e)"
        case .regionUnknown:
            return "no region: set 'region' in the profile, OCI_REGION, or --api-endpoint (IMDS did not tell it either)"
        case .invalidVIP(let vip): return "\(vip) is not an IPv4 address"
        case .vipOutsideEverySubnet(let vip, let subnets):
            return "VIP \(vip) is in none of this instance's VNIC subnets (\(subnets.isEmpty ? "no VNICs" : subnets.joined(separator: ", "))); nothing was moved"
        case .takeover(let e, let attempts):
            let ids = attempts.compactMap(\.opcRequestId)
            return "takeover failed: \(e)" + (ids.isEmpty ? "" : " [opc-request-ids: \(ids.joined(separator: ", "))]")
        }
    }
}

/// What a takeover did and how long it took.
public struct TakeoverReport: Sendable, Equatable, CustomStringConvertible {
    public var vip: String
    public var vnicId: String
    public var privateIpId: String
    public var outcome: TakeoverOutcome
    public var attempts: [TakeoverAttempt]
    public var duration: Duration

    public var description: String {
        let what: String
        switch outcome {
        case .alreadyAssigned: what = "already on this node's VNIC"
        case .moved(let from): what = "moved from VNIC \(from ?? "none")"
        case .created: what = "created"
        }
        let ms = Int((duration.seconds * 1000).rounded())
        return "\(vip) -> \(vnicId): \(what) (private IP \(privateIpId)) in \(ms) ms, \(attempts.count) call(s); opc-request-ids: "
            + attempts.map { $0.opcRequestId ?? "-" }.joined(separator: ",")
    }
}

/// The OCI cloud provider: moves a floating private IP onto this instance's VNIC.
public final class OCIProvider: Sendable {
    public let config: OCIConfig
    public let key: OCIPrivateKey
    public let api: OCIAPIClient
    public let imds: IMDSClient
    public let options: OCIProviderOptions
    let logger: Logger
    /// VIP -> (my VNIC, its subnet OCID), learnt on the first takeover.
    let cache = Mutex<[String: (vnicId: String, subnetId: String?)]>([:])

    /// True when the config's fingerprint is not the key's (the API will answer 401).
    public var fingerprintMismatch: Bool { key.fingerprint != config.fingerprint }

    public init(config: OCIConfig, key: OCIPrivateKey, api: OCIAPIClient, imds: IMDSClient,
                options: OCIProviderOptions, logger: Logger) {
        self.config = config
        self.key = key
        self.api = api
        self.imds = imds
        self.options = options
        self.logger = logger
    }

    /// Loads the config and key, resolves the API endpoint (explicit, else region from the
    /// profile/OCI_REGION, else IMDS).
    public static func make(options: OCIProviderOptions, transport: any HTTPTransport = URLSessionTransport(),
                            logger: Logger = Logger(label: "tandem.oci")) async throws(OCIProviderError) -> OCIProvider {
        let config: OCIConfig
        do { config = try OCIConfig.load(path: options.configPath, profile: options.profile, environment: options.environment) }
        catch { throw .config(error) }
        let key: OCIPrivateKey
        do { key = try OCIPrivateKey.load(path: config.keyFile, passPhrase: config.passPhrase, environment: options.environment) }
        catch { throw .key(error) }
        if key.fingerprint != config.fingerprint {
            logger.warning("config fingerprint \(config.fingerprint) differs from the key's \(key.fingerprint): the API will refuse the signature")
        }
        guard let imdsEndpoint = OCIEndpoint(options.imdsEndpoint) else { throw .invalidEndpoint(options.imdsEndpoint) }
        let imds = IMDSClient(endpoint: imdsEndpoint, transport: transport)
        let endpoint = try await resolveAPIEndpoint(options: options, config: config, imds: imds)
        let api = OCIAPIClient(endpoint: endpoint, signer: OCIRequestSigner(keyId: config.keyId, key: key),
                               transport: transport, logger: logger)
        return OCIProvider(config: config, key: key, api: api, imds: imds, options: options, logger: logger)
    }

    static func resolveAPIEndpoint(options: OCIProviderOptions, config: OCIConfig, imds: IMDSClient) async throws(OCIProviderError) -> OCIEndpoint {
        if let explicit = options.apiEndpoint {
            guard let endpoint = OCIEndpoint(explicit) else { throw .invalidEndpoint(explicit) }
            return endpoint
        }
        if let region = config.region {
            guard let endpoint = OCIEndpoint.api(region: region, realmDomain: nil) else { throw .invalidEndpoint(region) }
            return endpoint
        }
        let instance: IMDSInstance
        do { instance = try await imds.instance() } catch let error as IMDSError { throw .imds(error) } catch { throw .regionUnknown }
        guard let region = instance.canonicalRegionName ?? instance.regionInfo?.regionIdentifier ?? instance.region,
              let endpoint = OCIEndpoint.api(region: region, realmDomain: instance.regionInfo?.realmDomainComponent) else {
            throw .regionUnknown
        }
        return endpoint
    }

    /// This instance's VNIC for a VIP: the configured OCID, else the IMDS VNIC whose subnet holds it.
    public func myVnic(for vip: String) async throws(OCIProviderError) -> (vnicId: String, subnetCidr: String?) {
        guard let address = IPv4(vip) else { throw .invalidVIP(vip) }
        if let configured = options.vnicId { return (configured, nil) }
        let vnics: [IMDSVnic]
        do { vnics = try await imds.vnics() } catch let error as IMDSError { throw .imds(error) } catch {
            throw .imds(.unavailable("\(error)"))
        }
        guard let vnic = IMDSClient.vnic(containing: address, in: vnics) else {
            throw .vipOutsideEverySubnet(vip: vip, subnets: vnics.map(\.subnetCidrBlock))
        }
        return (vnic.vnicId, vnic.subnetCidrBlock)
    }

    /// Moves (or creates) the VIP onto this instance's VNIC, retrying transient errors within the
    /// policy's deadline. Never deletes the private IP.
    public func takeover(vip: String) async throws -> TakeoverReport {
        let clock = ContinuousClock()
        let start = clock.now
        let cached = cache.withLock { $0[vip] }
        let vnicId: String
        if let cached { vnicId = cached.vnicId } else { vnicId = try await myVnic(for: vip).vnicId }
        var machine = TakeoverMachine(vip: vip, vnicId: vnicId, subnetId: cached?.subnetId, policy: options.policy,
                                      seed: UInt64.random(in: .min ... .max))
        logger.info("OCI takeover of \(vip) onto VNIC \(vnicId) begins")
        var action = machine.start(now: start.duration(to: clock.now))
        while true {
            switch action {
            case .send(let request, let timeout):
                // Cancelled: this node lost its term (HAShell); a move sent now would pull the IP
                // from the node that won.
                try Task.checkCancellation()
                let event = try await api.perform(request, timeout: timeout)
                action = machine.onResponse(event, now: start.duration(to: clock.now))
            case .sleep(let delay):
                logger.info("OCI retry in \(Int(delay.seconds * 1000)) ms")
                try await Task.sleep(for: delay)
                action = machine.onTimer(now: start.duration(to: clock.now))
            case .succeeded(let result):
                let subnetId = machine.subnetId
                cache.withLock { $0[vip] = (vnicId, subnetId) }
                let report = TakeoverReport(vip: vip, vnicId: vnicId, privateIpId: result.privateIpId, outcome: result.outcome,
                                            attempts: result.attempts, duration: start.duration(to: clock.now))
                logger.notice("OCI takeover done: \(report)")
                return report
            case .failed(let error):
                logger.error("OCI takeover of \(vip) failed: \(error)")
                throw OCIProviderError.takeover(error, attempts: machine.attempts)
            }
        }
    }
}
