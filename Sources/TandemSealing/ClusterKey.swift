#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Crypto

/// The 32-byte secret every node of a cluster shares. Sync messages are sealed with keys derived
/// from it (Sealing.swift); a node with a different key can neither read nor forge them.
public struct ClusterKey: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible {
    public static let byteCount = 32
    public let bytes: [UInt8]

    /// Nil unless exactly 32 bytes.
    public init?(bytes: [UInt8]) {
        guard bytes.count == Self.byteCount else { return nil }
        self.bytes = bytes
    }

    /// Parses 64 hex digits (either case), nothing else.
    public init?(hex: some StringProtocol) {
        let digits = Array(hex.utf8)
        guard digits.count == 2 * Self.byteCount else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(Self.byteCount)
        var i = 0
        while i < digits.count {
            guard let hi = Self.nibble(digits[i]), let lo = Self.nibble(digits[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        bytes = out
    }

    /// 64 lower-case hex digits, the key file format `load` reads.
    public var hexString: String {
        let table = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(2 * bytes.count)
        for b in bytes {
            out.append(table[Int(b >> 4)])
            out.append(table[Int(b & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// A new random key. Pass `SystemRandomNumberGenerator` (the default) for real keys; tests
    /// pass a seeded generator.
    public static func generate(using rng: inout some RandomNumberGenerator) -> ClusterKey {
        var out: [UInt8] = []
        out.reserveCapacity(byteCount)
        for _ in 0..<(byteCount / 8) {
            let word = rng.next()
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: word >> UInt64(shift))) }
        }
        return ClusterKey(uncheckedBytes: out)
    }

    public static func generate() -> ClusterKey {
        var rng = SystemRandomNumberGenerator()
        return generate(using: &rng)
    }

    /// Reads a key file: 64 hex digits optionally followed by whitespace (what `hexString` plus a
    /// newline writes), or exactly 32 raw bytes. The file must be a regular file that neither
    /// group nor others can access, since anyone holding the key can inject connection entries.
    public static func load(path: String) throws(ClusterKeyError) -> ClusterKey {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            if code == ENOENT { throw .missing(path: path) }
            throw .unreadable(path: path, reason: Self.errorText(code))
        }
        defer { close(fd) }
        // fstat on the open descriptor: the mode checked is that of the file actually read.
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .unreadable(path: path, reason: Self.errorText(errno)) }
        guard st.st_mode & mode_t(S_IFMT) == mode_t(S_IFREG) else { throw .notRegularFile(path: path) }
        let mode = UInt32(st.st_mode) & 0o777
        guard mode & 0o077 == 0 else { throw .tooOpen(path: path, mode: mode) }

        // A valid file is at most 64 digits plus some whitespace; read a little more than that
        // to tell "too long" from a valid key without loading an arbitrary file.
        let limit = 4096
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: limit)
        while data.count < limit {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, limit - data.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw .unreadable(path: path, reason: Self.errorText(errno))
            }
            if n == 0 { break }
            data.append(contentsOf: buffer[0..<n])
        }
        return try parse(data, path: path)
    }

    /// The key file contents rule of `load`, separate so it can be tested without files.
    static func parse(_ data: [UInt8], path: String) throws(ClusterKeyError) -> ClusterKey {
        if data.count == byteCount, !data.allSatisfy({ nibble($0) != nil }) {
            // 32 raw bytes (32 hex digits would be a truncated hex key, reported below).
            return ClusterKey(uncheckedBytes: data)
        }
        var end = data.count
        while end > 0, isWhitespace(data[end - 1]) { end -= 1 }
        let digits = data[0..<end]
        if digits.count == 2 * byteCount, let key = ClusterKey(hex: String(decoding: digits, as: UTF8.self)) {
            return key
        }
        let found = digits.allSatisfy({ nibble($0) != nil })
            ? "\(digits.count) hex digit(s)"
            : "\(data.count) byte(s) that are neither hex digits nor a raw key"
        throw .badFormat(path: path, detail: "expected 64 hex digits or 32 raw bytes, found \(found)")
    }

    /// Never the key itself, so a key cannot end up in a log by accident.
    public var description: String { "ClusterKey(redacted)" }
    public var debugDescription: String { description }

    /// The key material as swift-crypto holds it.
    public var symmetricKey: SymmetricKey { SymmetricKey(data: bytes) }

    private init(uncheckedBytes: [UInt8]) { bytes = uncheckedBytes }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    private static func isWhitespace(_ c: UInt8) -> Bool {
        c == UInt8(ascii: " ") || c == UInt8(ascii: "\n") || c == UInt8(ascii: "\r") || c == UInt8(ascii: "\t")
    }

    private static func errorText(_ code: Int32) -> String {
        guard let s = strerror(code) else { return "errno \(code)" }
        return String(cString: s)
    }
}

/// Why a cluster key file could not be used. Each description is one line naming the path.
public enum ClusterKeyError: Error, Hashable, Sendable, CustomStringConvertible {
    case missing(path: String)
    case unreadable(path: String, reason: String)
    case notRegularFile(path: String)
    /// Group or others have some access (`mode` is the permission bits).
    case tooOpen(path: String, mode: UInt32)
    case badFormat(path: String, detail: String)

    public var path: String {
        switch self {
        case .missing(let p), .unreadable(let p, _), .notRegularFile(let p), .tooOpen(let p, _),
             .badFormat(let p, _):
            p
        }
    }

    public var description: String {
        switch self {
        case .missing(let p):
            "cluster key file \(p) does not exist"
        case .unreadable(let p, let reason):
            "cluster key file \(p) cannot be read: \(reason)"
        case .notRegularFile(let p):
            "cluster key file \(p) is not a regular file"
        case .tooOpen(let p, let mode):
            "key file \(p) is readable by group or others (mode \(Self.octal(mode))); run chmod 600 \(p)"
        case .badFormat(let p, let detail):
            "cluster key file \(p) is malformed: \(detail)"
        }
    }

    private static func octal(_ mode: UInt32) -> String {
        let s = String(mode, radix: 8)
        return String(repeating: "0", count: max(0, 4 - s.count)) + s
    }
}
