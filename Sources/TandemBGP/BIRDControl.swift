/// BIRD's control-socket replies (the protocol birdc speaks): lines of a 4-digit code and a
/// separator, `-` when more lines follow and a space on the last; a line that begins with a space
/// continues the previous code. Codes 0xxx end a command well, 1xxx are table rows, 2xxx table
/// headings, 8xxx run-time errors and 9xxx parse errors. Pure, so the parsing is tested without
/// a BIRD.
public struct BIRDReply: Sendable, Equatable {
    public struct Line: Sendable, Equatable {
        public var code: Int
        public var text: String
        public init(code: Int, text: String) {
            self.code = code
            self.text = text
        }
    }

    public var lines: [Line]
    /// The code of the last line.
    public var code: Int

    public init(lines: [Line], code: Int) {
        self.lines = lines
        self.code = code
    }

    public var isError: Bool { code >= 8000 }
    /// The text of every line, for messages.
    public var text: String { lines.map(\.text).joined(separator: "\n") }
}

public struct BIRDReplyParser: Sendable {
    private var pending: [BIRDReply.Line] = []
    private var lastCode = 0

    public init() {}

    public enum ParseError: Error, Sendable, Equatable, CustomStringConvertible {
        case malformed(String)
        public var description: String {
            switch self { case .malformed(let l): "malformed BIRD control reply line: \(l.prefix(80))" }
        }
    }

    /// Takes one line (without its newline); returns the whole reply once its last line arrived.
    public mutating func feed(_ line: String) throws(ParseError) -> BIRDReply? {
        let bytes = Array(line.utf8)
        if bytes.first == UInt8(ascii: " ") {
            guard lastCode != 0 else { throw .malformed(line) }
            pending.append(.init(code: lastCode, text: String(line.dropFirst())))
            return nil
        }
        guard bytes.count >= 5, bytes[0..<4].allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
              let code = Int(String(decoding: bytes[0..<4], as: UTF8.self)),
              bytes[4] == UInt8(ascii: " ") || bytes[4] == UInt8(ascii: "-") else {
            // A bare code with nothing after it ("0000") ends a table.
            if bytes.count == 4, let code = Int(line), bytes.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) {
                return finish(code: code, text: "")
            }
            throw .malformed(line)
        }
        let text = String(decoding: bytes[5...], as: UTF8.self)
        if bytes[4] == UInt8(ascii: "-") {
            lastCode = code
            pending.append(.init(code: code, text: text))
            return nil
        }
        return finish(code: code, text: text)
    }

    private mutating func finish(code: Int, text: String) -> BIRDReply {
        pending.append(.init(code: code, text: text))
        let reply = BIRDReply(lines: pending, code: code)
        pending = []
        lastCode = 0
        return reply
    }
}

/// One row of `show protocols`: what the node reports of each BGP session.
public struct BIRDProtocolRow: Sendable, Equatable {
    public var name: String
    public var proto: String
    /// up, down, start, stop
    public var state: String
    public var since: String
    /// For BGP: Established, Idle, Connect, Active, OpenSent, OpenConfirm, and BIRD's reason.
    public var info: String

    /// The rows of a `show protocols` reply (1002 lines; the config's time format keeps "since"
    /// one token).
    public static func parse(_ reply: BIRDReply) -> [BIRDProtocolRow] {
        reply.lines.filter { $0.code == 1002 }.compactMap { line in
            let f = line.text.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            guard f.count >= 5 else { return nil }
            return BIRDProtocolRow(name: f[0], proto: f[1], state: f[3], since: f[4],
                                   info: f.dropFirst(5).joined(separator: " "))
        }
    }
}
