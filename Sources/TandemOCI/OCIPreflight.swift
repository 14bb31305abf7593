import Foundation
import Logging

public struct CheckResult: Sendable, Equatable, CustomStringConvertible {
    public enum Status: String, Sendable, Equatable { case ok = "OK", warning = "WARN", failed = "FAIL", skipped = "SKIP" }
    public var name: String
    public var status: Status
    public var detail: String

    public init(_ name: String, _ status: Status, _ detail: String) {
        self.name = name
        self.status = status
        self.detail = detail
    }

    public var description: String { "[\(status.rawValue)] \(name): \(detail)" }
}

/// `tandem cloud check --cloud=oci`: read-only checks that the setup works, in plain words.
public enum OCIPreflight {
    /// Largest clock skew OCI accepts is 5 minutes; warn well before that.
    static let skewWarning: Double = 60
    static let skewLimit: Double = 300

    public static func run(options: OCIProviderOptions, vip: String?, transport: any HTTPTransport = URLSessionTransport(),
                           logger: Logger = Logger(label: "tandem.oci.check")) async -> [CheckResult] {
        var results: [CheckResult] = []
        func skipRest(_ names: [String], because reason: String) {
            results += names.map { CheckResult($0, .skipped, reason) }
        }
        let later = ["key", "fingerprint", "metadata", "endpoint", "vnic", "api-auth", "clock", "private-ips"]

        // 1. Config.
        let config: OCIConfig
        do {
            config = try OCIConfig.load(path: options.configPath, profile: options.profile, environment: options.environment)
            results.append(CheckResult("config", .ok, "profile [\(config.profile)] from \(config.path); keyId \(config.keyId)"))
        } catch {
            results.append(CheckResult("config", .failed, error.description))
            skipRest(later, because: "no usable config")
            return results
        }

        // 2. Key.
        let key: OCIPrivateKey
        do {
            key = try OCIPrivateKey.load(path: config.keyFile, passPhrase: config.passPhrase, environment: options.environment)
            results.append(CheckResult("key", key.bits < 2048 ? .warning : .ok,
                                       "\(config.keyFile): RSA \(key.bits) bits" + (key.bits < 2048 ? " (OCI requires 2048 or more)" : "")))
        } catch {
            results.append(CheckResult("key", .failed, error.description))
            skipRest(Array(later.dropFirst()), because: "no usable key")
            return results
        }

        // 3. Fingerprint.
        if key.fingerprint == config.fingerprint {
            results.append(CheckResult("fingerprint", .ok, key.fingerprint))
        } else {
            results.append(CheckResult("fingerprint", .failed,
                                       "the config says \(config.fingerprint) but \(config.keyFile) has fingerprint \(key.fingerprint): wrong key_file, or the fingerprint of another key; OCI will answer 401"))
        }

        // 4. Metadata service.
        guard let imdsEndpoint = OCIEndpoint(options.imdsEndpoint) else {
            results.append(CheckResult("metadata", .failed, "invalid --imds-endpoint \(options.imdsEndpoint)"))
            skipRest(Array(later.dropFirst(3)), because: "no metadata endpoint")
            return results
        }
        let imds = IMDSClient(endpoint: imdsEndpoint, transport: transport)
        var instance: IMDSInstance?
        do {
            let found = try await imds.instance()
            instance = found
            results.append(CheckResult("metadata", .ok, "instance \(found.id) in \(found.canonicalRegionName ?? found.region ?? "?")"))
        } catch {
            let needed = options.vnicId == nil || (options.apiEndpoint == nil && config.region == nil)
            results.append(CheckResult("metadata", needed ? .failed : .warning, "\(error)"))
        }

        // 5. API endpoint.
        let endpoint: OCIEndpoint
        if let explicit = options.apiEndpoint {
            guard let e = OCIEndpoint(explicit) else {
                results.append(CheckResult("endpoint", .failed, "invalid --api-endpoint \(explicit)"))
                skipRest(Array(later.dropFirst(5)), because: "no API endpoint")
                return results
            }
            endpoint = e
        } else if let region = config.region ?? instance?.canonicalRegionName ?? instance?.region,
                  let e = OCIEndpoint.api(region: region, realmDomain: config.region == nil ? instance?.regionInfo?.realmDomainComponent : nil) {
            endpoint = e
        } else {
            results.append(CheckResult("endpoint", .failed, OCIProviderError.regionUnknown.description))
            skipRest(Array(later.dropFirst(5)), because: "no API endpoint")
            return results
        }
        results.append(CheckResult("endpoint", .ok, endpoint.description))

        // 6. My VNIC.
        var vnicId = options.vnicId
        if let vip {
            if let address = IPv4(vip) {
                if vnicId == nil {
                    do {
                        let vnics = try await imds.vnics()
                        if let vnic = IMDSClient.vnic(containing: address, in: vnics) {
                            vnicId = vnic.vnicId
                            results.append(CheckResult("vnic", .ok, "\(vnic.vnicId) in subnet \(vnic.subnetCidrBlock) holds \(vip)'s subnet"))
                        } else {
                            results.append(CheckResult("vnic", .failed,
                                                       OCIProviderError.vipOutsideEverySubnet(vip: vip, subnets: vnics.map(\.subnetCidrBlock)).description))
                        }
                    } catch {
                        results.append(CheckResult("vnic", .failed, "\(error)"))
                    }
                } else {
                    results.append(CheckResult("vnic", .ok, "configured: \(vnicId ?? "")"))
                }
            } else {
                results.append(CheckResult("vnic", .failed, "\(vip) is not an IPv4 address"))
            }
        } else if vnicId == nil {
            // Without a VIP, use the primary VNIC to prove read access.
            vnicId = try? await imds.vnics().first?.vnicId
            results.append(CheckResult("vnic", vnicId == nil ? .skipped : .ok,
                                       vnicId.map { "primary VNIC \($0) (no --vip given)" } ?? "no --vip given and no VNIC from metadata"))
        } else {
            results.append(CheckResult("vnic", .ok, "configured: \(vnicId ?? "")"))
        }

        // 7. A signed read: authentication, permission, clock skew.
        let api = OCIAPIClient(endpoint: endpoint, signer: OCIRequestSigner(keyId: config.keyId, key: key),
                               transport: transport, logger: logger)
        guard let vnicId else {
            skipRest(["api-auth", "clock", "private-ips"], because: "no VNIC to read")
            return results
        }
        var subnetId: String?
        do {
            let result = try await api.call(method: "GET", target: OCIRequest.getVnic(vnicId: vnicId).target, timeout: .seconds(10))
            switch result {
            case .failure(let error):
                results.append(CheckResult("api-auth", .failed, "cannot reach \(endpoint): \(error)"))
                skipRest(["clock", "private-ips"], because: "API unreachable")
                return results
            case .success(let response):
                results.append(clockCheck(response))
                let rid = response.header("opc-request-id") ?? "none"
                switch response.status {
                case 200:
                    subnetId = (try? JSONDecoder().decode(OCIVnic.self, from: Data(response.body)))?.subnetId
                    results.append(CheckResult("api-auth", .ok, "signed GetVnic accepted; subnet \(subnetId ?? "?") (opc-request-id \(rid))"))
                case 401:
                    let e = OCIServiceError(operation: "GetVnic", status: 401, body: response.body, opcRequestId: rid)
                    results.append(CheckResult("api-auth", .failed, "OCI refused the signature: check user, tenancy, fingerprint, the uploaded public key and the clock (\(e.message); opc-request-id \(rid))"))
                case 404:
                    results.append(CheckResult("api-auth", .failed, "VNIC \(vnicId) not found or not visible: the user's group needs 'use vnics' in the compartment (opc-request-id \(rid))"))
                default:
                    let e = OCIServiceError(operation: "GetVnic", status: response.status, body: response.body, opcRequestId: rid)
                    results.append(CheckResult("api-auth", .failed, e.description))
                }
            }
        } catch {
            results.append(CheckResult("api-auth", .failed, "\(error)"))
        }

        // 8. Where the VIP is now (read-only ListPrivateIps).
        guard let vip, let subnetId else {
            results.append(CheckResult("private-ips", .skipped, vip == nil ? "no --vip given" : "subnet unknown"))
            return results
        }
        do {
            let request = OCIRequest.listPrivateIps(ipAddress: vip, subnetId: subnetId)
            let result = try await api.call(method: "GET", target: request.target, timeout: .seconds(10))
            switch result {
            case .failure(let error):
                results.append(CheckResult("private-ips", .failed, "\(error)"))
            case .success(let response) where response.status == 200:
                let list = (try? JSONDecoder().decode([OCIPrivateIP].self, from: Data(response.body))) ?? []
                if let ip = list.first {
                    let whose = ip.vnicId == vnicId ? "this node's VNIC" : "VNIC \(ip.vnicId ?? "none")"
                    results.append(CheckResult("private-ips", ip.isPrimary == true ? .failed : .ok,
                                               ip.isPrimary == true ? "\(vip) is a primary IP of \(whose); it can't float"
                                                   : "\(vip) is private IP \(ip.id) on \(whose)"))
                } else {
                    results.append(CheckResult("private-ips", .ok, "\(vip) is not assigned yet; a takeover will create it"))
                }
            case .success(let response):
                let e = OCIServiceError(operation: "ListPrivateIps", status: response.status, body: response.body,
                                        opcRequestId: response.header("opc-request-id"))
                results.append(CheckResult("private-ips", .failed, "\(e) (the group needs 'use private-ips' and 'use subnets')"))
            }
        } catch {
            results.append(CheckResult("private-ips", .failed, "\(error)"))
        }
        return results
    }

    static func clockCheck(_ response: HTTPResponse, now: Date = Date()) -> CheckResult {
        guard let header = response.header("date"), let server = HTTPDate.parse(header) else {
            return CheckResult("clock", .warning, "the API sent no Date header; cannot measure skew")
        }
        let skew = now.timeIntervalSince(server)
        let text = String(format: "local clock is %+.0f s from the API's", skew)
        if abs(skew) > skewLimit { return CheckResult("clock", .failed, text + " (over 5 minutes: every request gets 401; fix NTP)") }
        if abs(skew) > skewWarning { return CheckResult("clock", .warning, text + " (check NTP)") }
        return CheckResult("clock", .ok, text)
    }

    /// Plain text for the CLI: one line per check.
    public static func render(_ results: [CheckResult]) -> String {
        results.map(\.description).joined(separator: "\n")
    }

    /// True when nothing failed.
    public static func passed(_ results: [CheckResult]) -> Bool { !results.contains { $0.status == .failed } }
}

/// `tandem cloud assign-vip --cloud=oci --vip A`: the CLI's whole logic.
public enum OCIAssignVIP {
    public static func run(options: OCIProviderOptions, vip: String, transport: any HTTPTransport = URLSessionTransport(),
                           logger: Logger = Logger(label: "tandem.oci.assign")) async throws -> TakeoverReport {
        let provider = try await OCIProvider.make(options: options, transport: transport, logger: logger)
        return try await provider.takeover(vip: vip)
    }
}
