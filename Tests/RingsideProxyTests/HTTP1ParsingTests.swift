import NIOCore
import Testing

@testable import RingsideProxy

@Suite("HTTP/1.1 parsing for the relay")
struct HTTP1ParsingTests {
    func parse(_ text: String) -> (HeadParse, [HeaderField], [UInt8]) {
        let bytes = Array(text.utf8)
        var fields: [HeaderField] = []
        let result = bytes.withUnsafeBytes {
            HTTP1Parsing.parseHead($0, fields: &fields, key: Array("x-shard-key".utf8))
        }
        return (result, fields, bytes)
    }

    @Test func aHeadIsLocatedWithItsFields() {
        let text = "GET /a HTTP/1.1\r\nHost: x\r\nX-Shard-Key:  k 1 \r\nEmpty:\r\n\r\nbody"
        let (result, fields, bytes) = parse(text)
        #expect(result == .complete(startLineEnd: 15, length: text.utf8.count - 4))
        let pairs = fields.map {
            (String(decoding: bytes[$0.name], as: UTF8.self), String(decoding: bytes[$0.value], as: UTF8.self))
        }
        #expect(pairs.map(\.0) == ["Host", "X-Shard-Key", "Empty"])
        #expect(pairs.map(\.1) == ["x", "k 1", ""])
        #expect(fields.map(\.kind) == [.host, .key, .other])
    }

    @Test func tokenCharactersAreRFC9110s() {
        let symbols = Set("!#$%&'*+-.^_`|~".utf8)
        for byte in UInt8.min...UInt8.max {
            let expected =
                (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte)
                || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || symbols.contains(byte)
            #expect(HTTP1Parsing.isToken(byte) == expected, "\(byte)")
        }
    }

    @Test func decimalsAreWrittenAsDigits() {
        for value: UInt64 in [0, 7, 10, 4096, 18_446_744_073_709_551_615] {
            var out = ByteBuffer()
            HTTP1Parsing.writeDecimal(value, into: &out)
            #expect(String(buffer: out) == String(value))
        }
    }

    @Test func fieldKindsFollowTheProxyRules() {
        func kind(_ name: String) -> FieldKind {
            let bytes = Array(name.utf8)
            return bytes.withUnsafeBytes { HTTP1Parsing.kind(of: $0, name: 0..<bytes.count, key: []) }
        }
        for name in HeaderHygiene.hopByHop {
            #expect(kind(name).isHopByHop, "\(name)")
            #expect(kind(name.uppercased()).isHopByHop, "\(name)")
        }
        for name in [HeaderHygiene.hopHeader, HeaderHygiene.finalHeader, HeaderHygiene.deadlineHeader] {
            #expect(kind(name).isInternal, "\(name)")
        }
        #expect(kind(HeaderHygiene.nodeHeader) == .node)
        #expect(kind(HeaderHygiene.notOwnerHeader) == .notOwner)
        #expect(!kind("x-custom").isHopByHop && !kind("x-custom").isInternal)
    }

    @Test func aPartialHeadIsIncomplete() {
        #expect(parse("GET / HTTP/1.1\r\nHost: x\r\n").0 == .incomplete)
        #expect(parse("GET / HTTP/1.1\r\nHo").0 == .incomplete)
    }

    @Test func malformedHeadsAreRefused() {
        for text in [
            "GET / HTTP/1.1\nHost: x\n\n",  // bare LF
            "GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",  // obsolete folding
            "GET / HTTP/1.1\r\nHost : x\r\n\r\n",  // space before the colon
            "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\u{01}b\r\n\r\n",  // a control character
            "GET / HTTP/1.1\r\n: x\r\n\r\n",  // an empty name
        ] {
            guard case .malformed = parse(text).0 else {
                Issue.record("accepted \(text.debugDescription)")
                continue
            }
        }
    }

    @Test func listsAndNumbers() {
        let bytes = Array("gzip, Chunked ;12;x".utf8)
        bytes.withUnsafeBytes { raw in
            #expect(HTTP1Parsing.listEnds(raw, 0..<13, with: "chunked"))
            #expect(!HTTP1Parsing.listEnds(raw, 0..<4, with: "chunked"))
            var members: [Range<Int>] = []
            HTTP1Parsing.listMembers(raw, 0..<13, into: &members)
            #expect(members == [0..<4, 6..<13])
            #expect(HTTP1Parsing.decimal(raw, 15..<17) == 12)
            #expect(HTTP1Parsing.decimal(raw, 14..<17) == nil)
        }
    }

    static let chunked = Array("5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nGrpc-Status: 0\r\nX: y\r\n\r\n".utf8)

    @Test func aChunkedBodyEndsWhereItsLastChunkAndTrailersEnd() {
        var framing = ChunkedFraming()
        let extra = Array("HTTP/1.1 200 OK".utf8)
        let result = (Self.chunked + extra).withUnsafeBytes { framing.consume($0) }
        #expect(result?.count == Self.chunked.count)
        #expect(result?.ended == true)
    }

    @Test func aChunkedBodyIsFramedWhateverItsSplit() {
        for split in 1...7 {
            var framing = ChunkedFraming()
            var consumed = 0
            var ended = false
            var index = 0
            while index < Self.chunked.count {
                let piece = Array(Self.chunked[index..<min(index + split, Self.chunked.count)])
                guard let result = piece.withUnsafeBytes({ framing.consume($0) }) else {
                    Issue.record("refused at \(index) with pieces of \(split)")
                    return
                }
                consumed += result.count
                ended = result.ended
                index += piece.count
            }
            #expect(consumed == Self.chunked.count)
            #expect(ended)
        }
    }

    @Test func extensionsAndTrailerFieldsAreTaken() {
        for text in [
            "5;a=b\r\nhello\r\n0\r\n\r\n", "5\r\nhello\r\n0\r\nX-T: v\r\nY:\r\n\r\n", "0;q=\"a b\"\r\n\r\n",
            // Names that only begin like a forbidden one.
            "0\r\nContent-Lengths: 5\r\nHosts: a\r\nX-Content-Length-And-A-Very-Long-Name: 1\r\n\r\n",
        ] {
            var framing = ChunkedFraming()
            let result = Array(text.utf8).withUnsafeBytes { framing.consume($0) }
            #expect(result?.ended == true, "\(text.debugDescription)")
            #expect(result?.count == text.utf8.count, "\(text.debugDescription)")
        }
    }

    @Test func malformedChunkingIsRefused() {
        for text in [
            "x\r\n", "5\r\nhelloXX", "5\nhello\r\n", "\r\n", "1234567890abcdef0\r\n",
            // What a strict parser reads otherwise: a second number after the size, a control character in an
            // extension, trailer lines that are not fields (a request glued on after a missing CRLF), a folded one.
            "5 5\r\n", "5 ;a=b\r\n", "5\t\r\n", "5;a=\u{1}\r\n", "0\r\nbroken\r\n\r\n", "0\r\nGET / HTTP/1.1\r\n",
            "0\r\nX-A: b\r\n c\r\n",
            "0\r\n: v\r\n\r\n", "0\r\nX-A: \u{0}\r\n\r\n", ";x\r\n",
            // Fields that frame or route a message, which a recipient merging trailers would act on.
            "0\r\nContent-Length: 5\r\n\r\n", "0\r\ntransfer-ENCODING: chunked\r\n\r\n", "0\r\nHost: evil\r\n\r\n",
            "0\r\nX-T: v\r\nConnection: close\r\n\r\n", "0\r\nTrailer: X\r\n\r\n",
        ] {
            var framing = ChunkedFraming()
            #expect(Array(text.utf8).withUnsafeBytes { framing.consume($0) } == nil, "\(text.debugDescription)")
        }
    }
}
