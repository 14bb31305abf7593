import Foundation

/// An IPv4 address as a 32-bit value.
public struct IPv4: Sendable, Hashable, CustomStringConvertible {
    public var value: UInt32

    public init?(_ text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var v: UInt32 = 0
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy({ $0.isASCII && $0.isNumber }), let octet = UInt8(part) else { return nil }
            v = v << 8 | UInt32(octet)
        }
        value = v
    }

    public var description: String {
        "\(value >> 24).\(value >> 16 & 0xff).\(value >> 8 & 0xff).\(value & 0xff)"
    }
}

/// An IPv4 CIDR block such as 10.0.10.0/24.
public struct IPv4CIDR: Sendable, Hashable, CustomStringConvertible {
    public var network: IPv4
    public var prefix: Int

    public init?(_ text: String) {
        let parts = text.split(separator: "/")
        guard parts.count == 2, let address = IPv4(String(parts[0])), let prefix = Int(parts[1]),
              (0...32).contains(prefix) else { return nil }
        self.network = address
        self.prefix = prefix
    }

    var mask: UInt32 { prefix == 0 ? 0 : UInt32.max << (32 - UInt32(prefix)) }

    public func contains(_ address: IPv4) -> Bool { address.value & mask == network.value & mask }
    public var description: String { "\(network)/\(prefix)" }
}

/// `PrivateIp` of the Core API. Decoded tolerantly: only the fields the takeover relies on.
public struct OCIPrivateIP: Codable, Sendable, Equatable {
    public var id: String
    public var ipAddress: String?
    public var vnicId: String?
    public var subnetId: String?
    public var isPrimary: Bool?
    public var displayName: String?

    public init(id: String, ipAddress: String?, vnicId: String?, subnetId: String?, isPrimary: Bool?, displayName: String? = nil) {
        self.id = id
        self.ipAddress = ipAddress
        self.vnicId = vnicId
        self.subnetId = subnetId
        self.isPrimary = isPrimary
        self.displayName = displayName
    }
}

/// `Vnic` of the Core API (the fields used here).
public struct OCIVnic: Codable, Sendable, Equatable {
    public var id: String
    public var subnetId: String
    public var privateIp: String?
    public var isPrimary: Bool?
    public var lifecycleState: String?
}

/// One element of IMDS `/opc/v2/vnics/`.
public struct IMDSVnic: Codable, Sendable, Equatable {
    public var vnicId: String
    public var privateIp: String?
    public var subnetCidrBlock: String
    public var virtualRouterIp: String?
    public var vlanTag: Int?
    public var macAddr: String?
    public var nicIndex: Int?

    public init(vnicId: String, privateIp: String?, subnetCidrBlock: String, virtualRouterIp: String? = nil) {
        self.vnicId = vnicId
        self.privateIp = privateIp
        self.subnetCidrBlock = subnetCidrBlock
        self.virtualRouterIp = virtualRouterIp
    }
}

/// IMDS `/opc/v2/instance/` (the fields used here).
public struct IMDSInstance: Codable, Sendable, Equatable {
    public struct RegionInfo: Codable, Sendable, Equatable {
        public var realmKey: String?
        public var realmDomainComponent: String?
        public var regionKey: String?
        public var regionIdentifier: String?
    }
    public var id: String
    public var compartmentId: String?
    public var region: String?
    public var canonicalRegionName: String?
    public var regionInfo: RegionInfo?
    public var displayName: String?
}

/// The JSON error body of every non-2xx answer.
public struct OCIErrorBody: Codable, Sendable, Equatable {
    public var code: String
    public var message: String
    public init(code: String, message: String) {
        self.code = code
        self.message = message
    }
}

/// A failed API call as the service reported it.
public struct OCIServiceError: Error, Sendable, Equatable, CustomStringConvertible {
    public var operation: String
    public var status: Int
    public var code: String
    public var message: String
    public var opcRequestId: String?

    public init(operation: String, status: Int, code: String, message: String, opcRequestId: String?) {
        self.operation = operation
        self.status = status
        self.code = code
        self.message = message
        self.opcRequestId = opcRequestId
    }

    /// Reads `{"code","message"}`; a body that is not JSON becomes the message, as in the SDK.
    public init(operation: String, status: Int, body: [UInt8], opcRequestId: String?) {
        if let decoded = try? JSONDecoder().decode(OCIErrorBody.self, from: Data(body)) {
            self.init(operation: operation, status: status, code: decoded.code, message: decoded.message,
                      opcRequestId: opcRequestId)
        } else {
            self.init(operation: operation, status: status, code: "Unknown",
                      message: String(decoding: body.prefix(300), as: UTF8.self), opcRequestId: opcRequestId)
        }
    }

    public var description: String {
        "\(operation): HTTP \(status) \(code): \(message) (opc-request-id \(opcRequestId ?? "none"))"
    }

    /// Transient by OCI's retry rules: 409 IncorrectState/ExternalServerIncorrectState/LockConflict,
    /// 429, and 5xx except 501.
    public var isRetryable: Bool {
        switch status {
        case 409: return ["IncorrectState", "ExternalServerIncorrectState", "LockConflict"].contains(code)
        case 429: return true
        case 501: return false
        case 500...599: return true
        default: return false
        }
    }
}

/// Region names and API hosts.
public enum OCIRegion {
    /// Short codes that IMDS may report for the oldest regions, and a few common ones.
    static let shortNames: [String: String] = [
        "iad": "us-ashburn-1", "phx": "us-phoenix-1", "fra": "eu-frankfurt-1", "lhr": "uk-london-1",
        "yyz": "ca-toronto-1", "nrt": "ap-tokyo-1", "icn": "ap-seoul-1", "bom": "ap-mumbai-1",
        "gru": "sa-saopaulo-1", "zrh": "eu-zurich-1", "ams": "eu-amsterdam-1", "syd": "ap-sydney-1",
        "sjc": "us-sanjose-1", "cdg": "eu-paris-1", "mrs": "eu-marseille-1", "sin": "ap-singapore-1",
    ]

    public static func canonical(_ region: String) -> String {
        shortNames[region.lowercased()] ?? region.lowercased()
    }

    /// `iaas.{region}.{realm domain}`; a region containing a dot is already a domain.
    public static func apiHost(region: String, realmDomain: String? = nil) -> String {
        if region.contains(".") { return "iaas.\(region)" }
        return "iaas.\(canonical(region)).\(realmDomain ?? "oraclecloud.com")"
    }
}
