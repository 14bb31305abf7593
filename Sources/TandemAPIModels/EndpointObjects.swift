import TandemCore

// LoxiLB's endpoint objects (`POST /netlox/v1/config/endpoint`, swagger model `EndPoint`; loxinet
// `AddEPHost`): a probe for one host, under a key. Wire shape and rules are LoxiLB's; how Tandem
// applies them is in docs/api.md ("Endpoint objects").

/// The body of `POST config/endpoint` as LoxiLB's clients send it. loxicmd's `create endpoint`
/// sends `hostName`, `description`, `probeType`, `probeReq`, `probeResp`, `probeDuration`,
/// `probePort`, `inactiveReTries`; LoxiLB's own model adds `name`. Keys match without regard to
/// case, as Go's encoding/json does; a key LoxiLB does not define is refused by name.
public struct EndpointObjectEntry: Codable, Sendable, Equatable {
    /// The host's address (LoxiLB: required).
    public var hostName: String
    /// The object's key; empty: LoxiLB's `hostName_probeType_probePort`.
    public var name: String?
    public var description: String?
    /// Consecutive failures before the host is marked inactive (LoxiLB default 2); 0: Tandem's.
    public var inactiveReTries: Int?
    /// tcp, udp, http, https, ping or none (older loxicmd: connect-tcp, connect-udp).
    public var probeType: String?
    /// http(s): the URL path; udp: the payload.
    public var probeReq: String?
    /// http(s): text the body must contain; udp: the expected reply.
    public var probeResp: String?
    /// The probe period in seconds (LoxiLB default 60); 0: Tandem's measured 150 ms.
    public var probeDuration: Int?
    public var probePort: Int?
    public var unknownFields: [String] = []

    public init(hostName: String, name: String? = nil, description: String? = nil, inactiveReTries: Int? = nil,
                probeType: String? = nil, probeReq: String? = nil, probeResp: String? = nil, probeDuration: Int? = nil,
                probePort: Int? = nil) {
        self.hostName = hostName
        self.name = name
        self.description = description
        self.inactiveReTries = inactiveReTries
        self.probeType = probeType
        self.probeReq = probeReq
        self.probeResp = probeResp
        self.probeDuration = probeDuration
        self.probePort = probePort
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: ServiceArguments.Key.self)
        var host: String?
        for k in c.allKeys {
            // A JSON null is the same as leaving the key out, as for Go.
            if try c.decodeNil(forKey: k) { continue }
            switch k.stringValue.lowercased() {
            case "hostname": host = try c.decode(String.self, forKey: k)
            case "name": name = try c.decode(String.self, forKey: k)
            case "description": description = try c.decode(String.self, forKey: k)
            case "inactiveretries": inactiveReTries = try c.decode(Int.self, forKey: k)
            case "probetype": probeType = try c.decode(String.self, forKey: k)
            case "probereq": probeReq = try c.decode(String.self, forKey: k)
            case "proberesp": probeResp = try c.decode(String.self, forKey: k)
            case "probeduration": probeDuration = try c.decode(Int.self, forKey: k)
            case "probeport": probePort = try c.decode(Int.self, forKey: k)
            default: unknownFields.append(k.stringValue)
            }
        }
        guard let host else {
            throw DecodingError.keyNotFound(ServiceArguments.Key("hostName"),
                                            .init(codingPath: c.codingPath, debugDescription: "required"))
        }
        hostName = host
        unknownFields.sort()
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: ServiceArguments.Key.self)
        try c.encode(hostName, forKey: .init("hostName"))
        try c.encodeIfPresent(name, forKey: .init("name"))
        try c.encodeIfPresent(description, forKey: .init("description"))
        try c.encodeIfPresent(inactiveReTries, forKey: .init("inactiveReTries"))
        try c.encodeIfPresent(probeType, forKey: .init("probeType"))
        try c.encodeIfPresent(probeReq, forKey: .init("probeReq"))
        try c.encodeIfPresent(probeResp, forKey: .init("probeResp"))
        try c.encodeIfPresent(probeDuration, forKey: .init("probeDuration"))
        try c.encodeIfPresent(probePort, forKey: .init("probePort"))
    }
}

/// A validated endpoint object: LoxiLB's fields, normalized.
public struct EndpointObject: Sendable, Equatable {
    public var key: String
    public var host: IPv4Address
    /// tcp, udp, http, https, ping or none.
    public var probeType: String
    /// 0 for ping and none.
    public var probePort: UInt16
    public var probeReq: String
    public var probeResp: String
    /// Seconds; 0: Tandem's default period.
    public var probeDuration: UInt32
    /// 0: Tandem's default failure count.
    public var inactiveReTries: UInt32
    public var description: String

    /// Most objects a node keeps.
    public static let limit = 4096

    /// LoxiLB's key for an object without a name (loxinet `makeEPKey`).
    public static func key(host: IPv4Address, probeType: String, probePort: UInt16) -> String {
        "\(host)_\(probeType)_\(probePort)"
    }

    /// LoxiLB's key of a monitored rule's endpoint: the host, the type the rule's protocol
    /// implies (tcp, udp) and the endpoint's port. An object with this key supplies the probe
    /// of that endpoint in every monitored rule (loxinet `modNatEpHost`, `syncEPHostState2Rule`).
    public static func ruleKey(_ ep: Endpoint, proto: L4Protocol) -> String {
        key(host: ep.ip, probeType: proto == .udp ? "udp" : "tcp", probePort: ep.port)
    }

    /// The object as `POST config/endpoint` would recreate it (state file, listings).
    public var entry: EndpointObjectEntry {
        EndpointObjectEntry(hostName: host.description, name: key, description: description.isEmpty ? nil : description,
                            inactiveReTries: Int(inactiveReTries), probeType: probeType, probeReq: probeReq,
                            probeResp: probeResp, probeDuration: Int(probeDuration), probePort: Int(probePort))
    }

    /// The probe type as a key and a probe name: LoxiLB's older "connect-" spellings folded in.
    public static func normalize(type: String) -> String {
        let t = type.lowercased()
        return t.hasPrefix("connect-") ? String(t.dropFirst("connect-".count)) : t
    }
}

extension EndpointObjectEntry {
    /// LoxiLB's checks (loxinet `validateEPHostOpts`), with its error words so clients that match
    /// on them still do, and Tandem's limits; every problem names the field.
    public func validated() throws(ServiceError) -> EndpointObject {
        if let f = unknownFields.first {
            throw ServiceError("malformed request: \(f) is not a field of LoxiLB's endpoint object (hostName, name, description, probeType, probeReq, probeResp, probePort, probeDuration, inactiveReTries)")
        }
        guard let host = IPv4Address(hostName) else {
            throw ServiceError("host-parse error: hostName '\(hostName)' is not an IPv4 address")
        }
        let type = EndpointObject.normalize(type: probeType ?? "")
        switch type {
        case "tcp", "udp", "http", "https", "ping", "none": break
        case "sctp": throw ServiceError("host-args unknown probe type: sctp probes are not supported; use tcp, udp, http, https, ping or none")
        default: throw ServiceError("host-args unknown probe type '\(probeType ?? "")': use tcp, udp, http, https, ping or none")
        }
        let port = probePort ?? 0
        guard (0...65535).contains(port) else { throw ServiceError("host-args error: probePort must be 0-65535, got \(port)") }
        if ["tcp", "udp", "http", "https"].contains(type), port == 0 {
            // LoxiLB requires it for tcp and udp; its http(s) probe of port 0 could never succeed.
            throw ServiceError("host-args unknown probe port: probePort is required for \(type) probes")
        }
        if ["ping", "none"].contains(type), port != 0 {
            throw ServiceError("host-args error: probePort \(port) needs probeType tcp, udp, http or https")
        }
        let retries = inactiveReTries ?? 0
        guard (0...100).contains(retries) else { throw ServiceError("host-args error: inactiveReTries must be 0-100, got \(retries)") }
        let duration = probeDuration ?? 0
        guard (0...3600).contains(duration) else {
            throw ServiceError("host-args error: probeDuration must be 0-3600 seconds, got \(duration)")
        }
        let req = probeReq ?? ""
        let resp = probeResp ?? ""
        if ["http", "https"].contains(type), req.contains(where: { $0 == " " || $0 == "\r" || $0 == "\n" }) {
            throw ServiceError("host-args error: probeReq must not contain spaces or line breaks")
        }
        guard req.utf8.count <= 255, resp.utf8.count <= 255 else {
            throw ServiceError("host-args error: probeReq and probeResp must be at most 255 bytes")
        }
        let key = (name ?? "").isEmpty ? EndpointObject.key(host: host, probeType: type, probePort: UInt16(port)) : name ?? ""
        guard key.utf8.count <= 255, !key.contains(where: { $0.isNewline }) else {
            throw ServiceError("host-args error: name must be at most 255 bytes on one line")
        }
        return EndpointObject(key: key, host: host, probeType: type, probePort: UInt16(port), probeReq: req, probeResp: resp,
                              probeDuration: UInt32(duration), inactiveReTries: UInt32(retries),
                              description: description ?? "")
    }
}
