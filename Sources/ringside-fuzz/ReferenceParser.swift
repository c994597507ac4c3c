/// A second, deliberately plain reading of HTTP/1.1 requests (RFC 9112), written apart from the engine's parser, for
/// the fuzz model to check the engine against: what a strict server would find in a byte stream.
struct ReferenceRequest: Equatable, CustomStringConvertible {
    var method: [UInt8]
    /// In origin form (an absolute target's path).
    var target: [UInt8]
    var body: [UInt8]
    /// It asked to switch protocols: what follows it is not HTTP.
    var upgrade: Bool

    var description: String {
        "\(String(decoding: method, as: UTF8.self)) \(String(decoding: target, as: UTF8.self)) body \(body.count) bytes"
    }
}

enum ReferenceParser {
    /// The requests at the start of `bytes`, and whether what follows them is malformed (rather than incomplete).
    /// `skipsEmptyLines` skips CRLFs before a request, as a server may (RFC 9112 §2.2). A request that asks to
    /// upgrade ends the reading when `stopsAtUpgrade`: what follows is another protocol if the server switches; a
    /// client's stream reads on, as h11 does once a server declines (the connection stays HTTP/1.1).
    static func parse(
        _ bytes: [UInt8],
        skipsEmptyLines: Bool,
        stopsAtUpgrade: Bool = true
    ) -> (requests: [ReferenceRequest], malformed: Bool) {
        var requests: [ReferenceRequest] = []
        var index = 0
        while index < bytes.count {
            if skipsEmptyLines {
                while index + 1 < bytes.count, bytes[index] == 13, bytes[index + 1] == 10 { index += 2 }
            }
            guard index < bytes.count else { break }
            switch request(bytes, from: index) {
            case .incomplete:
                return (requests, false)
            case .malformed:
                return (requests, true)
            case .request(let request, let end):
                requests.append(request)
                index = end
                if request.upgrade && stopsAtUpgrade { return (requests, false) }
            }
        }
        return (requests, false)
    }

    private enum Outcome {
        case incomplete
        case malformed
        case request(ReferenceRequest, end: Int)
    }

    private static func isToken(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"):
            true
        default:
            Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
        }
    }

    private static func lowercased(_ bytes: ArraySlice<UInt8>) -> [UInt8] {
        bytes.map { $0 >= 65 && $0 <= 90 ? $0 + 32 : $0 }
    }

    private static func trimmed(_ bytes: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        var slice = bytes
        while let first = slice.first, first == 32 || first == 9 { slice = slice.dropFirst() }
        while let last = slice.last, last == 32 || last == 9 { slice = slice.dropLast() }
        return slice
    }

    /// The line from `start` to its CRLF: nil when there is none yet; `malformed` for a bare LF or CR.
    private static func line(_ bytes: [UInt8], from start: Int) -> (line: ArraySlice<UInt8>, next: Int)?? {
        var index = start
        while index < bytes.count {
            if bytes[index] == 10 { return .some(nil) }
            if bytes[index] == 13 {
                guard index + 1 < bytes.count else { return nil }
                guard bytes[index + 1] == 10 else { return .some(nil) }
                return (bytes[start..<index], index + 2)
            }
            index += 1
        }
        return nil
    }

    private static func request(_ bytes: [UInt8], from start: Int) -> Outcome {
        guard let found = line(bytes, from: start) else { return .incomplete }
        guard let (requestLine, afterLine) = found else { return .malformed }
        let parts = requestLine.split(separator: 32, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, parts[0].allSatisfy(isToken), !parts[1].isEmpty,
            parts[1].allSatisfy({ $0 > 32 && $0 < 127 }), parts[2].count == 8,
            Array(parts[2].prefix(7)) == Array("HTTP/1.".utf8), let minor = parts[2].last, minor >= 48, minor <= 57
        else { return .malformed }
        let http10 = minor == 48
        var fields: [(name: [UInt8], value: ArraySlice<UInt8>)] = []
        var index = afterLine
        while true {
            guard let found = line(bytes, from: index) else { return .incomplete }
            guard let (fieldLine, next) = found else { return .malformed }
            index = next
            if fieldLine.isEmpty { break }
            guard let colon = fieldLine.firstIndex(of: UInt8(ascii: ":")), colon > fieldLine.startIndex,
                fieldLine[..<colon].allSatisfy(isToken)
            else { return .malformed }
            let value = trimmed(fieldLine[(colon + 1)...])
            guard value.allSatisfy({ $0 == 9 || ($0 >= 32 && $0 != 127) }) else { return .malformed }
            fields.append((lowercased(fieldLine[..<colon]), value))
        }
        func values(_ name: String) -> [ArraySlice<UInt8>] {
            fields.filter { $0.name == Array(name.utf8) }.map(\.value)
        }
        let connection = values("connection").flatMap { $0.split(separator: UInt8(ascii: ",")) }.map {
            lowercased(trimmed($0))
        }
        for framing in ["content-length", "transfer-encoding", "host"] where connection.contains(Array(framing.utf8)) {
            return .malformed
        }
        let hosts = values("host").count
        guard hosts <= 1, http10 || hosts == 1 else { return .malformed }
        let lengths = values("content-length")
        let codings = values("transfer-encoding")
        var target = Array(parts[1])
        for scheme in ["http://", "https://"] where lowercased(parts[1].prefix(scheme.utf8.count)) == Array(scheme.utf8)
        {
            let rest = target.dropFirst(scheme.utf8.count)
            let cut = rest.firstIndex { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") } ?? rest.endIndex
            let path = Array(rest[cut...])
            target = path.first == UInt8(ascii: "/") ? path : [UInt8(ascii: "/")] + path
        }
        let upgrade = !http10 && connection.contains(Array("upgrade".utf8)) && !values("upgrade").isEmpty
        var request = ReferenceRequest(method: Array(parts[0]), target: target, body: [], upgrade: upgrade)
        if !codings.isEmpty {
            guard !http10, lengths.isEmpty, codings.count == 1, lowercased(codings[0]) == Array("chunked".utf8) else {
                return .malformed
            }
            return chunked(bytes, from: index, request: request)
        }
        guard lengths.count <= 1 else { return .malformed }
        var length = 0
        if let text = lengths.first {
            guard !text.isEmpty, text.count <= 18, text.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return .malformed }
            length = text.reduce(0) { $0 * 10 + Int($1 - 48) }
        }
        guard index + length <= bytes.count else { return .incomplete }
        request.body = Array(bytes[index..<(index + length)])
        return .request(request, end: index + length)
    }

    private static func chunked(_ bytes: [UInt8], from start: Int, request: ReferenceRequest) -> Outcome {
        var request = request
        var index = start
        while true {
            guard let found = line(bytes, from: index) else { return .incomplete }
            guard let (sizeLine, next) = found else { return .malformed }
            var digits = sizeLine.prefix { $0 < 128 && Character(UnicodeScalar($0)).isHexDigit }
            guard !digits.isEmpty, digits.count <= 15 else { return .malformed }
            var rest = sizeLine.dropFirst(digits.count)
            while let first = rest.first, first == 32 || first == 9 { rest = rest.dropFirst() }
            guard rest.isEmpty || rest.first == UInt8(ascii: ";") else { return .malformed }
            guard rest.allSatisfy({ $0 == 9 || ($0 >= 32 && $0 != 127) }) else { return .malformed }
            let size = digits.reduce(0) { $0 << 4 | Int(Character(UnicodeScalar($1)).hexDigitValue!) }
            digits = []
            index = next
            if size == 0 { break }
            guard index + size + 2 <= bytes.count else { return .incomplete }
            request.body += bytes[index..<(index + size)]
            guard bytes[index + size] == 13, bytes[index + size + 1] == 10 else { return .malformed }
            index += size + 2
        }
        while true {
            guard let found = line(bytes, from: index) else { return .incomplete }
            guard let (trailer, next) = found else { return .malformed }
            index = next
            if trailer.isEmpty { return .request(request, end: index) }
            guard let colon = trailer.firstIndex(of: UInt8(ascii: ":")), colon > trailer.startIndex,
                trailer[..<colon].allSatisfy(isToken),
                trailer[(colon + 1)...].allSatisfy({ $0 == 9 || ($0 >= 32 && $0 != 127) })
            else { return .malformed }
        }
    }
}
