import CTandemOpenSSL
import Foundation

public enum OCIKeyError: Error, Equatable, CustomStringConvertible {
    case keyFileNotFound(path: String)
    case keyFileUnreadable(path: String, reason: String)
    /// Group or others may read the key: refuse it, as ssh does.
    case insecurePermissions(path: String, mode: UInt16)
    case noPEMBlock
    case notAPrivateKey(label: String)
    case missingPassPhrase
    /// Wrong pass phrase, or the PEM body is not a valid key.
    case invalidKey(String)
    case notRSA
    case signingFailed(String)

    public var description: String {
        switch self {
        case .keyFileNotFound(let path): return "key_file \(path) does not exist"
        case .keyFileUnreadable(let path, let reason): return "cannot read key_file \(path): \(reason)"
        case .insecurePermissions(let path, let mode):
            return "key_file \(path) is readable by group or others (mode \(String(mode & 0o777, radix: 8))); run: chmod 600 \(path)"
        case .noPEMBlock: return "no -----BEGIN … PRIVATE KEY----- block found in the key file"
        case .notAPrivateKey(let label): return "the key file holds a \(label), not a private key"
        case .missingPassPhrase: return "the private key is encrypted but the profile has no pass_phrase"
        case .invalidKey(let reason): return "cannot load the private key (wrong pass_phrase or damaged key): \(reason)"
        case .notRSA: return "the private key is not an RSA key"
        case .signingFailed(let reason): return "RSA signing failed: \(reason)"
        }
    }
}

/// Drains OpenSSL's thread-local error queue into one line.
func openSSLErrors() -> String {
    var messages: [String] = []
    while true {
        let code = ERR_get_error()
        if code == 0 { break }
        var buffer = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &buffer, buffer.count)
        messages.append(String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }
    return messages.isEmpty ? "unknown OpenSSL error" : messages.joined(separator: "; ")
}

/// The PEM block of a key file. Text outside BEGIN/END (such as the Console's trailing
/// `OCI_API_KEY` label) is ignored.
struct PEMBlock {
    var label: String
    var text: String
    var isEncrypted: Bool

    init(extractingFrom pem: String) throws(OCIKeyError) {
        guard let begin = pem.range(of: "-----BEGIN ") else { throw .noPEMBlock }
        let afterBegin = pem[begin.upperBound...]
        guard let labelEnd = afterBegin.range(of: "-----") else { throw .noPEMBlock }
        let label = String(afterBegin[..<labelEnd.lowerBound])
        let endMarker = "-----END \(label)-----"
        guard let end = pem.range(of: endMarker, range: labelEnd.upperBound..<pem.endIndex) else { throw .noPEMBlock }
        self.label = label
        self.text = String(pem[begin.lowerBound..<end.upperBound]) + "\n"
        self.isEncrypted = label == "ENCRYPTED PRIVATE KEY" || text.contains("Proc-Type: 4,ENCRYPTED")
    }
}

/// An owned EVP_PKEY. Immutable after loading; OpenSSL 3 allows concurrent signing and
/// verifying with one key, which is why the wrappers are Sendable.
final class EVPKey: @unchecked Sendable {
    let pointer: OpaquePointer
    init(_ pointer: OpaquePointer) { self.pointer = pointer }
    deinit { EVP_PKEY_free(pointer) }

    var isRSA: Bool { EVP_PKEY_get_base_id(pointer) == EVP_PKEY_RSA }
    var bits: Int { Int(EVP_PKEY_get_bits(pointer)) }

    /// DER SubjectPublicKeyInfo of the public half.
    var publicKeyDER: [UInt8] {
        let length = i2d_PUBKEY(pointer, nil)
        guard length > 0 else { return [] }
        var der = [UInt8](repeating: 0, count: Int(length))
        der.withUnsafeMutableBufferPointer { buffer in
            var cursor = buffer.baseAddress
            _ = i2d_PUBKEY(pointer, &cursor)
        }
        return der
    }
}

private func withBIO<T>(_ text: String, _ body: (OpaquePointer) -> T) -> T? {
    let bytes = Array(text.utf8)
    return bytes.withUnsafeBytes { raw -> T? in
        guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
        defer { BIO_free(bio) }
        return body(bio)
    }
}

/// Hands the pass phrase (a NUL-terminated C string in `userdata`) to OpenSSL. With no pass
/// phrase it returns 0, so OpenSSL never falls back to prompting on a terminal.
private let passPhraseCallback: @convention(c) (UnsafeMutablePointer<CChar>?, Int32, Int32, UnsafeMutableRawPointer?) -> Int32 = {
    buffer, size, _, userdata in
    guard let buffer, let userdata, size > 0 else { return 0 }
    let source = userdata.assumingMemoryBound(to: CChar.self)
    let length = min(Int(strlen(source)), Int(size))
    buffer.update(from: source, count: length)
    return Int32(length)
}

/// An RSA API signing key.
public struct OCIPrivateKey: Sendable {
    let key: EVPKey

    /// Loads a PEM private key: PKCS#1, PKCS#8, encrypted PKCS#8, or legacy encrypted PKCS#1.
    /// A pass phrase given for an unencrypted key is ignored, as the SDK does.
    public init(pem: String, passPhrase: String? = nil) throws(OCIKeyError) {
        let block = try PEMBlock(extractingFrom: pem)
        guard block.label.hasSuffix("PRIVATE KEY") else { throw .notAPrivateKey(label: block.label) }
        let phrase = block.isEncrypted ? passPhrase : nil
        if block.isEncrypted && (phrase ?? "").isEmpty { throw .missingPassPhrase }
        ERR_clear_error()
        let loaded: OpaquePointer?? = withBIO(block.text) { bio -> OpaquePointer? in
            if let phrase {
                return phrase.withCString { cString in
                    PEM_read_bio_PrivateKey(bio, nil, passPhraseCallback, UnsafeMutableRawPointer(mutating: cString))
                }
            }
            return PEM_read_bio_PrivateKey(bio, nil, passPhraseCallback, nil)
        }
        guard let outer = loaded, let pointer = outer else { throw .invalidKey(openSSLErrors()) }
        let key = EVPKey(pointer)
        guard key.isRSA else { throw .notRSA }
        self.key = key
    }

    /// Reads `key_file`, refusing files that group or others can read.
    public static func load(path: String, passPhrase: String?, environment env: OCIEnvironment) throws(OCIKeyError) -> OCIPrivateKey {
        guard let mode = env.permissions(path) else { throw .keyFileNotFound(path: path) }
        if mode & 0o044 != 0 { throw .insecurePermissions(path: path, mode: mode) }
        let bytes: [UInt8]?
        do { bytes = try env.readFile(path) } catch { throw .keyFileUnreadable(path: path, reason: "\(error)") }
        guard let bytes else { throw .keyFileNotFound(path: path) }
        return try OCIPrivateKey(pem: String(decoding: bytes, as: UTF8.self), passPhrase: passPhrase)
    }

    public var bits: Int { key.bits }
    public var publicKey: OCIPublicKey { OCIPublicKey(key: key) }
    /// MD5 of the DER SubjectPublicKeyInfo, lower-case hex pairs joined by ':' (what the Console shows).
    public var fingerprint: String { publicKey.fingerprint }

    /// RSASSA-PKCS1-v1_5 with SHA-256.
    public func sign(_ data: [UInt8]) throws(OCIKeyError) -> [UInt8] {
        ERR_clear_error()
        guard let context = EVP_MD_CTX_new() else { throw .signingFailed(openSSLErrors()) }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestSignInit(context, nil, EVP_sha256(), nil, key.pointer) == 1 else {
            throw .signingFailed(openSSLErrors())
        }
        var length = 0
        guard EVP_DigestSign(context, nil, &length, data, data.count) == 1 else { throw .signingFailed(openSSLErrors()) }
        var signature = [UInt8](repeating: 0, count: length)
        guard EVP_DigestSign(context, &signature, &length, data, data.count) == 1 else {
            throw .signingFailed(openSSLErrors())
        }
        return Array(signature.prefix(length))
    }
}

/// The public half, for fingerprints and for verifying signatures (the fake server).
public struct OCIPublicKey: Sendable {
    let key: EVPKey

    init(key: EVPKey) { self.key = key }

    /// Accepts a `PUBLIC KEY` PEM or any private-key PEM (its public half is used).
    public init(pem: String, passPhrase: String? = nil) throws(OCIKeyError) {
        let block = try PEMBlock(extractingFrom: pem)
        if block.label == "PUBLIC KEY" {
            ERR_clear_error()
            let loaded: OpaquePointer?? = withBIO(block.text) { PEM_read_bio_PUBKEY($0, nil, nil, nil) }
            guard let outer = loaded, let pointer = outer else { throw .invalidKey(openSSLErrors()) }
            key = EVPKey(pointer)
            guard key.isRSA else { throw .notRSA }
        } else {
            key = try OCIPrivateKey(pem: pem, passPhrase: passPhrase).key
        }
    }

    public var derRepresentation: [UInt8] { key.publicKeyDER }

    public var fingerprint: String {
        Digest.md5(derRepresentation).map { byte in
            let hex = String(byte, radix: 16)
            return byte < 16 ? "0" + hex : hex
        }.joined(separator: ":")
    }

    public func verify(signature: [UInt8], for data: [UInt8]) -> Bool {
        guard let context = EVP_MD_CTX_new() else { return false }
        defer { EVP_MD_CTX_free(context); ERR_clear_error() }
        guard EVP_DigestVerifyInit(context, nil, EVP_sha256(), nil, key.pointer) == 1 else { return false }
        return EVP_DigestVerify(context, signature, signature.count, data, data.count) == 1
    }
}

public enum Digest {
    public static func sha256(_ data: [UInt8]) -> [UInt8] { digest(data, EVP_sha256()) }
    public static func md5(_ data: [UInt8]) -> [UInt8] { digest(data, EVP_md5()) }

    private static func digest(_ data: [UInt8], _ md: OpaquePointer?) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        guard EVP_Digest(data, data.count, &out, &length, md, nil) == 1 else { return [] }
        return Array(out.prefix(Int(length)))
    }
}
