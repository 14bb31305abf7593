import Foundation
import Testing
@testable import TandemOCI

@Suite struct KeyTests {
    static let forms: [String: (String, String?)] = [
        "PKCS#1": (Fixtures.testKeyPKCS1, nil),
        "PKCS#8": (Fixtures.testKeyPKCS8, nil),
        "PKCS#8 encrypted": (Fixtures.testKeyPKCS8Encrypted, "secret"),
        "legacy encrypted": (Fixtures.testKeyLegacyEncrypted, "secret"),
        "PKCS#1 with unneeded pass phrase": (Fixtures.testKeyPKCS1, "ignored"),
    ]

    @Test(arguments: forms.keys.sorted())
    func loadsEveryFormat(name: String) throws {
        let (pem, passPhrase) = try #require(Self.forms[name])
        let key = try OCIPrivateKey(pem: pem, passPhrase: passPhrase)
        #expect(key.bits == 1024, "\(name)")
        #expect(key.fingerprint == Fixtures.testKeyFingerprint, "\(name)")
    }

    @Test func ignoresTrailingOCIAPIKeyLabel() throws {
        let withNewline = Fixtures.testKeyPKCS8 + "\nOCI_API_KEY\n"
        let without = Fixtures.testKeyPKCS8 + "\nOCI_API_KEY"
        #expect(try OCIPrivateKey(pem: withNewline).fingerprint == Fixtures.testKeyFingerprint)
        #expect(try OCIPrivateKey(pem: without).fingerprint == Fixtures.testKeyFingerprint)
    }

    @Test func encryptedKeyErrors() {
        #expect(throws: OCIKeyError.missingPassPhrase) { try OCIPrivateKey(pem: Fixtures.testKeyPKCS8Encrypted) }
        #expect(throws: OCIKeyError.missingPassPhrase) { try OCIPrivateKey(pem: Fixtures.testKeyLegacyEncrypted, passPhrase: "") }
        for pem in [Fixtures.testKeyPKCS8Encrypted, Fixtures.testKeyLegacyEncrypted] {
            do {
                _ = try OCIPrivateKey(pem: pem, passPhrase: "wrong")
                Issue.record("wrong pass phrase accepted")
            } catch {
                guard case .invalidKey = error else { Issue.record("\(error)"); continue }
                #expect(error.description.contains("wrong pass_phrase"))
            }
        }
    }

    @Test func rejectsNonKeys() {
        #expect(throws: OCIKeyError.notAPrivateKey(label: "PUBLIC KEY")) { try OCIPrivateKey(pem: Fixtures.testPublicKey) }
        #expect(throws: OCIKeyError.noPEMBlock) { try OCIPrivateKey(pem: "hello") }
        do {
            _ = try OCIPrivateKey(pem: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            Issue.record("garbage accepted")
        } catch {
            guard case .invalidKey = error else { Issue.record("\(error)"); return }
        }
    }

    @Test func fingerprintOfAnotherKey() throws {
        let key = try OCIPrivateKey(pem: Fixtures.secondKey2048)
        #expect(key.bits == 2048)
        #expect(key.fingerprint == Fixtures.secondKeyFingerprint)
        #expect(try OCIPublicKey(pem: Fixtures.testPublicKey).fingerprint == Fixtures.testKeyFingerprint)
    }

    @Test func keyFilePermissions() throws {
        let files = MemoryFiles()
        files.put("/k.pem", Fixtures.testKeyPKCS1, mode: 0o644)
        #expect(throws: OCIKeyError.insecurePermissions(path: "/k.pem", mode: 0o644)) {
            try OCIPrivateKey.load(path: "/k.pem", passPhrase: nil, environment: files.environment())
        }
        files.put("/k.pem", Fixtures.testKeyPKCS1, mode: 0o640)
        #expect(throws: OCIKeyError.insecurePermissions(path: "/k.pem", mode: 0o640)) {
            try OCIPrivateKey.load(path: "/k.pem", passPhrase: nil, environment: files.environment())
        }
        files.put("/k.pem", Fixtures.testKeyPKCS1, mode: 0o600)
        #expect(try OCIPrivateKey.load(path: "/k.pem", passPhrase: nil, environment: files.environment()).bits == 1024)
        #expect(throws: OCIKeyError.keyFileNotFound(path: "/missing.pem")) {
            try OCIPrivateKey.load(path: "/missing.pem", passPhrase: nil, environment: files.environment())
        }
    }

    @Test func liveEnvironmentReadsRealFilesAndModes() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("oci-key-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("key.pem").path
        try Fixtures.testKeyPKCS1.write(toFile: path, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: path)
        #expect(throws: OCIKeyError.insecurePermissions(path: path, mode: 0o644)) {
            try OCIPrivateKey.load(path: path, passPhrase: nil, environment: .live)
        }
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path)
        #expect(try OCIPrivateKey.load(path: path, passPhrase: nil, environment: .live).fingerprint == Fixtures.testKeyFingerprint)
    }
}
