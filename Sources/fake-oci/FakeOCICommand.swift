import ArgumentParser
import FakeOCI
import Foundation
import TandemOCI

/// `fake-oci`: a fake Oracle Cloud (IMDS v2 + the Core API private-IP routes) for tests and the
/// test bed. Verifies every request's signature; never talks to the real OCI.
@main
struct FakeOCICommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fake-oci",
        abstract: "Fake OCI IMDS + Core API (private IPs) that verifies request signatures.",
        discussion: """
        IMDS: /imds/{instance}/opc/v2/{instance,vnics}/ per instance (or /opc/v2/... for the first).
        API:  /20160918/vnics/{id}, /20160918/privateIps[/{id}] (GET, PUT, POST, DELETE).
        Admin (unsigned, loopback): GET /_fake/state, POST /_fake/faults (body: fault specs), DELETE /_fake/faults.
        Fault spec: MATCH:FAULT[xCOUNT], MATCH = * | GET | PUT | POST | list | get-vnic | update | create | imds,
        FAULT = 429 | 500 | 503 | 409 (IncorrectState) | drop | slow=SECONDS. Example: --fault 'update:503x2,list:drop'.
        Hook placeholders: {event} {ip} {vnic} {vnic_ip} {instance} {old_vnic} {private_ip_id}.
        """)

    @Option(help: "Address to listen on (loopback by default).")
    var host = "127.0.0.1"

    @Option(help: "Port (0 = ephemeral; see --port-file).")
    var port = 0

    @Option(help: "Write the bound port to this file once listening.")
    var portFile: String?

    @Option(help: "JSON seed file (instances, subnets, vnics, privateIps). Default: the seed's test bed (llb1, llb2, 10.0.10.143 on llb1).")
    var seed: String?

    @Flag(help: "Print the default seed as JSON and exit.")
    var printSeed = false

    @Option(name: .customLong("public-key"), help: "PEM of an accepted API key (public or private key file). Repeatable.")
    var publicKeys: [String] = []

    @Option(help: "Only accept keyIds with this tenancy OCID.")
    var tenancy: String?

    @Option(help: "Only accept keyIds with this user OCID.")
    var user: String?

    @Option(help: "Faults to inject, consumed in order (see above).")
    var fault: String?

    @Option(name: .customLong("on-move"), help: "Shell command run after each successful move or create (placeholders above).")
    var onMove: String?

    @Option(help: "Largest accepted clock skew in seconds.")
    var maxSkew: Double = 300

    @Flag(help: "Print every request.")
    var verbose = false

    mutating func run() async throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        if printSeed {
            print(String(decoding: try encoder.encode(FakeOCISeed.testBed), as: UTF8.self))
            return
        }
        var world = FakeOCISeed.testBed
        if let seed {
            do {
                world = try JSONDecoder().decode(FakeOCISeed.self, from: Data(contentsOf: URL(fileURLWithPath: seed)))
            } catch {
                throw ValidationError("cannot read seed \(seed): \(error)")
            }
        }
        guard !publicKeys.isEmpty else { throw ValidationError("give at least one --public-key") }
        var keys: [FakeAPIKey] = []
        for path in publicKeys {
            guard let data = FileManager.default.contents(atPath: path) else { throw ValidationError("cannot read \(path)") }
            do {
                let key = try OCIPublicKey(pem: String(decoding: data, as: UTF8.self))
                keys.append(FakeAPIKey(publicKey: key, tenancy: tenancy, user: user))
                print("fake-oci: accepting key \(key.fingerprint) from \(path)")
            } catch {
                throw ValidationError("\(path): \(error)")
            }
        }
        if !(host == "127.0.0.1" || host == "::1" || host == "localhost") {
            print("fake-oci: warning: listening on \(host), not loopback")
        }
        let store = FakeOCIStore(seed: world, keys: keys, hook: onMove)
        await store.setMaxSkew(maxSkew)
        if let fault {
            do { await store.addFaults(try FaultRule.parse(fault)) } catch { throw ValidationError("\(error)") }
        }
        if verbose {
            await store.setObserver { entry in
                let status = entry.status.map(String.init) ?? "dropped"
                var line = "fake-oci: \(entry.method) \(entry.target) -> \(status) [\(entry.opcRequestId)]"
                if let fault = entry.fault { line += " fault=\(fault)" }
                if let auth = entry.authError { line += " auth: \(auth)" }
                print(line)
                fflush(nil)  // all streams; stdout itself is not concurrency-safe to name
            }
        }
        let server = try await FakeOCIServer.start(store: store, host: host, port: port)
        if let portFile { try "\(server.port)\n".write(toFile: portFile, atomically: true, encoding: .utf8) }
        print("fake-oci: listening on \(server.baseURL) (IMDS per instance: \(server.baseURL)/imds/{name})")
        fflush(nil)  // all streams; stdout itself is not concurrency-safe to name
        // Serve until killed.
        while true { try await Task.sleep(for: .seconds(3600)) }
    }
}
