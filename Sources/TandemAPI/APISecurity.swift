import Foundation
import NIOSSL

/// The API's certificate and key, in PEM files (LoxiLB serves HTTPS with --tls the same way).
public struct APITLSFiles: Sendable, Equatable {
    public var certificatePath: String
    public var keyPath: String

    public init(certificatePath: String, keyPath: String) {
        self.certificatePath = certificatePath
        self.keyPath = keyPath
    }

    /// Loads both files now, so a missing or broken one stops the node at start with its name.
    public func serverConfiguration() throws(APITokenError) -> TLSConfiguration {
        for p in [certificatePath, keyPath] where !FileManager.default.isReadableFile(atPath: p) {
            throw APITokenError("TLS file \(p) is missing or unreadable")
        }
        let chain: [NIOSSLCertificate]
        do { chain = try NIOSSLCertificate.fromPEMFile(certificatePath) } catch {
            throw APITokenError("TLS certificate \(certificatePath): not a PEM file NIOSSL can load (\(error))")
        }
        guard !chain.isEmpty else { throw APITokenError("TLS certificate \(certificatePath) holds no certificate") }
        let key: NIOSSLPrivateKey
        do { key = try NIOSSLPrivateKey(file: keyPath, format: .pem) } catch {
            throw APITokenError("TLS key \(keyPath): not a PEM file NIOSSL can load (\(error))")
        }
        return TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) },
                                                        privateKey: .privateKey(key))
    }
}

/// How the API is protected: TLS, a bearer token, and the count of refused requests.
public struct APISecurity: Sendable {
    public var tls: APITLSFiles?
    public var token: APIToken?
    public var counters: APIAuthCounters

    public init(tls: APITLSFiles? = nil, token: APIToken? = nil, counters: APIAuthCounters = APIAuthCounters()) {
        self.tls = tls
        self.token = token
        self.counters = counters
    }
}
