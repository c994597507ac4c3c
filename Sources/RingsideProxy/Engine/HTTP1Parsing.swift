import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Byte-level HTTP/1.1 parsing for the relay (RFC 9112): heads are located and checked without building strings, and
/// message bodies are framed without being copied.

/// Copies lines of a head in runs: consecutive lines that are kept go out in one write.
struct LineRuns {
    private var start: Int
    private var end: Int

    /// Starts with `bytes[start..<end]` (a start line, with its CRLF).
    init(_ start: Int, _ end: Int) {
        self.start = start
        self.end = end
    }

    /// Adds `field`'s line, writing the run so far first if the line does not follow it.
    mutating func keep(_ field: HeaderField, from bytes: UnsafeRawBufferPointer, into out: inout ByteBuffer) {
        if Int(field.nameStart) != end {
            write(bytes, into: &out)
            start = Int(field.nameStart)
        }
        end = Int(field.next)
    }

    /// Writes the run so far.
    mutating func write(_ bytes: UnsafeRawBufferPointer, into out: inout ByteBuffer) {
        if end > start { out.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[start..<end])) }
        start = end
    }
}

/// One header field of a parsed head: byte offsets into the head.
struct HeaderField {
    var nameStart: Int32
    var nameEnd: Int32
    var valueStart: Int32
    var valueEnd: Int32
    /// Where the next line starts: the line with its CRLF is `nameStart..<next`.
    var next: Int32
    /// What the name says, found while parsing.
    var kind: FieldKind

    var name: Range<Int> { Int(nameStart)..<Int(nameEnd) }
    var value: Range<Int> { Int(valueStart)..<Int(valueEnd) }
}

/// What the parser found at the start of a buffer.
enum HeadParse: Equatable {
    /// No blank line yet.
    case incomplete
    /// Not HTTP/1.1: the reason, for a 400.
    case malformed(String)
    /// A head: its start line ends at `startLineEnd` (before the CRLF) and the head, blank line included, is `length`
    /// bytes long.
    case complete(startLineEnd: Int, length: Int)
}

/// The header fields the relay acts on, told apart by name (any case).
enum FieldKind {
    case other
    case key
    case connection
    case keepAlive
    case proxyConnection
    case te
    case transferEncoding
    case upgrade
    case trailer
    case proxyAuthenticate
    case proxyAuthorization
    case contentLength
    case host
    case expect
    case xForwardedFor
    case xForwardedProto
    case xRequestID
    case hop
    case final
    case deadline
    case node
    case notOwner
}

extension FieldKind {
    /// Describes one connection and never crosses a proxy as it came (``HeaderHygiene/hopByHop``).
    var isHopByHop: Bool {
        switch self {
        case .connection, .keepAlive, .proxyConnection, .te, .transferEncoding, .upgrade, .trailer, .proxyAuthenticate,
            .proxyAuthorization:
            true
        default:
            false
        }
    }

    /// Describes the body's framing, which the relay passes through unchanged.
    var describesFraming: Bool { self == .transferEncoding || self == .trailer || self == .contentLength }

    /// Set by a forwarding node for the receiving node only.
    var isInternal: Bool { self == .hop || self == .final || self == .deadline }
}

enum HTTP1Parsing {
    static let cr: UInt8 = 13
    static let lf: UInt8 = 10

    /// Parses a head (start line and header fields) at the start of `bytes`, recording the fields in `fields` with
    /// their kinds (`key` is the key header's name in lowercase; empty for a response).
    ///
    /// Lines must end in CRLF; field names must be tokens directly followed by a colon; values may not hold control
    /// characters; obsolete line folding is refused. The start line is left to the caller.
    static func parseHead(
        _ bytes: UnsafeRawBufferPointer,
        fields: inout [HeaderField],
        key: [UInt8] = []
    ) -> HeadParse {
        fields.removeAll(keepingCapacity: true)
        let count = bytes.count
        var lineStart = 0
        var startLineEnd = -1
        while true {
            guard let base = bytes.baseAddress, lineStart < count,
                let found = memchr(base + lineStart, Int32(lf), count - lineStart)
            else { return .incomplete }
            let newline = base.distance(to: UnsafeRawPointer(found))
            guard newline > lineStart, bytes[newline - 1] == cr else { return .malformed("a line ends without CR") }
            let lineEnd = newline - 1
            defer { lineStart = newline + 1 }
            if startLineEnd < 0 {
                startLineEnd = lineEnd
                continue
            }
            if lineEnd == lineStart { return .complete(startLineEnd: startLineEnd, length: newline + 1) }
            var index = lineStart
            while index < lineEnd && isToken(bytes[index]) { index += 1 }
            guard index > lineStart else {
                let first = bytes[lineStart]
                return .malformed(
                    first == 32 || first == 9 ? "obsolete line folding is not accepted" : "a malformed header field"
                )
            }
            guard index < lineEnd, bytes[index] == UInt8(ascii: ":") else {
                return .malformed("a malformed header field")
            }
            let nameEnd = index
            index += 1
            while index < lineEnd && (bytes[index] == 32 || bytes[index] == 9) { index += 1 }
            let valueStart = index
            var valueEnd = lineEnd
            while valueEnd > valueStart && (bytes[valueEnd - 1] == 32 || bytes[valueEnd - 1] == 9) { valueEnd -= 1 }
            while index < valueEnd {
                let byte = bytes[index]
                if (byte < 32 && byte != 9) || byte == 127 {
                    return .malformed("a control character in a header value")
                }
                index += 1
            }
            fields.append(
                HeaderField(
                    nameStart: Int32(lineStart),
                    nameEnd: Int32(nameEnd),
                    valueStart: Int32(valueStart),
                    valueEnd: Int32(valueEnd),
                    next: Int32(newline + 1),
                    kind: kind(of: bytes, name: lineStart..<nameEnd, key: key)
                )
            )
        }
    }

    /// Methods that can be sent twice with the effect of once (RFC 9110 §9.2.2), by name as it came on the wire.
    static func isIdempotent(_ method: UnsafeRawBufferPointer) -> Bool {
        switch method.count {
        case 3: has(method, at: 0, "GET") || has(method, at: 0, "PUT")
        case 4: has(method, at: 0, "HEAD")
        case 5: has(method, at: 0, "TRACE")
        case 6: has(method, at: 0, "DELETE")
        case 7: has(method, at: 0, "OPTIONS")
        default: false
        }
    }

    /// The same, for a parsed method.
    static func isIdempotent(_ method: String) -> Bool {
        var name = method
        return name.withUTF8 { isIdempotent(UnsafeRawBufferPointer($0)) }
    }

    /// A `tchar` of RFC 9110 §5.6.2: letters, digits and ``!#$%&'*+-.^_`|~``.
    @inline(__always)
    static func isToken(_ byte: UInt8) -> Bool {
        // Bit n of the first word is byte n (0–63), of the second byte 64 + n.
        let low: UInt64 = 0x03FF_6CFA_0000_0000
        let high: UInt64 = 0x57FF_FFFF_C7FF_FFFE
        let word = byte < 64 ? low : high
        return byte < 128 && (word >> UInt64(byte & 63)) & 1 == 1
    }

    /// Whether `bytes` holds exactly `text` from `offset` on (case matters).
    @inline(__always)
    static func has(_ bytes: UnsafeRawBufferPointer, at offset: Int, _ text: StaticString) -> Bool {
        let count = text.utf8CodeUnitCount
        guard offset >= 0, offset + count <= bytes.count, let base = bytes.baseAddress else { return false }
        return memcmp(base + offset, text.utf8Start, count) == 0
    }

    /// Whether the comma-separated list `bytes[range]` has the member `lowercase`, in any case.
    static func listContains(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ lowercase: StaticString) -> Bool {
        var start = range.lowerBound
        while start < range.upperBound {
            var end = start
            while end < range.upperBound && bytes[end] != UInt8(ascii: ",") { end += 1 }
            var first = start
            var last = end
            while first < last && (bytes[first] == 32 || bytes[first] == 9) { first += 1 }
            while last > first && (bytes[last - 1] == 32 || bytes[last - 1] == 9) { last -= 1 }
            if equals(bytes, first..<last, lowercase) { return true }
            start = end + 1
        }
        return false
    }

    /// Whether `bytes[range]` is `lowercase` in any case (`lowercase` holds letters, digits and '-').
    @inline(__always)
    static func equals(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ lowercase: StaticString) -> Bool {
        guard range.count == lowercase.utf8CodeUnitCount else { return false }
        let other = lowercase.utf8Start
        var offset = 0
        for index in range {
            guard bytes[index] | 0x20 == other[offset] else { return false }
            offset += 1
        }
        return true
    }

    /// Whether `bytes[range]` is the key header's name `lowercase` in any case. Any token character may be in it
    /// (`_`, `^`, `~`…), so letters alone are folded: `| 0x20` would make `_` a DEL and `^` a `~`.
    @inline(__always)
    static func equalsKey(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ lowercase: [UInt8]) -> Bool {
        guard range.count == lowercase.count else { return false }
        var offset = 0
        for index in range {
            guard lowercased(bytes[index]) == lowercase[offset] else { return false }
            offset += 1
        }
        return true
    }

    /// The kind of the field named `bytes[name]`; `key` is the key header's name in lowercase.
    static func kind(of bytes: UnsafeRawBufferPointer, name: Range<Int>, key: [UInt8]) -> FieldKind {
        if name.count == key.count && equalsKey(bytes, name, key) { return .key }
        switch name.count {
        case 2: return equals(bytes, name, "te") ? .te : .other
        case 4: return equals(bytes, name, "host") ? .host : .other
        case 6: return equals(bytes, name, "expect") ? .expect : .other
        case 7:
            if equals(bytes, name, "upgrade") { return .upgrade }
            return equals(bytes, name, "trailer") ? .trailer : .other
        case 10:
            if equals(bytes, name, "connection") { return .connection }
            return equals(bytes, name, "keep-alive") ? .keepAlive : .other
        case 12: return equals(bytes, name, "x-request-id") ? .xRequestID : .other
        case 14:
            if equals(bytes, name, "content-length") { return .contentLength }
            return equals(bytes, name, "x-ringside-hop") ? .hop : .other
        case 15:
            if equals(bytes, name, "x-forwarded-for") { return .xForwardedFor }
            return equals(bytes, name, "x-ringside-node") ? .node : .other
        case 16:
            if equals(bytes, name, "proxy-connection") { return .proxyConnection }
            return equals(bytes, name, "x-ringside-final") ? .final : .other
        case 17:
            if equals(bytes, name, "transfer-encoding") { return .transferEncoding }
            return equals(bytes, name, "x-forwarded-proto") ? .xForwardedProto : .other
        case 18: return equals(bytes, name, "proxy-authenticate") ? .proxyAuthenticate : .other
        case 19: return equals(bytes, name, "proxy-authorization") ? .proxyAuthorization : .other
        case 20: return equals(bytes, name, "x-ringside-not-owner") ? .notOwner : .other
        case 22: return equals(bytes, name, "x-ringside-deadline-ms") ? .deadline : .other
        default: return .other
        }
    }

    /// Writes `value` in decimal digits.
    static func writeDecimal(_ value: UInt64, into out: inout ByteBuffer) {
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)
        withUnsafeMutableBytes(of: &digits) { digits in
            var index = digits.count
            var rest = value
            repeat {
                index -= 1
                digits[index] = UInt8(ascii: "0") + UInt8(rest % 10)
                rest /= 10
            } while rest > 0
            out.writeBytes(UnsafeRawBufferPointer(rebasing: digits[index...]))
        }
    }

    /// A non-negative decimal number of up to 18 digits, or nil.
    static func decimal(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Int? {
        guard !range.isEmpty, range.count <= 18 else { return nil }
        var value = 0
        for index in range {
            let digit = bytes[index] &- UInt8(ascii: "0")
            guard digit < 10 else { return nil }
            value = value * 10 + Int(digit)
        }
        return value
    }

    /// Whether the comma-separated list `bytes[range]` ends with `lowercase` (as `Transfer-Encoding` must end with
    /// `chunked`), in any case.
    static func listEnds(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, with lowercase: StaticString) -> Bool {
        var end = range.upperBound
        while end > range.lowerBound && (bytes[end - 1] == 32 || bytes[end - 1] == 9) { end -= 1 }
        var start = end
        while start > range.lowerBound && bytes[start - 1] != UInt8(ascii: ",") { start -= 1 }
        while start < end && (bytes[start] == 32 || bytes[start] == 9) { start += 1 }
        return equals(bytes, start..<end, lowercase)
    }

    /// The members of the comma-separated list `bytes[range]`, trimmed, as ranges.
    static func listMembers(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, into members: inout [Range<Int>]) {
        var start = range.lowerBound
        while start < range.upperBound {
            var end = start
            while end < range.upperBound && bytes[end] != UInt8(ascii: ",") { end += 1 }
            var first = start
            var last = end
            while first < last && (bytes[first] == 32 || bytes[first] == 9) { first += 1 }
            while last > first && (bytes[last - 1] == 32 || bytes[last - 1] == 9) { last -= 1 }
            if first < last { members.append(first..<last) }
            start = end + 1
        }
    }

    @inline(__always)
    static func lowercased(_ byte: UInt8) -> UInt8 {
        byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte
    }

    /// Whether `bytes[a]` and `bytes[b]` are the same in any case.
    static func sameName(_ bytes: UnsafeRawBufferPointer, _ a: Range<Int>, _ b: Range<Int>) -> Bool {
        guard a.count == b.count else { return false }
        var other = b.lowerBound
        for index in a {
            guard lowercased(bytes[index]) == lowercased(bytes[other]) else { return false }
            other += 1
        }
        return true
    }
}

/// Finds the end of a chunked body (RFC 9112 §7.1) as it streams past, without copying or changing it: chunk sizes,
/// extensions, data, and the trailer section. What it passes on, a strict parser reads the same way: a size is hex
/// digits, then extensions (visible characters) or the CRLF, no whitespace between (RFC 9112 allows some; strict
/// servers such as h11 do not, so none is passed on); a trailer line is a field
/// (a token, a colon, a value without control characters), never folded, and never one that frames or routes a message
/// (`Content-Length`, `Transfer-Encoding`, `Host`, `Trailer`, or a hop-by-hop field), which RFC 9110 §6.5.1 keeps out
/// of trailers and a recipient that merges trailers into the head would act on.
struct ChunkedFraming {
    private enum State {
        case size
        case sizeExtension
        case sizeLF
        case data
        case dataCR
        case dataLF
        case trailerStart
        /// A trailer field's name, one token character of it at least.
        case trailerName
        case trailerValue
        case trailerLF
        case finalLF
        case ended
    }

    private var state = State.size
    private var size = 0
    private var digits = 0
    /// The trailer field name being read, in lowercase (trailers are rare: nothing is allocated without them).
    private var trailerName: [UInt8] = []

    /// Names a trailer section may not carry.
    private static let forbiddenTrailers: [[UInt8]] = [
        "content-length", "transfer-encoding", "host", "trailer", "connection", "keep-alive", "proxy-connection",
        "te", "upgrade",
    ].map { Array($0.utf8) }

    /// A part of the body that a reader taking it apart wants (the HTTP/2 bridge): chunk data, or trailer-section
    /// bytes (field lines and the final CRLF), as ranges of the bytes given to ``consume(_:pieces:)``.
    enum Piece {
        case data(Range<Int>)
        case trailers(Range<Int>)
    }

    /// Consumes from the start of `bytes`: how many belong to the body, and whether the body ended with them; nil
    /// when the framing is malformed.
    @inline(__always)
    mutating func consume(_ bytes: UnsafeRawBufferPointer) -> (count: Int, ended: Bool)? {
        consume(bytes) { _ in }
    }

    /// The same, telling `pieces` where the chunk data and the trailer section are in `bytes`.
    @inline(__always)
    mutating func consume(_ bytes: UnsafeRawBufferPointer, pieces: (Piece) -> Void) -> (count: Int, ended: Bool)? {
        var index = 0
        let count = bytes.count
        var trailersFrom: Int? = isInTrailers ? 0 : nil
        defer {
            if let from = trailersFrom, index > from { pieces(.trailers(from..<index)) }
        }
        while index < count {
            switch state {
            case .data:
                let take = min(size, count - index)
                if take > 0 { pieces(.data(index..<index + take)) }
                index += take
                size -= take
                if size == 0 { state = .dataCR }
                continue
            case .ended:
                return (index, true)
            default:
                break
            }
            let byte = bytes[index]
            index += 1
            switch state {
            case .size:
                if let value = Self.hexValue(byte) {
                    guard digits < 15 else { return nil }
                    size = size << 4 | value
                    digits += 1
                } else if digits == 0 {
                    return nil
                } else if byte == HTTP1Parsing.cr {
                    state = .sizeLF
                } else if byte == UInt8(ascii: ";") {
                    state = .sizeExtension
                } else {
                    return nil
                }
            case .sizeExtension:
                if byte == HTTP1Parsing.cr {
                    state = .sizeLF
                } else if !Self.isFieldCharacter(byte) {
                    return nil
                }
            case .sizeLF:
                guard byte == HTTP1Parsing.lf else { return nil }
                digits = 0
                state = size == 0 ? .trailerStart : .data
                if size == 0 { trailersFrom = index }
            case .dataCR:
                guard byte == HTTP1Parsing.cr else { return nil }
                state = .dataLF
            case .dataLF:
                guard byte == HTTP1Parsing.lf else { return nil }
                state = .size
            case .trailerStart:
                if byte == HTTP1Parsing.cr {
                    state = .finalLF
                } else {
                    guard HTTP1Parsing.isToken(byte) else { return nil }
                    trailerName.removeAll(keepingCapacity: true)
                    trailerName.append(HTTP1Parsing.lowercased(byte))
                    state = .trailerName
                }
            case .trailerName:
                if byte == UInt8(ascii: ":") {
                    if Self.forbiddenTrailers.contains(trailerName) { return nil }
                    state = .trailerValue
                } else if !HTTP1Parsing.isToken(byte) {
                    return nil
                } else if trailerName.count < 24 {
                    trailerName.append(HTTP1Parsing.lowercased(byte))
                }
            case .trailerValue:
                if byte == HTTP1Parsing.cr {
                    state = .trailerLF
                } else if !Self.isFieldCharacter(byte) {
                    return nil
                }
            case .trailerLF:
                guard byte == HTTP1Parsing.lf else { return nil }
                state = .trailerStart
            case .finalLF:
                guard byte == HTTP1Parsing.lf else { return nil }
                state = .ended
                return (index, true)
            case .data, .ended:
                break
            }
        }
        return (index, state == .ended)
    }

    private var isInTrailers: Bool {
        switch state {
        case .trailerStart, .trailerName, .trailerValue, .trailerLF, .finalLF: true
        default: false
        }
    }

    /// A character a field value or a chunk extension may hold: visible, space, tab, or obs-text.
    private static func isFieldCharacter(_ byte: UInt8) -> Bool { byte >= 32 ? byte != 127 : byte == 9 }

    private static func hexValue(_ byte: UInt8) -> Int? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): Int(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): Int(byte - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): Int(byte - UInt8(ascii: "A") + 10)
        default: nil
        }
    }
}
