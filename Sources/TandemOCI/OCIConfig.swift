import Foundation

/// Where config files and keys come from. Injected so parsing and lookup are testable without
/// touching the real home directory.
public struct OCIEnvironment: Sendable {
    public var variables: [String: String]
    /// Returns the file's bytes, or nil when it does not exist. Throws when it exists but can't be read.
    public var readFile: @Sendable (String) throws -> [UInt8]?
    /// POSIX permission bits of a file, or nil when it does not exist.
    public var permissions: @Sendable (String) -> UInt16?

    public init(variables: [String: String],
                readFile: @escaping @Sendable (String) throws -> [UInt8]?,
                permissions: @escaping @Sendable (String) -> UInt16?) {
        self.variables = variables
        self.readFile = readFile
        self.permissions = permissions
    }

    public var home: String? { variables["HOME"] }

    /// The real process environment and file system.
    public static var live: OCIEnvironment {
        OCIEnvironment(
            variables: ProcessInfo.processInfo.environment,
            readFile: { path in
                guard FileManager.default.fileExists(atPath: path) else { return nil }
                do {
                    return [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
                } catch {
                    throw OCIConfigError.unreadable(path: path, reason: "\(error.localizedDescription)")
                }
            },
            permissions: { path in
                guard let attrs = try? FileManager.default.attributesOfItem(atPath: path),
                      let mode = attrs[.posixPermissions] as? NSNumber else { return nil }
                return UInt16(truncatingIfNeeded: mode.intValue)
            })
    }

    /// `~` and `~/...` expand to $HOME, as Python's os.path.expanduser does; `~user` is left alone.
    public func expandUser(_ path: String) -> String {
        guard let home, path == "~" || path.hasPrefix("~/") else { return path }
        return home + path.dropFirst()
    }
}

public enum OCIConfigError: Error, Equatable, CustomStringConvertible {
    case fileNotFound(searched: [String])
    case unreadable(path: String, reason: String)
    case malformedLine(path: String, line: Int, text: String)
    case missingSectionHeader(path: String, line: Int)
    case duplicateSection(path: String, line: Int, section: String)
    case duplicateOption(path: String, line: Int, section: String, option: String)
    case profileNotFound(profile: String, path: String, available: [String])
    case missingKey(profile: String, key: String)
    case malformedValue(profile: String, key: String, value: String, expected: String)
    case keyContentInFile(profile: String)
    case regionUnknown(profile: String)

    public var description: String {
        switch self {
        case .fileNotFound(let searched):
            return "OCI config file not found (looked in: \(searched.joined(separator: ", ")))"
        case .unreadable(let path, let reason):
            return "cannot read \(path): \(reason)"
        case .malformedLine(let path, let line, let text):
            return "\(path):\(line): not a 'key = value' line, a [section] header or a comment: \(text)"
        case .missingSectionHeader(let path, let line):
            return "\(path):\(line): a key appears before any [section] header"
        case .duplicateSection(let path, let line, let section):
            return "\(path):\(line): section [\(section)] appears twice"
        case .duplicateOption(let path, let line, let section, let option):
            return "\(path):\(line): key '\(option)' appears twice in section [\(section)]"
        case .profileNotFound(let profile, let path, let available):
            return "profile [\(profile)] not found in \(path) (profiles: \(available.isEmpty ? "none" : available.joined(separator: ", ")); names are case-sensitive)"
        case .missingKey(let profile, let key):
            return "profile [\(profile)] has no '\(key)' (required)"
        case .malformedValue(let profile, let key, let value, let expected):
            return "profile [\(profile)]: '\(key)' = '\(value)' is malformed (expected \(expected))"
        case .keyContentInFile(let profile):
            return "profile [\(profile)]: 'key_content' is not allowed in a config file; use key_file"
        case .regionUnknown(let profile):
            return "profile [\(profile)] has no 'region' and OCI_REGION is not set"
        }
    }
}

/// An INI file parsed with the semantics of Python's `configparser.ConfigParser(interpolation=None)`
/// in strict mode, which is what the OCI Python SDK and CLI use.
public struct OCIConfigFile: Sendable, Equatable {
    public static let defaultSection = "DEFAULT"
    /// Values of [DEFAULT], inherited by every section.
    public var defaults: [String: String] = [:]
    /// Whether the file has a [DEFAULT] header (an absent one still acts as an empty DEFAULT).
    public var hasDefaultSection = false
    /// Sections in file order (excluding DEFAULT), names case-sensitive, option names lower-cased.
    public var sections: [(name: String, values: [String: String])] = []

    public static func == (a: OCIConfigFile, b: OCIConfigFile) -> Bool {
        a.defaults == b.defaults && a.hasDefaultSection == b.hasDefaultSection && a.sections.map(\.name) == b.sections.map(\.name)
            && zip(a.sections, b.sections).allSatisfy { $0.values == $1.values }
    }

    public var sectionNames: [String] { sections.map(\.name) }

    /// The merged values of a profile: DEFAULT's values overridden by the section's own.
    /// `DEFAULT` itself is always present (possibly empty), as in configparser.
    public func profile(_ name: String) -> [String: String]? {
        if name == Self.defaultSection { return hasDefaultSection ? defaults : nil }
        guard let section = sections.first(where: { $0.name == name }) else { return nil }
        return defaults.merging(section.values) { _, own in own }
    }

    public static func parse(_ text: String, path: String = "<config>") throws(OCIConfigError) -> OCIConfigFile {
        var file = OCIConfigFile()
        var seenSections: Set<String> = []
        // Current section's values; nil before the first header.
        var current: (name: String, values: [String: String])?
        var currentKey: String?
        var currentIndent = 0
        var continuation: [String] = []

        func flushValue() {
            guard let key = currentKey, var section = current else { return }
            if !continuation.isEmpty {
                let base = section.values[key] ?? ""
                section.values[key] = ([base] + continuation).joined(separator: "\n")
                current = section
            }
            continuation = []
        }
        func closeSection() {
            flushValue()
            guard let section = current else { return }
            if section.name == defaultSection {
                file.defaults = section.values
                file.hasDefaultSection = true
            } else {
                file.sections.append(section)
            }
        }

        // configparser splits on universal newlines.
        let lines = text.replacingOccurrences(of: "\r\n", with: "\n")
            .replacingOccurrences(of: "\r", with: "\n")
            .split(separator: "\n", omittingEmptySubsequences: false)
        for (index, rawLine) in lines.enumerated() {
            let lineNo = index + 1
            let line = String(rawLine)
            let stripped = line.trimmingCharacters(in: .whitespaces)
            // Whole-line comments only: '#' or ';' as the first non-blank character.
            if stripped.hasPrefix("#") || stripped.hasPrefix(";") { continue }
            if stripped.isEmpty {
                // A blank line ends the current value (simplification of configparser, which would
                // keep blank lines inside an indented multi-line value).
                flushValue()
                currentKey = nil
                continue
            }
            let indent = line.prefix(while: { $0 == " " || $0 == "\t" }).count
            if current != nil, currentKey != nil, indent > currentIndent {
                continuation.append(stripped)
                continue
            }
            flushValue()
            currentIndent = indent
            if stripped.hasPrefix("["), let close = stripped.lastIndex(of: "]") {
                let name = String(stripped[stripped.index(after: stripped.startIndex)..<close])
                if name.isEmpty { throw .malformedLine(path: path, line: lineNo, text: line) }
                closeSection()
                if seenSections.contains(name) {
                    throw .duplicateSection(path: path, line: lineNo, section: name)
                }
                seenSections.insert(name)
                current = (name, [:])
                currentKey = nil
                continue
            }
            guard var section = current else { throw .missingSectionHeader(path: path, line: lineNo) }
            // The first '=' or ':' separates the key from the value.
            guard let delimiter = stripped.firstIndex(where: { $0 == "=" || $0 == ":" }) else {
                throw .malformedLine(path: path, line: lineNo, text: line)
            }
            let key = stripped[..<delimiter].trimmingCharacters(in: .whitespaces).lowercased()
            let value = stripped[stripped.index(after: delimiter)...].trimmingCharacters(in: .whitespaces)
            if key.isEmpty { throw .malformedLine(path: path, line: lineNo, text: line) }
            if section.values[key] != nil {
                throw .duplicateOption(path: path, line: lineNo, section: section.name, option: key)
            }
            section.values[key] = value
            current = section
            currentKey = key
        }
        closeSection()
        return file
    }
}

/// A validated profile: what is needed to sign requests.
public struct OCIConfig: Sendable, Equatable {
    public var path: String
    public var profile: String
    public var user: String
    public var tenancy: String
    public var fingerprint: String
    /// `key_file` with `~` expanded.
    public var keyFile: String
    public var passPhrase: String?
    /// From the profile, else `OCI_REGION`; nil when neither is set (IMDS can still tell it).
    public var region: String?
    /// Every value of the merged profile, for diagnostics.
    public var values: [String: String]

    public var keyId: String { "\(tenancy)/\(user)/\(fingerprint)" }

    static let ocidPattern = #"^([0-9a-zA-Z\-_]+[.:])([0-9a-zA-Z\-_]*[.:]){3,}([0-9a-zA-Z\-_]+)$"#
    static let fingerprintPattern = #"^([0-9a-f]{2}:){15}[0-9a-f]{2}$"#

    /// Lookup order of the OCI SDKs: the explicit path; else `~/.oci/config` if it exists; else
    /// `$OCI_CONFIG_FILE`; else `~/.oraclebmc/config`.
    public static func locate(explicitPath: String?, environment env: OCIEnvironment) throws(OCIConfigError) -> (path: String, text: String) {
        var candidates: [String] = []
        if let explicitPath {
            candidates = [env.expandUser(explicitPath)]
        } else {
            candidates.append(env.expandUser("~/.oci/config"))
            if let fromEnv = env.variables["OCI_CONFIG_FILE"], !fromEnv.isEmpty {
                candidates.append(env.expandUser(fromEnv))
            }
            candidates.append(env.expandUser("~/.oraclebmc/config"))
        }
        for path in candidates {
            let bytes: [UInt8]?
            do {
                bytes = try env.readFile(path)
            } catch let error as OCIConfigError {
                throw error
            } catch {
                throw .unreadable(path: path, reason: "\(error)")
            }
            if let bytes {
                guard let text = String(validating: bytes, as: UTF8.self) else {
                    throw .unreadable(path: path, reason: "not UTF-8 text")
                }
                return (path, text)
            }
        }
        throw .fileNotFound(searched: candidates)
    }

    /// Finds, parses and validates a profile. The profile defaults to DEFAULT.
    public static func load(path explicitPath: String? = nil, profile: String? = nil,
                            environment env: OCIEnvironment) throws(OCIConfigError) -> OCIConfig {
        let (path, text) = try locate(explicitPath: explicitPath, environment: env)
        let file = try OCIConfigFile.parse(text, path: path)
        return try from(file: file, path: path, profile: profile ?? OCIConfigFile.defaultSection, environment: env)
    }

    public static func from(file: OCIConfigFile, path: String, profile: String,
                            environment env: OCIEnvironment) throws(OCIConfigError) -> OCIConfig {
        guard let values = file.profile(profile) else {
            throw .profileNotFound(profile: profile, path: path, available: file.sectionNames)
        }
        if values["key_content"] != nil { throw .keyContentInFile(profile: profile) }
        func required(_ key: String) throws(OCIConfigError) -> String {
            guard let value = values[key], !value.isEmpty else { throw .missingKey(profile: profile, key: key) }
            return value
        }
        func matching(_ key: String, _ pattern: String, _ expected: String) throws(OCIConfigError) -> String {
            let value = try required(key)
            let ok = (try? Regex(pattern)).map { value.wholeMatch(of: $0) != nil } ?? false
            if !ok { throw .malformedValue(profile: profile, key: key, value: value, expected: expected) }
            return value
        }
        let user = try matching("user", ocidPattern, "an OCID such as ocid1.user.oc1..aaaa…")
        let fingerprint = try matching("fingerprint", fingerprintPattern, "16 lower-case hex pairs joined by ':'")
        let keyFile = try required("key_file")
        let tenancy = try matching("tenancy", ocidPattern, "an OCID such as ocid1.tenancy.oc1..aaaa…")
        var region = values["region"].flatMap { $0.isEmpty ? nil : $0 }
        if region == nil, let fromEnv = env.variables["OCI_REGION"], !fromEnv.isEmpty { region = fromEnv }
        let passPhrase = values["pass_phrase"].flatMap { $0.isEmpty ? nil : $0 }
        return OCIConfig(path: path, profile: profile, user: user, tenancy: tenancy, fingerprint: fingerprint,
                         keyFile: env.expandUser(keyFile), passPhrase: passPhrase, region: region, values: values)
    }
}
