import Foundation

/// RFC 7231 IMF-fixdate ("Thu, 05 Jan 2014 21:31:40 GMT"), formatted and parsed by hand so no
/// locale or time zone setting can change it.
public enum HTTPDate {
    static let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    public static func format(_ date: Date) -> String {
        var t = time_t(date.timeIntervalSince1970.rounded(.down))
        var tm = tm()
        gmtime_r(&t, &tm)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(days[Int(tm.tm_wday)]), \(two(tm.tm_mday)) \(months[Int(tm.tm_mon)]) \(tm.tm_year + 1900) "
            + "\(two(tm.tm_hour)):\(two(tm.tm_min)):\(two(tm.tm_sec)) GMT"
    }

    public static func parse(_ text: String) -> Date? {
        // "Thu, 05 Jan 2014 21:31:40 GMT"
        let parts = text.split(separator: " ")
        guard parts.count == 6, parts[5] == "GMT", let day = Int32(parts[1]),
              let month = months.firstIndex(of: String(parts[2])), let year = Int32(parts[3]) else { return nil }
        let clock = parts[4].split(separator: ":")
        guard clock.count == 3, let h = Int32(clock[0]), let m = Int32(clock[1]), let s = Int32(clock[2]) else { return nil }
        var tm = tm()
        tm.tm_year = year - 1900
        tm.tm_mon = Int32(month)
        tm.tm_mday = day
        tm.tm_hour = h
        tm.tm_min = m
        tm.tm_sec = s
        return Date(timeIntervalSince1970: TimeInterval(timegm(&tm)))
    }
}

/// The headers of one signed request, in signing order, plus what went into the signature.
public struct SignedRequest: Sendable, Equatable {
    /// Lower-case names and values, in the order of the `headers` parameter, then `authorization`.
    public var headers: [(name: String, value: String)]
    public var signingString: String
    public var signature: String
    public var authorization: String

    public static func == (a: SignedRequest, b: SignedRequest) -> Bool {
        a.signingString == b.signingString && a.authorization == b.authorization
            && a.headers.map(\.name) == b.headers.map(\.name) && a.headers.map(\.value) == b.headers.map(\.value)
    }

    public func header(_ name: String) -> String? { headers.first { $0.name == name.lowercased() }?.value }
}

/// OCI HTTP Signature version 1 (draft-cavage-08, rsa-sha256), as the Python and Go SDKs do it.
public struct OCIRequestSigner: Sendable {
    public let keyId: String
    public let key: OCIPrivateKey

    public init(keyId: String, key: OCIPrivateKey) {
        self.keyId = keyId
        self.key = key
    }

    public static let emptyBodySHA256 = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="

    /// Headers signed for a method. POST, PUT and PATCH add the body headers, even for an empty body.
    public static func signedHeaderNames(method: String) -> [String] {
        switch method.uppercased() {
        case "POST", "PUT", "PATCH":
            return ["date", "(request-target)", "host", "content-length", "content-type", "x-content-sha256"]
        default:
            return ["date", "(request-target)", "host"]
        }
    }

    /// Builds the signing string from header values; `(request-target)` must be the path and query
    /// exactly as sent on the wire. Shared with the fake server, which rebuilds it from what it received.
    public static func signingString(names: [String], method: String, target: String,
                                     header: (String) -> String?) -> String? {
        var lines: [String] = []
        for name in names {
            if name == "(request-target)" {
                lines.append("(request-target): \(method.lowercased()) \(target)")
            } else {
                guard let value = header(name) else { return nil }
                lines.append("\(name): \(value)")
            }
        }
        return lines.joined(separator: "\n")
    }

    /// Signs one request. `host` is the authority as it goes in the Host header (with the port
    /// when it is not the scheme's default). `date` is an IMF-fixdate.
    public func sign(method: String, host: String, target: String, body: [UInt8],
                     date: String, contentType: String = "application/json") throws(OCIKeyError) -> SignedRequest {
        let names = Self.signedHeaderNames(method: method)
        var values: [String: String] = ["date": date, "host": host]
        if names.contains("x-content-sha256") {
            values["content-length"] = String(body.count)
            values["content-type"] = contentType
            values["x-content-sha256"] = Data(Digest.sha256(body)).base64EncodedString()
        }
        guard let signingString = Self.signingString(names: names, method: method, target: target,
                                                     header: { values[$0] }) else {
            throw .signingFailed("missing header value")
        }
        let signature = Data(try key.sign(Array(signingString.utf8))).base64EncodedString()
        // Parameter order of the Go SDK (the server accepts any order).
        let authorization = "Signature version=\"1\",headers=\"\(names.joined(separator: " "))\",keyId=\"\(keyId)\","
            + "algorithm=\"rsa-sha256\",signature=\"\(signature)\""
        var headers: [(name: String, value: String)] = names.compactMap { name in
            values[name].map { (name, $0) }
        }
        headers.append(("authorization", authorization))
        return SignedRequest(headers: headers, signingString: signingString, signature: signature,
                             authorization: authorization)
    }
}

/// A parsed `Authorization: Signature k="v",...` header (parameters in any order).
public struct SignatureAuthorization: Sendable, Equatable {
    public var keyId: String
    public var algorithm: String
    public var headers: [String]
    public var signature: String
    public var version: String?

    public init?(header: String) {
        let trimmed = header.trimmingCharacters(in: .whitespaces)
        guard trimmed.lowercased().hasPrefix("signature ") else { return nil }
        var params: [String: String] = [:]
        var rest = Substring(trimmed.dropFirst("signature ".count))
        // k="v" pairs separated by commas; values never contain '"' in OCI.
        while !rest.isEmpty {
            rest = rest.drop(while: { $0 == " " || $0 == "," })
            guard let eq = rest.firstIndex(of: "=") else { break }
            let key = rest[..<eq].trimmingCharacters(in: .whitespaces)
            var afterEq = rest[rest.index(after: eq)...]
            guard afterEq.first == "\"" else { return nil }
            afterEq = afterEq.dropFirst()
            guard let close = afterEq.firstIndex(of: "\"") else { return nil }
            params[key] = String(afterEq[..<close])
            rest = afterEq[afterEq.index(after: close)...]
        }
        guard let keyId = params["keyId"], let algorithm = params["algorithm"],
              let headers = params["headers"], let signature = params["signature"] else { return nil }
        self.keyId = keyId
        self.algorithm = algorithm
        self.headers = headers.split(separator: " ").map { $0.lowercased() }
        self.signature = signature
        self.version = params["version"]
    }
}
