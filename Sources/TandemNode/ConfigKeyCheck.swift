import Yams

/// Finds the keys of a YAML document that a Decodable type never reads: a misspelt option
/// (`holdSecs:` for `holdSeconds:`) would otherwise be dropped without a word and its default
/// used. The type is decoded a second time through a decoder that walks the composed YAML tree and
/// records, per mapping, which keys the type's `init(from:)` asked for; every other key of a
/// mapping it read is unknown. Run after the real decode succeeded, so the values fit the types.
enum ConfigKeyCheck {
    /// Paths of the unknown keys, as `bgp.neighbors[0].pasword`, in document order.
    static func unknownKeys<T: Decodable>(_ type: T.Type, yaml: String) -> [String] {
        guard let root = try? Yams.compose(yaml: yaml) else { return [] }
        let recorder = Recorder()
        _ = try? T(from: NodeDecoder(node: root, path: [], recorder: recorder))
        return recorder.unknown()
    }

    final class Recorder {
        /// Per mapping read (by path): the mapping, and the keys asked for.
        var mappings: [(path: [String], node: Node.Mapping, asked: Set<String>)] = []
        var index: [String: Int] = [:]

        func opened(_ mapping: Node.Mapping, at path: [String]) -> Int {
            let id = path.joined(separator: "\u{1}")
            if let i = index[id] { return i }
            mappings.append((path, mapping, []))
            index[id] = mappings.count - 1
            return mappings.count - 1
        }

        func asked(_ key: String, in i: Int) { mappings[i].asked.insert(key) }

        func unknown() -> [String] {
            var out: [String] = []
            for m in mappings {
                for (k, _) in m.node {
                    guard let name = k.string, !m.asked.contains(name) else { continue }
                    out.append(Self.render(m.path + [name]))
                }
            }
            return out
        }

        static func render(_ path: [String]) -> String {
            var s = ""
            for p in path {
                if p.hasPrefix("[") { s += p } else { s += s.isEmpty ? p : "." + p }
            }
            return s
        }
    }

    struct Failure: Error {}

    struct NodeDecoder: Decoder {
        let node: Node
        let path: [String]
        let recorder: Recorder
        var codingPath: [any CodingKey] { [] }
        var userInfo: [CodingUserInfoKey: Any] { [:] }

        func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
            guard let m = node.mapping else { throw Failure() }
            return KeyedDecodingContainer(Keyed<Key>(mapping: m, path: path, recorder: recorder,
                                                     id: recorder.opened(m, at: path)))
        }

        func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
            guard let s = node.sequence else { throw Failure() }
            return Unkeyed(items: Array(s), path: path, recorder: recorder)
        }

        func singleValueContainer() throws -> any SingleValueDecodingContainer {
            Single(node: node, path: path, recorder: recorder)
        }
    }

    /// Scalars as YAMLDecoder reads them closely enough for the walk to go on; exact typing is
    /// the real decode's business.
    static func scalar<T: Decodable>(_ type: T.Type, _ node: Node, path: [String], recorder: Recorder) throws -> T {
        let text = node.scalar?.string ?? ""
        switch type {
        case is String.Type: return try cast(text)
        case is Bool.Type: return try cast(["true", "yes", "on"].contains(text.lowercased()))
        case is Int.Type: return try cast(Int(text) ?? 0)
        case is Int32.Type: return try cast(Int32(text) ?? 0)
        case is Int64.Type: return try cast(Int64(text) ?? 0)
        case is UInt.Type: return try cast(UInt(text) ?? 0)
        case is UInt8.Type: return try cast(UInt8(text) ?? 0)
        case is UInt16.Type: return try cast(UInt16(text) ?? 0)
        case is UInt32.Type: return try cast(UInt32(text) ?? 0)
        case is UInt64.Type: return try cast(UInt64(text) ?? 0)
        case is Double.Type: return try cast(Double(text) ?? 0)
        case is Float.Type: return try cast(Float(text) ?? 0)
        default: return try T(from: NodeDecoder(node: node, path: path, recorder: recorder))
        }
    }

    /// YAML's null: a plain `~`, `null` or nothing.
    static func isNull(_ node: Node) -> Bool {
        node.scalar.map { ["", "~", "null", "Null", "NULL"].contains($0.string) && $0.style == .plain } ?? false
    }

    static func cast<T, U>(_ value: U) throws -> T {
        guard let v = value as? T else { throw Failure() }
        return v
    }

    struct Keyed<Key: CodingKey>: KeyedDecodingContainerProtocol {
        let mapping: Node.Mapping
        let path: [String]
        let recorder: Recorder
        let id: Int
        var codingPath: [any CodingKey] { [] }
        var allKeys: [Key] { mapping.keys.compactMap { $0.string.flatMap(Key.init(stringValue:)) } }

        func value(_ key: Key) -> Node? {
            recorder.asked(key.stringValue, in: id)
            return mapping.first { $0.key.string == key.stringValue }?.value
        }

        func contains(_ key: Key) -> Bool { value(key) != nil }

        func decodeNil(forKey key: Key) throws -> Bool {
            guard let v = value(key) else { return true }
            return ConfigKeyCheck.isNull(v)
        }

        func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
            guard let v = value(key) else { throw Failure() }
            return try ConfigKeyCheck.scalar(type, v, path: path + [key.stringValue], recorder: recorder)
        }

        func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws
            -> KeyedDecodingContainer<NestedKey>
        {
            guard let v = value(key) else { throw Failure() }
            return try NodeDecoder(node: v, path: path + [key.stringValue], recorder: recorder).container(keyedBy: type)
        }

        func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
            guard let v = value(key) else { throw Failure() }
            return try NodeDecoder(node: v, path: path + [key.stringValue], recorder: recorder).unkeyedContainer()
        }

        func superDecoder() throws -> any Decoder { throw Failure() }
        func superDecoder(forKey key: Key) throws -> any Decoder { throw Failure() }
    }

    struct Unkeyed: UnkeyedDecodingContainer {
        let items: [Node]
        let path: [String]
        let recorder: Recorder
        var currentIndex = 0
        var codingPath: [any CodingKey] { [] }
        var count: Int? { items.count }
        var isAtEnd: Bool { currentIndex >= items.count }

        mutating func next() throws -> (Node, [String]) {
            guard !isAtEnd else { throw Failure() }
            defer { currentIndex += 1 }
            return (items[currentIndex], path.dropLast() + [(path.last ?? "") + "[\(currentIndex)]"])
        }

        mutating func decodeNil() throws -> Bool { false }

        mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
            let (n, p) = try next()
            return try ConfigKeyCheck.scalar(type, n, path: p, recorder: recorder)
        }

        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
            let (n, p) = try next()
            return try NodeDecoder(node: n, path: p, recorder: recorder).container(keyedBy: type)
        }

        mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
            let (n, p) = try next()
            return try NodeDecoder(node: n, path: p, recorder: recorder).unkeyedContainer()
        }

        mutating func superDecoder() throws -> any Decoder { throw Failure() }
    }

    struct Single: SingleValueDecodingContainer {
        let node: Node
        let path: [String]
        let recorder: Recorder
        var codingPath: [any CodingKey] { [] }
        func decodeNil() -> Bool { ConfigKeyCheck.isNull(node) }
        func decode<T: Decodable>(_ type: T.Type) throws -> T {
            try ConfigKeyCheck.scalar(type, node, path: path, recorder: recorder)
        }
    }
}
