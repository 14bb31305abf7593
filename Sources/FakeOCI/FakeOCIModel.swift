import Foundation
import TandemOCI

/// The initial world of the fake: instances, subnets, VNICs and secondary private IPs.
public struct FakeOCISeed: Codable, Sendable, Equatable {
    public struct Instance: Codable, Sendable, Equatable {
        /// Short name, used in the per-instance IMDS path `/imds/{name}/opc/v2/...`.
        public var name: String
        public var id: String
        public init(name: String, id: String) { self.name = name; self.id = id }
    }
    public struct Subnet: Codable, Sendable, Equatable {
        public var id: String
        public var cidr: String
        public var virtualRouterIp: String?
        public init(id: String, cidr: String, virtualRouterIp: String? = nil) {
            self.id = id; self.cidr = cidr; self.virtualRouterIp = virtualRouterIp
        }
    }
    public struct Vnic: Codable, Sendable, Equatable {
        public var id: String
        public var subnetId: String
        /// The VNIC's primary private IP.
        public var privateIp: String
        /// Instance name the VNIC is attached to.
        public var instance: String
        public init(id: String, subnetId: String, privateIp: String, instance: String) {
            self.id = id; self.subnetId = subnetId; self.privateIp = privateIp; self.instance = instance
        }
    }
    public struct PrivateIp: Codable, Sendable, Equatable {
        public var id: String?
        public var ipAddress: String
        public var vnicId: String?
        public var displayName: String?
        public init(id: String? = nil, ipAddress: String, vnicId: String?, displayName: String? = nil) {
            self.id = id; self.ipAddress = ipAddress; self.vnicId = vnicId; self.displayName = displayName
        }
    }

    public var region: String
    public var realmDomain: String
    public var compartmentId: String
    public var instances: [Instance]
    public var subnets: [Subnet]
    public var vnics: [Vnic]
    public var privateIps: [PrivateIp]

    public init(region: String = "us-ashburn-1", realmDomain: String = "oraclecloud.com",
                compartmentId: String = "ocid1.compartment.oc1..faketestbed",
                instances: [Instance], subnets: [Subnet], vnics: [Vnic], privateIps: [PrivateIp]) {
        self.region = region
        self.realmDomain = realmDomain
        self.compartmentId = compartmentId
        self.instances = instances
        self.subnets = subnets
        self.vnics = vnics
        self.privateIps = privateIps
    }

    /// The seed's OCI layout: llb1 (10.0.10.141) and llb2 (10.0.10.88) in 10.0.10.0/24, with the
    /// floating IP 10.0.10.143 on llb1.
    public static let testBed = FakeOCISeed(
        instances: [Instance(name: "llb1", id: "ocid1.instance.oc1.iad.llb1"),
                    Instance(name: "llb2", id: "ocid1.instance.oc1.iad.llb2")],
        subnets: [Subnet(id: "ocid1.subnet.oc1.iad.lbsubnet", cidr: "10.0.10.0/24", virtualRouterIp: "10.0.10.1")],
        vnics: [Vnic(id: "ocid1.vnic.oc1.iad.llb1", subnetId: "ocid1.subnet.oc1.iad.lbsubnet", privateIp: "10.0.10.141", instance: "llb1"),
                Vnic(id: "ocid1.vnic.oc1.iad.llb2", subnetId: "ocid1.subnet.oc1.iad.lbsubnet", privateIp: "10.0.10.88", instance: "llb2")],
        privateIps: [PrivateIp(id: "ocid1.privateip.oc1.iad.vip143", ipAddress: "10.0.10.143",
                               vnicId: "ocid1.vnic.oc1.iad.llb1", displayName: "tandem-vip")])
}

/// A fault injected into the next matching request(s).
public enum FakeFault: Sendable, Equatable {
    case status(Int, code: String)
    /// Close the connection without answering.
    case drop
    /// Answer normally, but only after this delay (the change is applied either way).
    case delay(Duration)
}

public struct FaultRule: Sendable, Equatable {
    /// `*`, an HTTP method (GET, PUT, POST, DELETE), an operation (list, get-vnic, get-ip, update,
    /// create, delete) or `imds`.
    public var match: String
    public var fault: FakeFault
    public var remaining: Int

    public init(match: String, fault: FakeFault, count: Int = 1) {
        self.match = match.lowercased()
        self.fault = fault
        self.remaining = count
    }

    /// Parses `MATCH:FAULT[xCOUNT]`, e.g. `PUT:429`, `list:503x2`, `*:drop`, `update:slow=2.5`,
    /// `create:409` (409 is IncorrectState). Several rules are separated by commas.
    public static func parse(_ spec: String) throws -> [FaultRule] {
        try spec.split(separator: ",").map { item in
            let text = item.trimmingCharacters(in: .whitespaces)
            guard let colon = text.firstIndex(of: ":") else { throw FakeSpecError(text) }
            let match = String(text[..<colon])
            var faultText = String(text[text.index(after: colon)...])
            var count = 1
            if let x = faultText.lastIndex(of: "x"), let n = Int(faultText[faultText.index(after: x)...]) {
                count = n
                faultText = String(faultText[..<x])
            }
            let fault: FakeFault
            switch faultText.lowercased() {
            case "drop": fault = .drop
            case let s where s.hasPrefix("slow="):
                guard let seconds = Double(s.dropFirst(5)) else { throw FakeSpecError(text) }
                fault = .delay(.milliseconds(Int64(seconds * 1000)))
            default:
                guard let status = Int(faultText) else { throw FakeSpecError(text) }
                fault = .status(status, code: defaultCode(status))
            }
            return FaultRule(match: match, fault: fault, count: count)
        }
    }

    static func defaultCode(_ status: Int) -> String {
        switch status {
        case 400: return "InvalidParameter"
        case 401: return "NotAuthenticated"
        case 404: return "NotAuthorizedOrNotFound"
        case 409: return "IncorrectState"
        case 412: return "NoEtagMatch"
        case 429: return "TooManyRequests"
        case 500: return "InternalServerError"
        case 502: return "BadGateway"
        case 503: return "ServiceUnavailable"
        default: return "Error\(status)"
        }
    }
}

public struct FakeSpecError: Error, CustomStringConvertible {
    public var spec: String
    init(_ spec: String) { self.spec = spec }
    public var description: String { "bad fault spec '\(spec)' (expected MATCH:STATUS|drop|slow=SECONDS[xCOUNT])" }
}

/// `PrivateIp` as the API returns it.
struct PrivateIpJSON: Codable {
    var availabilityDomain = "Uocm:US-ASHBURN-AD-1"
    var compartmentId: String
    var definedTags: [String: [String: String]] = [:]
    var displayName: String?
    var freeformTags: [String: String] = [:]
    var hostnameLabel: String?
    var id: String
    var ipAddress: String
    var isPrimary: Bool
    var subnetId: String
    var timeCreated: String
    var vnicId: String?
    var ipState: String
    var lifetime = "EPHEMERAL"
}

struct VnicJSON: Codable {
    var availabilityDomain = "Uocm:US-ASHBURN-AD-1"
    var compartmentId: String
    var displayName: String
    var hostnameLabel: String?
    var id: String
    var isPrimary = true
    var lifecycleState = "AVAILABLE"
    var macAddress: String
    var privateIp: String
    var skipSourceDestCheck = false
    var subnetId: String
    var timeCreated: String
}
