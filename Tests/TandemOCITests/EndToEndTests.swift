import FakeOCI
import Foundation
import Logging
import Testing
@testable import TandemOCI

private let vip = "10.0.10.143"
private let llb1 = "ocid1.vnic.oc1.iad.llb1"
private let llb2 = "ocid1.vnic.oc1.iad.llb2"

/// A fake OCI on 127.0.0.1 (ephemeral port) plus a config directory with the test key.
struct FakeBed {
    let server: FakeOCIServer
    let dir: String
    var store: FakeOCIStore { server.store }

    static let fastPolicy = TakeoverPolicy(deadline: .seconds(5), requestTimeout: .seconds(1), maxFailures: 6,
                                           baseDelay: .milliseconds(20), maxDelay: .milliseconds(200))

    static func start(seed: FakeOCISeed = .testBed, keyPEM: String = Fixtures.testKeyPKCS1,
                      configFingerprint: String = Fixtures.testKeyFingerprint, keyMode: Int = 0o600,
                      passPhrase: String? = nil) async throws -> FakeBed {
        let publicKey = try OCIPublicKey(pem: Fixtures.testPublicKey)
        let store = FakeOCIStore(seed: seed, keys: [FakeAPIKey(publicKey: publicKey, tenancy: Fixtures.tenancy, user: Fixtures.user)])
        let server = try await FakeOCIServer.start(store: store)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("oci-e2e-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir + "/.oci", withIntermediateDirectories: true)
        let keyPath = dir + "/.oci/oci_api_key.pem"
        try (keyPEM + "\nOCI_API_KEY\n").write(toFile: keyPath, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: keyMode], ofItemAtPath: keyPath)
        // As in the seed's container: no region line; key_file with ~.
        var config = """
        [DEFAULT]
        user=\(Fixtures.user)
        fingerprint=\(configFingerprint)
        key_file=~/.oci/oci_api_key.pem
        tenancy=\(Fixtures.tenancy)

        """
        if let passPhrase { config += "pass_phrase=\(passPhrase)\n" }
        try config.write(toFile: dir + "/.oci/config", atomically: true, encoding: .utf8)
        return FakeBed(server: server, dir: dir)
    }

    func options(instance: String, profile: String? = nil, policy: TakeoverPolicy = FakeBed.fastPolicy) -> OCIProviderOptions {
        var env = OCIEnvironment.live
        env.variables = ["HOME": dir]
        return OCIProviderOptions(profile: profile, apiEndpoint: server.baseURL, imdsEndpoint: server.imdsURL(instance: instance),
                                  policy: policy, environment: env)
    }

    func provider(_ instance: String, policy: TakeoverPolicy = FakeBed.fastPolicy) async throws -> OCIProvider {
        try await OCIProvider.make(options: options(instance: instance, policy: policy), logger: Logger(label: "test.\(instance)"))
    }

    func stop() async {
        await server.stop()
        try? FileManager.default.removeItem(atPath: dir)
    }

    func operations() async -> [String] { await store.log.map(\.operation) }
}

private func takeoverError(_ body: () async throws -> TakeoverReport) async -> OCIProviderError? {
    do {
        let report = try await body()
        Issue.record("expected a failure, got \(report)")
        return nil
    } catch let error as OCIProviderError {
        return error
    } catch {
        Issue.record("unexpected error \(error)")
        return nil
    }
}

/// Runs a setup step that must fail and returns its error (untyped closure: typed-throws
/// `catch let … as` crashes the 6.3.1 compiler here).
private func setupError(_ body: () async throws -> Any) async -> OCIProviderError? {
    do {
        let value = try await body()
        Issue.record("expected a setup error, got \(value)")
        return nil
    } catch {
        guard let e = error as? OCIProviderError else { Issue.record("unexpected \(error)"); return nil }
        return e
    }
}

@Suite(.serialized) struct EndToEndTests {
    @Test func movesFromTheOtherNodeWithPut() async throws {
        let bed = try await FakeBed.start()
        defer { Task { await bed.stop() } }
        let before = await bed.store.privateIpIds(of: vip)
        let report = try await bed.provider("llb2").takeover(vip: vip)
        #expect(report.outcome == .moved(fromVnicId: llb1))
        #expect(report.vnicId == llb2)
        #expect(await bed.store.owner(of: vip) == llb2)
        // Moved, never deleted and re-created: same OCID.
        #expect(await bed.store.privateIpIds(of: vip) == before)
        let ops = await bed.operations()
        #expect(ops == ["imds", "get-vnic", "list", "update"])
        #expect(await bed.store.log.allSatisfy { $0.authError == nil })
        #expect(report.attempts.allSatisfy { $0.opcRequestId != nil })
        await bed.stop()
    }

    @Test func alreadyOnMyVnicChangesNothing() async throws {
        let bed = try await FakeBed.start()
        let report = try await bed.provider("llb1").takeover(vip: vip)
        #expect(report.outcome == .alreadyAssigned)
        #expect(await bed.store.moveCount == 0)
        #expect(!(await bed.operations()).contains("update"))
        await bed.stop()
    }

    @Test func absentIPIsCreatedThenMoved() async throws {
        let bed = try await FakeBed.start()
        await bed.store.forceDelete(vip)
        let report = try await bed.provider("llb2").takeover(vip: vip)
        #expect(report.outcome == .created)
        #expect(await bed.store.owner(of: vip) == llb2)
        let back = try await bed.provider("llb1").takeover(vip: vip)
        #expect(back.outcome == .moved(fromVnicId: llb2))
        #expect(await bed.store.createCount == 1)
        await bed.stop()
    }

    @Test func transientFaultsAreRetriedAndEveryAttemptIsSigned() async throws {
        let bed = try await FakeBed.start()
        await bed.store.addFaults(try FaultRule.parse("list:500,update:429,update:503,update:409"))
        let report = try await bed.provider("llb2").takeover(vip: vip)
        #expect(report.outcome == .moved(fromVnicId: llb1))
        #expect(report.attempts.map(\.status) == [200, 500, 200, 429, 503, 409, 200])
        #expect(report.attempts.map(\.code) == [nil, "InternalServerError", nil, "TooManyRequests", "ServiceUnavailable", "IncorrectState", nil])
        let log = await bed.store.log
        #expect(log.allSatisfy { $0.authError == nil })
        // Re-signed each attempt: the requests carried distinct opc-request-ids.
        let ids = log.filter { $0.operation == "update" }.map(\.opcRequestId)
        #expect(Set(ids).count == ids.count && ids.count == 4)
        await bed.stop()
    }

    @Test func droppedConnectionLooksAgainThenMoves() async throws {
        let bed = try await FakeBed.start()
        await bed.store.addFaults(try FaultRule.parse("update:drop"))
        let report = try await bed.provider("llb2").takeover(vip: vip)
        #expect(report.outcome == .moved(fromVnicId: llb1))
        #expect(await bed.store.owner(of: vip) == llb2)
        #expect(report.attempts.contains { $0.operation == "UpdatePrivateIp" && $0.status == nil })
        await bed.stop()
    }

    @Test func slowAnswerTimesOutButTheMoveLanded() async throws {
        let bed = try await FakeBed.start()
        await bed.store.addFaults(try FaultRule.parse("update:slow=1.5"))
        var policy = FakeBed.fastPolicy
        policy.requestTimeout = .milliseconds(400)
        let report: TakeoverReport
        do { report = try await bed.provider("llb2", policy: policy).takeover(vip: vip) } catch {
            if case .takeover(_, let attempts) = error as? OCIProviderError { Issue.record("\(attempts)") }
            throw error
        }
        // The fake applied the PUT before its slow answer; the re-lookup sees it done.
        #expect(report.outcome == .alreadyAssigned)
        #expect(await bed.store.moveCount == 1)
        #expect(report.attempts.map(\.operation) == ["GetVnic", "ListPrivateIps", "UpdatePrivateIp", "ListPrivateIps"])
        await bed.stop()
    }

    @Test func wrongKeyGets401OnceAndMovesNothing() async throws {
        // The config names the second key's fingerprint and file: the fake knows only the test key.
        let bed = try await FakeBed.start(keyPEM: Fixtures.secondKey2048, configFingerprint: Fixtures.secondKeyFingerprint)
        let provider = try await bed.provider("llb2")
        let error = await takeoverError { try await provider.takeover(vip: vip) }
        guard case .takeover(.notAuthenticated(let e), let attempts) = error else { Issue.record("\(String(describing: error))"); return }
        #expect(e.code == "NotAuthenticated" && e.opcRequestId != nil)
        #expect(attempts.count == 1)
        #expect(await bed.store.owner(of: vip) == llb1)
        #expect(await bed.store.log.last?.authError?.contains("unknown key fingerprint") == true)
        await bed.stop()
    }

    @Test func fingerprintMismatchIsReportedAndRefused() async throws {
        let bed = try await FakeBed.start(configFingerprint: Fixtures.secondKeyFingerprint)
        let provider = try await bed.provider("llb2")
        #expect(provider.fingerprintMismatch)
        let error = await takeoverError { try await provider.takeover(vip: vip) }
        guard case .takeover(.notAuthenticated, _) = error else { Issue.record("\(String(describing: error))"); return }
        await bed.stop()
    }

    @Test func clockSkewGets401() async throws {
        let bed = try await FakeBed.start()
        await bed.store.setClockOffset(600)
        let provider = try await bed.provider("llb2")
        let error = await takeoverError { try await provider.takeover(vip: vip) }
        guard case .takeover(.notAuthenticated, _) = error else { Issue.record("\(String(describing: error))"); return }
        #expect(await bed.store.log.last?.authError?.contains("clock skew") == true)
        await bed.stop()
    }

    @Test func persistentOutageFailsWithinTheDeadline() async throws {
        let bed = try await FakeBed.start()
        await bed.store.addFaults(try FaultRule.parse("update:503x100"))
        let started = ContinuousClock.now
        let provider = try await bed.provider("llb2")
        let error = await takeoverError { try await provider.takeover(vip: vip) }
        guard case .takeover(.tooManyFailures(let last), _) = error else { Issue.record("\(String(describing: error))"); return }
        #expect(last.contains("503"))
        #expect(ContinuousClock.now - started < .seconds(5))
        #expect(await bed.store.owner(of: vip) == llb1)
        await bed.stop()
    }

    @Test func vipOutsideEverySubnetMovesNothing() async throws {
        let bed = try await FakeBed.start()
        let provider = try await bed.provider("llb2")
        let error = await takeoverError { try await provider.takeover(vip: "192.168.7.7") }
        guard case .vipOutsideEverySubnet(_, let subnets) = error else { Issue.record("\(String(describing: error))"); return }
        #expect(subnets == ["10.0.10.0/24"])
        #expect(!(await bed.operations()).contains { $0 != "imds" })
        await bed.stop()
    }

    @Test func badSetupsFailClearlyBeforeAnyCall() async throws {
        let open = try await FakeBed.start(keyMode: 0o644)
        let e1 = await setupError { try await open.provider("llb2") }
        guard case .key(.insecurePermissions) = e1 else { Issue.record("\(String(describing: e1))"); await open.stop(); return }
        #expect(e1?.description.contains("chmod 600") == true)
        let e2 = await setupError { try await OCIProvider.make(options: open.options(instance: "llb2", profile: "NOPE")) }
        guard case .config(.profileNotFound(let p, _, _)) = e2 else { Issue.record("\(String(describing: e2))"); await open.stop(); return }
        #expect(p == "NOPE")
        #expect(await open.store.log.isEmpty)
        await open.stop()
    }

    @Test func encryptedKeyWithPassPhraseWorks() async throws {
        let bed = try await FakeBed.start(keyPEM: Fixtures.testKeyPKCS8Encrypted, passPhrase: "secret")
        #expect(try await bed.provider("llb2").takeover(vip: vip).outcome == .moved(fromVnicId: llb1))
        await bed.stop()
        let wrong = try await FakeBed.start(keyPEM: Fixtures.testKeyLegacyEncrypted, passPhrase: "nope")
        let e = await setupError { try await wrong.provider("llb2") }
        guard case .key(.invalidKey) = e else { Issue.record("\(String(describing: e))"); await wrong.stop(); return }
        await wrong.stop()
    }

    @Test func twoNodesRacingForAnExistingIP() async throws {
        let bed = try await FakeBed.start()
        await bed.store.forceAssign(vip, to: nil)
        let p1 = try await bed.provider("llb1")
        let p2 = try await bed.provider("llb2")
        async let r1 = p1.takeover(vip: vip)
        async let r2 = p2.takeover(vip: vip)
        let (a, b) = try await (r1, r2)
        let owner = await bed.store.owner(of: vip)
        #expect(owner == llb1 || owner == llb2)
        #expect(await bed.store.privateIpIds(of: vip).count == 1)
        #expect(a.vnicId == llb1 && b.vnicId == llb2)
        await bed.stop()
    }

    @Test func twoNodesRacingToCreate() async throws {
        let bed = try await FakeBed.start()
        await bed.store.forceDelete(vip)
        let p1 = try await bed.provider("llb1")
        let p2 = try await bed.provider("llb2")
        async let r1 = p1.takeover(vip: vip)
        async let r2 = p2.takeover(vip: vip)
        let (a, b) = try await (r1, r2)
        #expect(await bed.store.privateIpIds(of: vip).count == 1)
        #expect(await bed.store.createCount == 1)
        let outcomes = [a.outcome, b.outcome]
        #expect(outcomes.contains(.created))
        await bed.stop()
    }

    @Test func retryTokenMakesCreateIdempotent() async throws {
        let bed = try await FakeBed.start()
        await bed.store.forceDelete(vip)
        let provider = try await bed.provider("llb2")
        let request = OCIRequest.createPrivateIp(vnicId: llb2, ipAddress: vip, retryToken: "token-123")
        let first = try await provider.api.perform(request, timeout: .seconds(2))
        let second = try await provider.api.perform(request, timeout: .seconds(2))
        guard case .http(200, let b1, _, _) = first, case .http(200, let b2, _, _) = second else {
            Issue.record("\(first) \(second)"); await bed.stop(); return
        }
        #expect(b1 == b2)
        #expect(await bed.store.createCount == 1)
        await bed.stop()
    }

    @Test func fakeRejectsTamperedAndUnsignedRequests() async throws {
        let bed = try await FakeBed.start()
        let provider = try await bed.provider("llb2")
        // Signed for one body, sent with another.
        let tampering = TamperingTransport(inner: URLSessionTransport())
        let api = OCIAPIClient(endpoint: provider.api.endpoint, signer: provider.api.signer, transport: tampering, logger: Logger(label: "t"))
        let result = try await api.call(method: "PUT", target: "/20160918/privateIps/ocid1.privateip.oc1.iad.vip143",
                                        body: Array(#"{"vnicId":"ocid1.vnic.oc1.iad.llb2"}"#.utf8), timeout: .seconds(2))
        guard case .success(let response) = result else { Issue.record("\(result)"); await bed.stop(); return }
        #expect(response.status == 401)
        #expect(try JSONDecoder().decode(OCIErrorBody.self, from: Data(response.body)).code == "NotAuthenticated")
        #expect(response.header("opc-request-id") != nil)
        #expect(await bed.store.log.last?.authError?.contains("x-content-sha256") == true)
        #expect(await bed.store.owner(of: vip) == llb1)
        // No signature at all; and IMDS without the bearer header.
        let plain = URLSessionTransport()
        let unsigned = try await plain.send(method: "GET", url: URL(string: bed.server.baseURL + "/20160918/vnics/\(llb2)")!,
                                            headers: [], body: [], timeout: .seconds(2))
        #expect(unsigned.status == 401)
        let imds = try await plain.send(method: "GET", url: URL(string: bed.server.imdsURL(instance: "llb2") + "/opc/v2/vnics/")!,
                                        headers: [], body: [], timeout: .seconds(2))
        #expect(imds.status == 401)
        // Odd queries get a clear answer, not a crash.
        let odd = try await plain.send(method: "GET", url: URL(string: bed.server.baseURL + "/20160918/privateIps?=&a&&=x")!,
                                       headers: [], body: [], timeout: .seconds(2))
        #expect(odd.status == 401)
        let listed = try await api.call(method: "GET", target: "/20160918/privateIps?=&a&&=x", timeout: .seconds(2))
        guard case .success(let oddSigned) = listed else { Issue.record("\(listed)"); await bed.stop(); return }
        #expect(oddSigned.status == 400)
        await bed.stop()
    }

    @Test func regionComesFromIMDSWhenTheConfigHasNone() async throws {
        let bed = try await FakeBed.start()
        var options = bed.options(instance: "llb2")
        options.apiEndpoint = nil
        // Only the endpoint is computed; nothing is sent to it.
        let provider = try await OCIProvider.make(options: options)
        #expect(provider.api.endpoint.description == "https://iaas.us-ashburn-1.oraclecloud.com")
        options.environment.variables["OCI_REGION"] = "eu-frankfurt-1"
        #expect(try await OCIProvider.make(options: options).api.endpoint.host == "iaas.eu-frankfurt-1.oraclecloud.com")
        await bed.stop()
    }

    @Test func hookRunsAfterAMove() async throws {
        let bed = try await FakeBed.start()
        let out = bed.dir + "/hook.out"
        await bed.store.setHook("echo {event} {ip} {vnic_ip} {instance} {old_vnic} > \(out)")
        _ = try await bed.provider("llb2").takeover(vip: vip)
        let written = try String(contentsOfFile: out, encoding: .utf8)
        #expect(written == "move 10.0.10.143 10.0.10.88 llb2 \(llb1)\n")
        #expect(FakeHook.render(template: "x {ip}", values: ["{ip}": "1.2.3.4; rm -rf /"]) == nil)
        await bed.stop()
    }

    @Test func preflightPassesOnAGoodSetup() async throws {
        let bed = try await FakeBed.start()
        let results = await OCIPreflight.run(options: bed.options(instance: "llb2"), vip: vip)
        #expect(results.map(\.name) == ["config", "key", "fingerprint", "metadata", "endpoint", "vnic", "clock", "api-auth", "private-ips"])
        // The 1024-bit test key draws a warning; everything else passes.
        #expect(results.filter { $0.status == .failed }.isEmpty, "\(OCIPreflight.render(results))")
        #expect(results.first { $0.name == "private-ips" }?.detail.contains(llb1) == true)
        #expect(await bed.store.moveCount == 0)
        await bed.stop()
    }

    @Test func preflightNamesEachBrokenSetup() async throws {
        let mismatch = try await FakeBed.start(configFingerprint: Fixtures.secondKeyFingerprint)
        let r1 = await OCIPreflight.run(options: mismatch.options(instance: "llb2"), vip: vip)
        #expect(r1.first { $0.name == "fingerprint" }?.status == .failed)
        #expect(r1.first { $0.name == "api-auth" }?.status == .failed)
        #expect(!OCIPreflight.passed(r1))
        let r2 = await OCIPreflight.run(options: mismatch.options(instance: "llb2"), vip: "172.16.0.5")
        #expect(r2.first { $0.name == "vnic" }?.detail.contains("none of this instance's VNIC subnets") == true)
        await mismatch.store.setClockOffset(-400)
        let r3 = await OCIPreflight.run(options: mismatch.options(instance: "llb2"), vip: vip)
        #expect(r3.first { $0.name == "clock" }?.status == .failed)
        var noConfig = mismatch.options(instance: "llb2")
        noConfig.environment.variables["HOME"] = "/nonexistent"
        let r4 = await OCIPreflight.run(options: noConfig, vip: vip)
        #expect(r4.first?.status == .failed && r4.dropFirst().allSatisfy { $0.status == .skipped })
        #expect(await mismatch.store.moveCount == 0)
        await mismatch.stop()
    }

    @Test func assignVIPCommandLogic() async throws {
        let bed = try await FakeBed.start()
        let report = try await OCIAssignVIP.run(options: bed.options(instance: "llb2"), vip: vip)
        #expect(report.description.contains("moved from VNIC \(llb1)"))
        await bed.stop()
    }
}

/// Changes the body after it was signed, to prove the fake checks x-content-sha256.
struct TamperingTransport: HTTPTransport {
    let inner: any HTTPTransport
    func send(method: String, url: URL, headers: [(String, String)], body: [UInt8], timeout: Duration) async throws -> HTTPResponse {
        var changed = body
        if let i = changed.firstIndex(of: UInt8(ascii: "2")) { changed[i] = UInt8(ascii: "1") }
        return try await inner.send(method: method, url: url, headers: headers, body: changed, timeout: timeout)
    }
}
