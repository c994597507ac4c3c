import NIOCore
import Testing

@testable import RingsideProxy

@Suite("Response framing for the relay")
struct ResponseFramerTests {
    /// Feeds `text` to a framer in pieces of `piece` bytes and describes the events: h STATUS (with body bytes), i
    /// STATUS, b COUNT, end/reuse, end/close, failed.
    func events(_ text: String, piece: Int, expectsBody: Bool = true, closeAfter: Bool = false) -> [String] {
        var framer = ResponseFramer()
        framer.begin(expectsBody: expectsBody)
        var out: [String] = []
        var bodyBytes = 0
        func note(_ event: ResponseFramer.Event) {
            switch event {
            case .interim(_, let facts): out.append("i \(facts.status)")
            case .head(_, let facts, let body):
                out.append("h \(facts.status)")
                bodyBytes += body?.readableBytes ?? 0
            case .body(let body): bodyBytes += body.readableBytes
            case .end(let reusable):
                out.append("body \(bodyBytes)")
                out.append(reusable ? "end/reuse" : "end/close")
            case .failed: out.append("failed")
            }
        }
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            var buffer = ByteBuffer(bytes: bytes[offset..<min(bytes.count, offset + piece)])
            offset += piece
            while let event = framer.next(&buffer) { note(event) }
        }
        if closeAfter, let event = framer.closed() { note(event) }
        return out
    }

    @Test func lengthsWhateverTheSplit() {
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        for piece in [1, 3, 7, text.utf8.count] {
            #expect(events(text, piece: piece) == ["h 200", "body 5", "end/reuse"], "piece \(piece)")
        }
    }

    @Test func chunkedBodiesWithTrailersAndInterimHeads() {
        let text =
            "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            + "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n"
        for piece in [1, 4, text.utf8.count] {
            #expect(events(text, piece: piece) == ["i 103", "h 200", "body 25", "end/reuse"], "piece \(piece)")
        }
    }

    @Test func noBodyForHEADAnd204And304() {
        #expect(
            events("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", piece: 100, expectsBody: false)
                == ["h 200", "body 0", "end/reuse"]
        )
        #expect(events("HTTP/1.1 204 No Content\r\n\r\n", piece: 100) == ["h 204", "body 0", "end/reuse"])
        #expect(events("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", piece: 5).suffix(1) == ["end/reuse"])
    }

    @Test func aBodyUntilCloseEndsWithTheConnection() {
        #expect(
            events("HTTP/1.1 200 OK\r\n\r\nstream", piece: 4, closeAfter: true)
                == ["h 200", "body 6", "end/close"]
        )
        #expect(
            events("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", piece: 100) == ["h 200", "body 2", "end/close"]
        )
    }

    @Test func bytesAfterTheResponseOrBrokenFramingSpoilTheConnection() {
        #expect(
            events("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", piece: 100)
                == ["h 200", "body 2", "end/close"]
        )
        #expect(events("HTTP/1.1 2x0 OK\r\n\r\n", piece: 100) == ["failed"])
        // A head over the limit is refused whether it comes in pieces or at once.
        let large = "HTTP/1.1 200 OK\r\nX-Big: \(String(repeating: "a", count: 70_000))\r\nContent-Length: 0\r\n\r\n"
        #expect(events(large, piece: 16_384) == ["failed"])
        #expect(events(large, piece: 100_000) == ["failed"])
        // Broken chunking with the head: the head is not passed on either.
        #expect(events("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", piece: 100) == ["failed"])
        #expect(
            events("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", piece: 47) == ["h 200", "failed"]
        )
        #expect(
            events("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort", piece: 100, closeAfter: true).last == "failed"
        )
    }
}
