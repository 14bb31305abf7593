import Foundation
import TandemOCI

/// A request as the fake received it: the raw request-target, headers (names lower-cased) and body.
public struct FakeRequest: Sendable {
    public var method: String
    public var target: String
    public var headers: [String: String]
    public var body: [UInt8]

    public init(method: String, target: String, headers: [String: String], body: [UInt8]) {
        self.method = method.uppercased()
        self.target = target
        self.headers = headers
        self.body = body
    }
}

public struct FakeReply: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: [UInt8]
    public var delay: Duration?
    public var drop: Bool

    static func json(_ status: Int, _ body: [UInt8], headers: [(String, String)] = []) -> FakeReply {
        FakeReply(status: status, headers: [("content-type", "application/json")] + headers, body: body, delay: nil, drop: false)
    }
}

/// One served request, for tests and the fake's log.
public struct FakeLogEntry: Sendable, Equatable {
    public var method: String
    public var target: String
    public var operation: String
    public var status: Int?
    public var opcRequestId: String
    public var fault: String?
    public var authError: String?
}

/// An accepted API key.
public struct FakeAPIKey: Sendable {
    public var publicKey: OCIPublicKey
    /// When set, keyIds must name this tenancy/user.
    public var tenancy: String?
    public var user: String?

    public init(publicKey: OCIPublicKey, tenancy: String? = nil, user: String? = nil) {
        self.publicKey = publicKey
        self.tenancy = tenancy
        self.user = user
    }
}

/// The fake's state and request handling. An actor: requests from racing clients are applied one
/// at a time, last writer wins.
public actor FakeOCIStore {
    struct IPRecord {
        var id: String
        var ipAddress: String
        var vnicId: String?
        var subnetId: String
        var isPrimary: Bool
        var displayName: String?
        var etag: String
        var created: Date
    }

    let seed: FakeOCISeed
    var keys: [String: FakeAPIKey] = [:]  // by fingerprint
    var ips: [IPRecord] = []
    var retryTokens: [String: FakeReply] = [:]
    var faults: [FaultRule] = []
    var etagCounter = 0
    var idCounter = 0
    public private(set) var log: [FakeLogEntry] = []
    public private(set) var moveCount = 0
    public private(set) var createCount = 0
    /// Seconds added to the real clock, to test skew.
    var clockOffset: TimeInterval = 0
    public var maxSkew: TimeInterval = 300
    /// Shell command run after each successful move/create; see `FakeHook`.
    var hook: String?
    var hookOutput: [String] = []
    /// Called for every served request (the executable prints them).
    var observer: (@Sendable (FakeLogEntry) -> Void)?

    public init(seed: FakeOCISeed, keys: [FakeAPIKey], hook: String? = nil) {
        self.seed = seed
        self.hook = hook
        for key in keys { self.keys[key.publicKey.fingerprint] = key }
        let created = Date(timeIntervalSince1970: 1_767_225_600)
        for vnic in seed.vnics {
            ips.append(IPRecord(id: "ocid1.privateip.oc1.iad.primary-\(vnic.id.split(separator: ".").last ?? "x")",
                                ipAddress: vnic.privateIp, vnicId: vnic.id, subnetId: vnic.subnetId, isPrimary: true,
                                displayName: nil, etag: "etag-0", created: created))
        }
        for (n, ip) in seed.privateIps.enumerated() {
            let address = IPv4(ip.ipAddress)
            let subnet = seed.subnets.first { s in address.map { IPv4CIDR(s.cidr)?.contains($0) == true } ?? false }
            ips.append(IPRecord(id: ip.id ?? "ocid1.privateip.oc1.iad.seeded\(n)", ipAddress: ip.ipAddress, vnicId: ip.vnicId,
                                subnetId: subnet?.id ?? "", isPrimary: false, displayName: ip.displayName,
                                etag: "etag-0", created: created))
        }
    }

    // MARK: - control (tests, admin route)

    public func addFaults(_ rules: [FaultRule]) { faults += rules }
    public func clearFaults() { faults = [] }
    public func setClockOffset(_ seconds: TimeInterval) { clockOffset = seconds }
    public func setMaxSkew(_ seconds: TimeInterval) { maxSkew = seconds }
    public func setHook(_ command: String?) { hook = command }
    public func hookOutputs() -> [String] { hookOutput }
    public func clearLog() { log = [] }
    public func setObserver(_ observer: (@Sendable (FakeLogEntry) -> Void)?) { self.observer = observer }

    /// Current owner VNIC of a (secondary) private IP, or nil when unassigned/absent.
    public func owner(of ipAddress: String) -> String? { ips.first { $0.ipAddress == ipAddress }?.vnicId }
    public func privateIpIds(of ipAddress: String) -> [String] { ips.filter { $0.ipAddress == ipAddress }.map(\.id) }

    /// Moves an IP directly, e.g. to set up a test.
    public func forceAssign(_ ipAddress: String, to vnicId: String?) {
        if let i = ips.firstIndex(where: { $0.ipAddress == ipAddress }) { ips[i].vnicId = vnicId }
    }
    public func forceDelete(_ ipAddress: String) { ips.removeAll { $0.ipAddress == ipAddress && !$0.isPrimary } }

    public func stateJSON() -> [UInt8] {
        let list = ips.map { ["id": $0.id, "ipAddress": $0.ipAddress, "vnicId": $0.vnicId ?? "", "primary": "\($0.isPrimary)"] }
        let object: [String: Any] = ["privateIps": list, "moves": moveCount, "creates": createCount,
                                     "requests": log.count]
        return (try? [UInt8](JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]))) ?? []
    }

    var now: Date { Date().addingTimeInterval(clockOffset) }

    // MARK: - request handling

    public func handle(_ request: FakeRequest) async -> FakeReply {
        let requestId = request.headers["opc-request-id"].map { "\($0)/FAKE\(log.count)" } ?? "FAKE\(log.count)"
        let (path, query) = Self.split(request.target)
        let operation = Self.operation(method: request.method, path: path)
        var entry = FakeLogEntry(method: request.method, target: request.target, operation: operation, status: nil,
                                 opcRequestId: requestId, fault: nil, authError: nil)
        var reply: FakeReply
        if path.hasPrefix("/_fake/") {
            reply = await admin(request, path: path)
        } else if operation == "imds" {
            reply = imds(request, path: path)
        } else if let fault = takeFault(method: request.method, operation: operation) {
            entry.fault = "\(fault)"
            switch fault {
            case .drop:
                log.append(entry)
                observer?(entry)
                return FakeReply(status: 0, headers: [], body: [], delay: nil, drop: true)
            case .status(let status, let code):
                reply = error(status, code, "injected fault")
            case .delay(let duration):
                reply = await api(request, path: path, query: query, operation: operation, entry: &entry)
                reply.delay = duration
            }
        } else {
            reply = await api(request, path: path, query: query, operation: operation, entry: &entry)
        }
        reply.headers.append(("opc-request-id", requestId))
        reply.headers.append(("date", HTTPDate.format(now)))
        entry.status = reply.status
        log.append(entry)
        observer?(entry)
        return reply
    }

    func api(_ request: FakeRequest, path: String, query: [(String, String)], operation: String,
             entry: inout FakeLogEntry) async -> FakeReply {
        guard path.hasPrefix("/20160918/") else { return error(404, "NotFound", "no such operation") }
        if let problem = verify(request) {
            entry.authError = problem
            return error(401, "NotAuthenticated", "The required information to complete authentication was not provided or was incorrect.")
        }
        let parts = path.split(separator: "/").map { String($0).removingPercentEncoding ?? String($0) }
        // parts[0] == "20160918"
        switch (request.method, parts.count > 1 ? parts[1] : "", parts.count) {
        case ("GET", "vnics", 3): return getVnic(parts[2])
        case ("GET", "privateIps", 2): return listPrivateIps(query)
        case ("GET", "privateIps", 3): return getPrivateIp(parts[2])
        case ("PUT", "privateIps", 3): return await updatePrivateIp(parts[2], request)
        case ("POST", "privateIps", 2): return await createPrivateIp(request)
        case ("DELETE", "privateIps", 3): return deletePrivateIp(parts[2])
        default: return error(404, "NotFound", "no such operation \(request.method) \(path)")
        }
    }

    // MARK: - signature verification (every API request)

    /// Returns why the request is not authenticated, or nil when it is.
    func verify(_ request: FakeRequest) -> String? {
        guard let header = request.headers["authorization"] else { return "no Authorization header" }
        guard let auth = SignatureAuthorization(header: header) else { return "Authorization is not a Signature" }
        guard auth.algorithm == "rsa-sha256" else { return "algorithm \(auth.algorithm)" }
        if let version = auth.version, version != "1" { return "version \(version)" }
        let idParts = auth.keyId.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard idParts.count == 3 else { return "keyId is not tenancy/user/fingerprint" }
        guard let key = keys[idParts[2]] else { return "unknown key fingerprint \(idParts[2])" }
        if let tenancy = key.tenancy, tenancy != idParts[0] { return "wrong tenancy" }
        if let user = key.user, user != idParts[1] { return "wrong user" }
        var required = ["(request-target)", "host"]
        if ["POST", "PUT", "PATCH"].contains(request.method) { required += ["content-length", "content-type", "x-content-sha256"] }
        for name in required where !auth.headers.contains(name) { return "header \(name) not signed" }
        guard auth.headers.contains("date") || auth.headers.contains("x-date") else { return "neither date nor x-date signed" }
        guard let signingString = OCIRequestSigner.signingString(names: auth.headers, method: request.method,
                                                                 target: request.target, header: { request.headers[$0] }) else {
            return "a signed header is missing from the request"
        }
        guard let signature = Data(base64Encoded: auth.signature),
              key.publicKey.verify(signature: [UInt8](signature), for: Array(signingString.utf8)) else {
            return "signature does not verify"
        }
        guard let dateText = request.headers["x-date"] ?? request.headers["date"], let date = HTTPDate.parse(dateText) else {
            return "unparsable date"
        }
        if abs(date.timeIntervalSince(now)) > maxSkew { return "clock skew \(Int(date.timeIntervalSince(now))) s" }
        if ["POST", "PUT", "PATCH"].contains(request.method) {
            guard request.headers["x-content-sha256"] == Data(Digest.sha256(request.body)).base64EncodedString() else {
                return "x-content-sha256 does not match the body"
            }
            guard request.headers["content-length"] == String(request.body.count) else { return "content-length mismatch" }
        }
        return nil
    }

    // MARK: - routes

    func getVnic(_ id: String) -> FakeReply {
        guard let vnic = seed.vnics.first(where: { $0.id == id }) else {
            return error(404, "NotAuthorizedOrNotFound", "Authorization failed or requested resource not found.")
        }
        let json = VnicJSON(compartmentId: seed.compartmentId, displayName: vnic.instance, hostnameLabel: vnic.instance,
                            id: vnic.id, macAddress: "02:00:17:00:00:0\(seed.vnics.firstIndex { $0.id == id } ?? 0)",
                            privateIp: vnic.privateIp, subnetId: vnic.subnetId, timeCreated: "2026-01-01T00:00:00.000Z")
        return .json(200, encode(json), headers: [("etag", "vnic-etag")])
    }

    func listPrivateIps(_ query: [(String, String)]) -> FakeReply {
        let q = Dictionary(query, uniquingKeysWith: { a, _ in a })
        var result: [IPRecord]
        if let ip = q["ipAddress"], let subnet = q["subnetId"] {
            result = ips.filter { $0.ipAddress == ip && $0.subnetId == subnet }
        } else if let vnic = q["vnicId"] {
            result = ips.filter { $0.vnicId == vnic }.sorted { $0.isPrimary && !$1.isPrimary }
        } else if let subnet = q["subnetId"] {
            result = ips.filter { $0.subnetId == subnet }
        } else {
            return error(400, "MissingParameter", "This request is missing one of the following arguments: subnetId, vnicId, ipAddress")
        }
        return .json(200, encode(result.map(json)))
    }

    func getPrivateIp(_ id: String) -> FakeReply {
        guard let ip = ips.first(where: { $0.id == id }) else { return notFound() }
        return .json(200, encode(json(ip)), headers: [("etag", ip.etag)])
    }

    func updatePrivateIp(_ id: String, _ request: FakeRequest) async -> FakeReply {
        guard let index = ips.firstIndex(where: { $0.id == id }) else { return notFound() }
        guard let body = try? JSONSerialization.jsonObject(with: Data(request.body)) as? [String: Any] else {
            return error(400, "CannotParseRequest", "body is not a JSON object")
        }
        if body["ipAddress"] != nil { return error(400, "InvalidParameter", "ipAddress can't be updated") }
        if let match = request.headers["if-match"], match != ips[index].etag {
            return error(412, "NoEtagMatch", "The resource's etag does not match the if-match header.")
        }
        if let displayName = body["displayName"] as? String { ips[index].displayName = displayName }
        if let target = body["vnicId"] as? String {
            if ips[index].isPrimary { return error(400, "InvalidParameter", "A primary private IP can't be moved.") }
            guard let vnic = seed.vnics.first(where: { $0.id == target }) else {
                return error(404, "NotAuthorizedOrNotFound", "VNIC \(target) not found or not authorized.")
            }
            guard vnic.subnetId == ips[index].subnetId else {
                return error(400, "InvalidParameter", "The VNIC must be in the same subnet as the private IP.")
            }
            let old = ips[index].vnicId
            if old != target {
                ips[index].vnicId = target
                moveCount += 1
                newEtag(index)
                await runHook(event: "move", ip: ips[index], oldVnic: old)
            }
        }
        return .json(200, encode(json(ips[index])), headers: [("etag", ips[index].etag)])
    }

    func createPrivateIp(_ request: FakeRequest) async -> FakeReply {
        let token = request.headers["opc-retry-token"]
        if let token, let previous = retryTokens[token] { return previous }
        guard let body = try? JSONSerialization.jsonObject(with: Data(request.body)) as? [String: Any] else {
            return error(400, "CannotParseRequest", "body is not a JSON object")
        }
        guard let vnicId = body["vnicId"] as? String else {
            return error(400, "MissingParameter", "This request is missing one of the following arguments: subnetId, vnicId, vlanId")
        }
        guard let vnic = seed.vnics.first(where: { $0.id == vnicId }) else {
            return error(400, "RelatedResourceNotAuthorizedOrNotFound", "VNIC \(vnicId) not found or not authorized.")
        }
        let cidr = seed.subnets.first { $0.id == vnic.subnetId }.flatMap { IPv4CIDR($0.cidr) }
        let address: String
        if let wanted = body["ipAddress"] as? String {
            guard let ip = IPv4(wanted), cidr?.contains(ip) == true else {
                return error(400, "InvalidParameter", "ipAddress \(wanted) is not in the subnet's CIDR.")
            }
            address = wanted
        } else {
            return error(400, "InvalidParameter", "this fake needs an explicit ipAddress")
        }
        if ips.contains(where: { $0.ipAddress == address && $0.subnetId == vnic.subnetId }) {
            return error(409, "Conflict", "The IP address \(address) is already in use.")
        }
        idCounter += 1
        etagCounter += 1
        let record = IPRecord(id: "ocid1.privateip.oc1.iad.created\(idCounter)", ipAddress: address, vnicId: vnicId,
                              subnetId: vnic.subnetId, isPrimary: false, displayName: body["displayName"] as? String,
                              etag: "etag-\(etagCounter)", created: now)
        ips.append(record)
        createCount += 1
        await runHook(event: "create", ip: record, oldVnic: nil)
        let reply = FakeReply.json(200, encode(json(record)), headers: [("etag", record.etag)])
        if let token { retryTokens[token] = reply }
        return reply
    }

    func deletePrivateIp(_ id: String) -> FakeReply {
        guard let index = ips.firstIndex(where: { $0.id == id }) else { return notFound() }
        if ips[index].isPrimary { return error(400, "InvalidParameter", "A primary private IP can't be deleted.") }
        ips.remove(at: index)
        return FakeReply(status: 204, headers: [], body: [], delay: nil, drop: false)
    }

    func imds(_ request: FakeRequest, path: String) -> FakeReply {
        if request.headers["authorization"] != "Bearer Oracle" {
            return error(401, "NotAuthenticated", "IMDS v2 needs Authorization: Bearer Oracle")
        }
        if request.headers["forwarded"] != nil || request.headers["x-forwarded-for"] != nil || request.headers["x-forwarded-host"] != nil {
            return error(403, "NotAllowed", "forwarded requests are rejected")
        }
        if let fault = takeFault(method: request.method, operation: "imds"), case .status(let s, let c) = fault {
            return error(s, c, "injected fault")
        }
        // /imds/{name}/opc/v2/... selects an instance; /opc/v2/... is the first one.
        var rest = Substring(path)
        var instance = seed.instances.first
        if rest.hasPrefix("/imds/") {
            let afterPrefix = rest.dropFirst("/imds/".count)
            let name = afterPrefix.prefix(while: { $0 != "/" })
            instance = seed.instances.first { $0.name == name }
            rest = afterPrefix.dropFirst(name.count)
        }
        guard let instance else { return error(404, "NotFound", "unknown instance") }
        switch rest {
        case "/opc/v2/instance/", "/opc/v2/instance":
            let object: [String: Any] = [
                "id": instance.id, "compartmentId": seed.compartmentId, "displayName": instance.name, "hostname": instance.name,
                "region": seed.region, "canonicalRegionName": seed.region, "availabilityDomain": "Uocm:US-ASHBURN-AD-1",
                "shape": "VM.Standard.E4.Flex", "state": "Running", "timeCreated": 1_767_225_600_000,
                "regionInfo": ["realmKey": "oc1", "realmDomainComponent": seed.realmDomain, "regionKey": "IAD",
                               "regionIdentifier": seed.region],
            ]
            return .json(200, (try? [UInt8](JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted]))) ?? [])
        case "/opc/v2/instance/region":
            return FakeReply(status: 200, headers: [("content-type", "text/plain")], body: Array(seed.region.utf8), delay: nil, drop: false)
        case "/opc/v2/vnics/", "/opc/v2/vnics":
            let list: [[String: Any]] = seed.vnics.filter { $0.instance == instance.name }.enumerated().map { n, vnic in
                let subnet = seed.subnets.first { $0.id == vnic.subnetId }
                return ["vnicId": vnic.id, "privateIp": vnic.privateIp, "vlanTag": n, "macAddr": "02:00:17:00:00:0\(n)",
                        "virtualRouterIp": subnet?.virtualRouterIp ?? "", "subnetCidrBlock": subnet?.cidr ?? "", "nicIndex": 0]
            }
            return .json(200, (try? [UInt8](JSONSerialization.data(withJSONObject: list, options: [.prettyPrinted]))) ?? [])
        default:
            return error(404, "NotFound", "no such metadata path")
        }
    }

    func admin(_ request: FakeRequest, path: String) async -> FakeReply {
        switch (request.method, path) {
        case ("GET", "/_fake/state"): return .json(200, stateJSON())
        case ("POST", "/_fake/faults"):
            do {
                addFaults(try FaultRule.parse(String(decoding: request.body, as: UTF8.self)))
                return .json(200, Array(#"{"ok":true}"#.utf8))
            } catch {
                return self.error(400, "InvalidParameter", "\(error)")
            }
        case ("DELETE", "/_fake/faults"):
            clearFaults()
            return .json(200, Array(#"{"ok":true}"#.utf8))
        default: return error(404, "NotFound", "no such admin route")
        }
    }

    // MARK: - helpers

    func takeFault(method: String, operation: String) -> FakeFault? {
        guard let index = faults.firstIndex(where: { rule in
            rule.remaining > 0 && (rule.match == "*" && operation != "imds" || rule.match == method.lowercased() && operation != "imds"
                                   || rule.match == operation)
        }) else { return nil }
        faults[index].remaining -= 1
        let fault = faults[index].fault
        if faults[index].remaining == 0 { faults.remove(at: index) }
        return fault
    }

    static func operation(method: String, path: String) -> String {
        if path.hasPrefix("/opc/") || path.hasPrefix("/imds/") { return "imds" }
        let parts = path.split(separator: "/")
        guard parts.count >= 2 else { return "other" }
        switch (method, parts[1], parts.count) {
        case ("GET", "vnics", 3): return "get-vnic"
        case ("GET", "privateIps", 2): return "list"
        case ("GET", "privateIps", 3): return "get-ip"
        case ("PUT", "privateIps", 3): return "update"
        case ("POST", "privateIps", 2): return "create"
        case ("DELETE", "privateIps", 3): return "delete"
        default: return "other"
        }
    }

    static func split(_ target: String) -> (String, [(String, String)]) {
        guard let q = target.firstIndex(of: "?") else { return (target, []) }
        let query = target[target.index(after: q)...].split(separator: "&").map { pair -> (String, String) in
            // Never empty with omittingEmptySubsequences: false, so first is safe even for "=".
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                .map { String($0).removingPercentEncoding ?? String($0) }
            return (kv.first ?? "", kv.count > 1 ? kv[1] : "")
        }
        return (String(target[..<q]), query)
    }

    func newEtag(_ index: Int) {
        etagCounter += 1
        ips[index].etag = "etag-\(etagCounter)"
    }

    func json(_ ip: IPRecord) -> PrivateIpJSON {
        PrivateIpJSON(compartmentId: seed.compartmentId, displayName: ip.displayName, id: ip.id, ipAddress: ip.ipAddress,
                      isPrimary: ip.isPrimary, subnetId: ip.subnetId, timeCreated: "2026-01-01T00:00:00.000Z",
                      vnicId: ip.vnicId, ipState: ip.vnicId == nil ? "AVAILABLE" : "ASSIGNED")
    }

    func encode<T: Encodable>(_ value: T) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return (try? [UInt8](encoder.encode(value))) ?? []
    }

    func error(_ status: Int, _ code: String, _ message: String) -> FakeReply {
        .json(status, encode(OCIErrorBody(code: code, message: message)))
    }

    func notFound() -> FakeReply {
        error(404, "NotAuthorizedOrNotFound", "Authorization failed or requested resource not found.")
    }

    func runHook(event: String, ip: IPRecord, oldVnic: String?) async {
        guard let hook else { return }
        let vnic = seed.vnics.first { $0.id == ip.vnicId }
        let values = ["{event}": event, "{ip}": ip.ipAddress, "{vnic}": ip.vnicId ?? "", "{old_vnic}": oldVnic ?? "",
                      "{private_ip_id}": ip.id, "{vnic_ip}": vnic?.privateIp ?? "", "{instance}": vnic?.instance ?? ""]
        let output = await FakeHook.run(template: hook, values: values)
        hookOutput.append(output)
    }
}

/// Runs the `--on-move` command through /bin/sh with placeholders substituted. Values are
/// checked to hold only [A-Za-z0-9._:-] so they can't inject shell syntax.
public enum FakeHook {
    public static func render(template: String, values: [String: String]) -> String? {
        let allowed = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")
        var command = template
        for (placeholder, value) in values {
            guard value.allSatisfy({ allowed.contains($0) }) else { return nil }
            command = command.replacingOccurrences(of: placeholder, with: value)
        }
        return command
    }

    /// Returns "exit N: output" (or why it did not run).
    public static func run(template: String, values: [String: String]) async -> String {
        guard let command = render(template: template, values: values) else { return "not run: unsafe placeholder value" }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", command]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        return await withCheckedContinuation { continuation in
            process.terminationHandler = { p in
                let data = pipe.fileHandleForReading.readDataToEndOfFile()
                continuation.resume(returning: "exit \(p.terminationStatus): \(String(decoding: data, as: UTF8.self))")
            }
            do { try process.run() } catch {
                process.terminationHandler = nil
                continuation.resume(returning: "not run: \(error)")
            }
        }
    }
}
