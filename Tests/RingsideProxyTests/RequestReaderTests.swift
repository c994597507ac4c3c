import NIOCore
import Testing

@testable import RingsideProxy

@Suite("Reading request heads for the relay")
struct RequestReaderTests {
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
    var rewriter: HeadRewriter

    init() {
        let configuration = proxyConfiguration()
        let settings = RelaySettings(
            configuration: configuration,
            plane: .app,
            metrics: ProxyMetrics(),
            router: LocalRouter(),
            backend: "http://127.0.0.1:1"
        )
        rewriter = HeadRewriter(settings: settings, client: nil, local: nil, allocator: ByteBufferAllocator())
    }

    func reader(maxHeadBytes: Int = 1024, sniffing: Bool = false) -> RequestReader {
        RequestReader(maxHeadBytes: maxHeadBytes, sniffsHTTP2: sniffing, now: start)
    }

    @Test mutating func aHeadIsFoundAfterEmptyLinesAndTimedFromItsFirstByte() {
        var reader = reader()
        reader.append(ByteBuffer(string: "\r\n\r\n"))
        #expect(reader.next(&rewriter, now: start + .seconds(1)) == .needMore)
        #expect(reader.inbound == nil, "empty lines alone are dropped")
        #expect(!reader.headStarted)
        reader.append(ByteBuffer(string: "\r\nGET / HTTP/1.1\r\nHost: a"))
        #expect(reader.next(&rewriter, now: start + .seconds(2)) == .needMore)
        #expect(reader.headStarted)
        #expect(reader.waitingSince == start + .seconds(2))
        reader.append(ByteBuffer(string: "\r\n\r\nGET /next HTTP/1.1\r\n"))
        #expect(reader.next(&rewriter, now: start + .seconds(3)) == .head(startLineEnd: 14, length: 27))
        #expect(reader.waitingSince == start + .seconds(2), "the head's time started with its first byte")
        reader.consume(27)
        #expect(reader.inbound.map { String(buffer: $0) } == "GET /next HTTP/1.1\r\n", "the pipelined request stays")
    }

    @Test mutating func badHeadsAreRefusedAndTheirBytesDropped() {
        var reader = reader(maxHeadBytes: 16)
        reader.append(ByteBuffer(string: "GET /a-long-path HTTP/1.1\r\n"))
        #expect(
            reader.next(&rewriter, now: start)
                == .refuse(status: 431, message: "the request head is larger than 16 bytes")
        )
        #expect(reader.inbound == nil)

        var malformed = self.reader()
        malformed.append(ByteBuffer(string: "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"))
        guard case .refuse(let status, _) = malformed.next(&rewriter, now: start) else {
            Issue.record("a malformed head is refused")
            return
        }
        #expect(status == 400)
    }

    @Test mutating func http2PriorKnowledgeIsToldApartOnlyWhenSniffing() {
        var sniffing = reader(sniffing: true)
        sniffing.append(ByteBuffer(string: "PR"))
        #expect(sniffing.next(&rewriter, now: start) == .needMore, "two bytes could still be the preface")
        sniffing.append(ByteBuffer(string: "I * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
        #expect(sniffing.next(&rewriter, now: start) == .http2)
        #expect(sniffing.takeAll().map { String(buffer: $0) } == "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "nothing is lost")

        var http1 = reader(sniffing: true)
        http1.append(ByteBuffer(string: "GET / HTTP/1.1\r\n\r\n"))
        #expect(http1.next(&rewriter, now: start) == .head(startLineEnd: 14, length: 18))
    }

    @Test func waitsRunOutForAHeadAndForAnIdleConnection() {
        var reader = reader()
        let head = TimeAmount.seconds(10)
        let idle = TimeAmount.seconds(75)
        #expect(reader.expiry(at: start + .seconds(74), headTimeout: head, idleTimeout: idle) == nil)
        #expect(reader.expiry(at: start + .seconds(75), headTimeout: head, idleTimeout: idle) == .idle)
        var rewriter = self.rewriter
        reader.append(ByteBuffer(string: "GET / HT"))
        _ = reader.next(&rewriter, now: start + .seconds(1))
        #expect(reader.expiry(at: start + .seconds(10), headTimeout: head, idleTimeout: idle) == nil)
        #expect(reader.expiry(at: start + .seconds(11), headTimeout: head, idleTimeout: idle) == .head)
        reader.requestDone(at: start + .seconds(20))
        #expect(reader.waited(at: start + .seconds(25)) == .seconds(5))
        #expect(reader.expiry(at: start + .seconds(25), headTimeout: head, idleTimeout: idle) == nil)
    }
}
