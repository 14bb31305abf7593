/// An IPv4 address held in host byte order; `networkOrder` gives the value as it sits in packets
/// and in the BPF maps.
public struct IPv4Address: Hashable, Comparable, Sendable, CustomStringConvertible, Codable {
    public var value: UInt32

    public init(_ value: UInt32) { self.value = value }

    public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        value = UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d)
    }

    /// Parses dotted-quad text strictly: four decimal octets, no leading zeros, no spaces.
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var v: UInt32 = 0
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy({ $0.isASCII && $0.isNumber }),
                  let octet = UInt8(part), !(part.count > 1 && part.first == "0") else { return nil }
            v = v << 8 | UInt32(octet)
        }
        value = v
    }

    public init(networkOrder: UInt32) { value = UInt32(bigEndian: networkOrder) }
    public var networkOrder: UInt32 { value.bigEndian }

    public var description: String {
        "\(value >> 24).\(value >> 16 & 0xff).\(value >> 8 & 0xff).\(value & 0xff)"
    }

    public var isUnspecified: Bool { value == 0 }
    public var isMulticastOrBroadcast: Bool { value >> 28 == 0xe || value == .max }
    public var isLoopback: Bool { value >> 24 == 127 }

    public static func < (l: Self, r: Self) -> Bool { l.value < r.value }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let a = IPv4Address(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath,
                                                    debugDescription: "'\(text)' is not an IPv4 address"))
        }
        self = a
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

/// An IPv4 prefix such as 10.0.10.0/24.
public struct IPv4Prefix: Hashable, Sendable, CustomStringConvertible {
    public var address: IPv4Address
    public var length: Int

    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let a = IPv4Address(parts[0]) else { return nil }
        let len = parts.count == 2 ? Int(parts[1]) : 32
        guard let len, (0...32).contains(len) else { return nil }
        address = a
        length = len
    }

    /// A prefix from its parts; the length is clamped to 0...32.
    public init(address: IPv4Address, length: Int) {
        self.address = address
        self.length = max(0, min(32, length))
    }

    public var mask: UInt32 { length == 0 ? 0 : UInt32.max << (32 - length) }
    public func contains(_ a: IPv4Address) -> Bool { a.value & mask == address.value & mask }
    public var description: String { "\(address)/\(length)" }
}
