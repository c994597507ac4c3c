import NIOConcurrencyHelpers
import NIOCore
import Testing

@testable import RingsideProxy

/// Routes by a table of keys (any other key, or none, goes to the local backend) and remembers what it was asked.
final class TableRouter: ProxyRouter {
    let table: [String: [ProxyRoute]]
    let rejectMissingKey: Bool
    private let asked = NIOLockedValueBox<[RoutingRequest]>([])
    private let failed = NIOLockedValueBox<[ProxyRoute]>([])

    init(_ table: [String: [ProxyRoute]] = [:], rejectMissingKey: Bool = false) {
        self.table = table
        self.rejectMissingKey = rejectMissingKey
    }

    var requests: [RoutingRequest] { asked.withLockedValue { $0 } }
    var failures: [ProxyRoute] { failed.withLockedValue { $0 } }

    func routes(for request: RoutingRequest) -> Result<[ProxyRoute], ProxyRefusal> {
        asked.withLockedValue { $0.append(request) }
        guard let key = request.key else {
            return rejectMissingKey
                ? .failure(ProxyRefusal(status: .badRequest, message: "the request has no key")) : .success([.local])
        }
        return .success(table[key] ?? [.local])
    }

    func upstreamFailed(_ route: ProxyRoute, error: (any Error)?) { failed.withLockedValue { $0.append(route) } }
}

/// One client connection's engine, driven by hand: each step feeds an event and returns what the engine asked for,
/// written as short lines a test can read.
struct EngineHarness {
    var engine: HTTP1Connection
    var now = NIODeadline.uptimeNanoseconds(1_000_000_000)
    let router: TableRouter

    init(
        plane: ProxyHandler.Plane = .app,
        router: TableRouter = TableRouter(),
        adjust: (inout ProxyConfiguration) -> Void = { _ in }
    ) {
        var configuration = ProxyConfiguration(nodeName: "node-a")
        adjust(&configuration)
        self.router = router
        let settings = RelaySettings(
            configuration: configuration,
            plane: plane,
            metrics: ProxyMetrics(),
            router: router,
            backend: "http://127.0.0.1:8080"
        )
        engine = HTTP1Connection(
            settings: settings,
            client: try? SocketAddress(ipAddress: "10.1.2.3", port: 5000),
            local: try? SocketAddress(ipAddress: "127.0.0.1", port: 7400),
            sniffsHTTP2: false,
            allocator: ByteBufferAllocator(),
            now: now
        )
    }

    /// The actions queued since the last step, as lines: `client <bytes>`, `upstream <bytes>`, `connect local`,
    /// `connect fresh peer b`, `release reusable`, `release closed`, `close`.
    private mutating func drain() -> [String] {
        var lines: [String] = []
        while let action = engine.nextAction() {
            switch action {
            case .writeClient(let bytes): lines.append("client " + String(buffer: bytes))
            case .writeUpstream(let bytes): lines.append("upstream " + String(buffer: bytes))
            case .connect(let route, let fresh): lines.append("connect \(fresh ? "fresh " : "")\(Self.name(route))")
            case .releaseUpstream(let reusable): lines.append(reusable ? "release reusable" : "release closed")
            case .closeClient: lines.append("close")
            case .handOffHTTP2: lines.append("http2")
            }
        }
        return lines
    }

    static func name(_ route: ProxyRoute) -> String {
        switch route {
        case .local: "local"
        case .peer(let name, _): "peer \(name)"
        }
    }

    /// The client sends `text` ("\n" becomes CRLF).
    mutating func client(_ text: String) -> [String] {
        engine.clientBytes(ByteBuffer(string: text.replacingCRLF()), now: now)
        return drain()
    }

    /// The client sends `bytes` as they are.
    mutating func clientRaw(_ text: String) -> [String] {
        engine.clientBytes(ByteBuffer(string: text), now: now)
        return drain()
    }

    mutating func connected(reused: Bool = false) -> [String] {
        engine.upstreamConnected(reused: reused, now: now)
        return drain()
    }

    mutating func connectFailed() -> [String] {
        engine.upstreamConnectFailed(ChannelError.connectTimeout(.seconds(1)), now: now)
        return drain()
    }

    /// The upstream sends `text` ("\n" becomes CRLF).
    mutating func upstream(_ text: String) -> [String] {
        engine.upstreamBytes(ByteBuffer(string: text.replacingCRLF()), now: now)
        return drain()
    }

    mutating func upstreamClosed() -> [String] {
        engine.upstreamClosed(now: now)
        return drain()
    }

    mutating func advance(_ time: TimeAmount) -> [String] {
        now = now + time
        engine.tick(now: now)
        return drain()
    }

    mutating func drainNode(closingUnused: Bool = false) -> [String] {
        engine.drain(now: now, closingUnused: closingUnused)
        return drain()
    }
}

extension [String] {
    /// The lines that start with `prefix`.
    func with(_ prefix: String) -> [String] { filter { $0.hasPrefix(prefix) } }

    /// Whether some line starts with `prefix` and contains `text`.
    func has(_ prefix: String, _ text: String) -> Bool { contains { $0.hasPrefix(prefix) && $0.contains(text) } }
}

@Suite("The HTTP/1.1 engine, event by event")
struct HTTP1ConnectionTests {
    static let ok = "HTTP/1.1 200 OK\nContent-Length: 2\n\nok"

    @Test func aRequestGoesUpstreamRewrittenAndItsConnectionIsKeptForTheNext() {
        var harness = EngineHarness()
        #expect(harness.client("GET /a HTTP/1.1\nHost: app\nX-Shard-Key: k1\n\n") == ["connect local"])
        let sent = harness.connected()
        #expect(sent.count == 1)
        let head = sent[0]
        #expect(head.hasPrefix("upstream GET /a HTTP/1.1\r\nHost: app\r\nX-Shard-Key: k1\r\n"))
        #expect(head.contains("x-forwarded-for: 10.1.2.3\r\n"))
        #expect(head.contains("x-forwarded-proto: http\r\nvia: 1.1 ringside-node-a\r\n"))
        #expect(head.hasSuffix("\r\n\r\n"))
        let answered = harness.upstream(Self.ok)
        #expect(answered.count == 1)
        #expect(answered[0].hasPrefix("client HTTP/1.1 200 OK\r\n"))
        #expect(answered[0].contains("x-ringside-node: node-a\r\n"))
        #expect(answered[0].hasSuffix("\r\n\r\nok"))
        // The next request to the same route goes out on the kept connection at once.
        let second = harness.client("GET /b HTTP/1.1\nHost: app\n\n")
        #expect(second.count == 1)
        #expect(second[0].hasPrefix("upstream GET /b HTTP/1.1"))
        // Idle for a check interval, the kept connection goes back to the pool.
        _ = harness.upstream(Self.ok)
        #expect(harness.advance(.seconds(2)) == ["release reusable"])
    }

    @Test func aConnectionThatNamesAFramingFieldIsRefusedAndNothingBehindItIsRead() {
        for field in ["content-length", "Transfer-Encoding", "host"] {
            var harness = EngineHarness()
            let smuggled = "GET /smuggled HTTP/1.1\nHost: app\nX-Ringside-Hop: x\nX-Ringside-Final: 1\n\n"
            let lines = harness.client(
                "POST / HTTP/1.1\nHost: app\nContent-Length: \(smuggled.replacingCRLF().utf8.count)\n"
                    + "Connection: \(field)\n\n\(smuggled)"
            )
            #expect(lines.count == 2, "\(field)")
            #expect(lines.has("client HTTP/1.1 400", "names a framing field"), "\(field)")
            #expect(lines.last == "close", "\(field)")
            #expect(!harness.engine.readsClient)
            #expect(harness.client("GET /after HTTP/1.1\nHost: app\n\n").isEmpty)
            #expect(harness.router.requests.isEmpty, "nothing was routed")
        }
    }

    @Test func ambiguousFramingIsRefusedWithAClose() {
        let cases: [(String, Int)] = [
            ("POST / HTTP/1.1\nHost: a\nTransfer-Encoding: gzip, chunked\n\n0\n\n", 501),
            ("POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\nTransfer-Encoding: chunked\n\n0\n\n", 501),
            ("POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\nContent-Length: 3\n\nabc", 400),
            ("POST / HTTP/1.1\nHost: a\nContent-Length: 3\nContent-Length: 3\n\nabc", 400),
            ("POST / HTTP/1.1\nHost: a\nContent-Length: +3\n\nabc", 400),
            ("POST / HTTP/1.0\nHost: a\nTransfer-Encoding: chunked\n\n0\n\n", 400),
            ("GET / HTTP/1.1\nHost: a\nX-Shard-Key: a\nX-Shard-Key: b\n\n", 400),
            ("GET / HTTP/1.1\nHost: a\nExpect: 200-ok\n\n", 417),
            ("GET / HTTP/1.1\nHost: a\nConnection: upgrade\nUpgrade: websocket\nContent-Length: 1\n\nx", 400),
        ]
        for (request, status) in cases {
            var harness = EngineHarness()
            let lines = harness.client(request + "GET /behind HTTP/1.1\nHost: a\n\n")
            #expect(lines.count == 2, "\(request)")
            #expect(lines.first?.hasPrefix("client HTTP/1.1 \(status) ") == true, "\(request)")
            #expect(lines.first?.contains("connection: close\r\n") == true, "\(request)")
            #expect(lines.last == "close", "\(request)")
        }
        // Bare LF, obs-fold and control characters are refused by the parser, before any routing.
        for request in [
            "GET / HTTP/1.1\r\nHost: a\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\u{0}c\r\n\r\n",
        ] {
            var harness = EngineHarness()
            let lines = harness.clientRaw(request)
            #expect(lines.first?.hasPrefix("client HTTP/1.1 400 ") == true, "\(request)")
            #expect(lines.last == "close")
            #expect(harness.router.requests.isEmpty)
        }
    }

    @Test func aChunkedBodyStreamsAsItCameAndThePipelinedRequestWaitsItsTurn() {
        var harness = EngineHarness()
        #expect(
            harness.client("POST /up HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\n\n3\nabc\n") == ["connect local"]
        )
        let sent = harness.connected()
        #expect(sent.count == 2)
        #expect(sent[0].contains("Transfer-Encoding: chunked\r\n"))
        #expect(sent[1] == "upstream 3\r\nabc\r\n")
        #expect(harness.engine.readsClient)
        // The last chunk and the next request arrive together: the body's end goes on, the request waits.
        #expect(harness.client("0\n\nGET /next HTTP/1.1\nHost: a\n\n") == ["upstream 0\r\n\r\n"])
        #expect(!harness.engine.readsClient)
        let lines = harness.upstream(Self.ok)
        #expect(lines.count == 2)
        #expect(lines[1].hasPrefix("upstream GET /next HTTP/1.1"))
    }

    @Test func aBrokenChunkedBodyIsRefused() {
        var harness = EngineHarness()
        _ = harness.client("POST / HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\n\n")
        _ = harness.connected()
        let lines = harness.client("zz\nabc\n")
        #expect(lines == ["release closed", lines[1], "close"])
        #expect(lines[1].hasPrefix("client HTTP/1.1 400 "))
    }

    @Test func expectContinueIsAnsweredHereAndNotPassedOn() {
        var harness = EngineHarness()
        let lines = harness.client("PUT /x HTTP/1.1\nHost: a\nExpect: 100-continue\nContent-Length: 5\n\n")
        #expect(lines == ["client HTTP/1.1 100 Continue\r\n\r\n", "connect local"])
        let sent = harness.connected()
        #expect(!sent[0].lowercased().contains("expect"))
    }

    @Test func interimResponsesReachHTTP11ClientsButNeverHTTP10Ones() {
        let interimThenOK = "HTTP/1.1 103 Early Hints\nLink: </s.css>\n\n" + Self.ok
        var modern = EngineHarness()
        _ = modern.client("GET / HTTP/1.1\nHost: a\n\n")
        _ = modern.connected()
        let toModern = modern.upstream(interimThenOK)
        #expect(toModern.first?.hasPrefix("client HTTP/1.1 103 Early Hints\r\n") == true)
        #expect(toModern.contains { $0.hasPrefix("client HTTP/1.1 200 OK") })

        // RFC 9110 §15.2: a server must not send a 1xx to an HTTP/1.0 client.
        var old = EngineHarness()
        _ = old.client("GET / HTTP/1.0\n\n")
        _ = old.connected()
        let toOld = old.upstream(interimThenOK)
        #expect(!toOld.contains { $0.contains(" 103 ") }, "\(toOld)")
        #expect(toOld.contains { $0.hasPrefix("client HTTP/1.1 200 OK") })
    }

    @Test func anUpgradeTunnelsAfterA101AndAnyOtherAnswerIsAResponse() {
        var harness = EngineHarness()
        let upgrade = "GET /ws HTTP/1.1\nHost: a\nConnection: Upgrade\nUpgrade: websocket\n\n"
        #expect(harness.client(upgrade) == ["connect fresh local"])
        let sent = harness.connected()
        #expect(sent[0].contains("Upgrade: websocket\r\n"))
        #expect(sent[0].contains("connection: upgrade\r\n"))
        let switched = harness.upstream(
            "HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\nConnection: upgrade\n\nhi"
        )
        #expect(switched.count == 1)
        #expect(switched[0].contains("Upgrade: websocket\r\n"))
        #expect(switched[0].contains("connection: upgrade\r\n"))
        #expect(switched[0].hasSuffix("\r\n\r\nhi"), "the bytes that came with the 101 follow it")
        #expect(harness.clientRaw("frame") == ["upstream frame"])
        #expect(harness.upstream("back") == ["client back"])
        #expect(harness.upstreamClosed() == ["close"])

        // Refused: the answer is relayed as a response, and the connection goes on.
        var refused = EngineHarness()
        _ = refused.client(upgrade)
        _ = refused.connected()
        let answer = refused.upstream("HTTP/1.1 403 Forbidden\nContent-Length: 0\n\n")
        #expect(answer.count == 1)
        #expect(answer[0].hasPrefix("client HTTP/1.1 403 Forbidden"))
        #expect(refused.engine.readsClient)
        // A 101 nobody asked for is not a tunnel.
        var unasked = EngineHarness()
        _ = unasked.client("GET / HTTP/1.1\nHost: a\n\n")
        _ = unasked.connected()
        let bogus = unasked.upstream("HTTP/1.1 101 Switching Protocols\nUpgrade: x\n\n")
        #expect(bogus.has("client HTTP/1.1 502", "switched protocols unasked"))
    }

    @Test func failoverTriesTheNextOwnerWhenTheFirstCannotBeReachedOrSaysItIsNotTheOwner() {
        let peers: [ProxyRoute] = [
            .peer(name: "b", address: "10.0.0.2:7401"), .peer(name: "c", address: "10.0.0.3:7401"),
        ]
        var harness = EngineHarness(router: TableRouter(["k": peers]))
        #expect(
            harness.client("POST / HTTP/1.1\nHost: a\nX-Shard-Key: k\nContent-Length: 2\n\nhi") == ["connect peer b"]
        )
        #expect(harness.connectFailed() == ["connect peer c"])
        #expect(harness.router.failures == [peers[0]])
        let sent = harness.connected()
        #expect(sent[0].contains("x-ringside-hop: node-a\r\n"))
        #expect(sent[0].contains("x-ringside-final: 1\r\n"), "the last candidate is marked")
        #expect(sent[1] == "upstream hi")

        var misrouted = EngineHarness(router: TableRouter(["k": peers]))
        _ = misrouted.client("GET / HTTP/1.1\nHost: a\nX-Shard-Key: k\n\n")
        _ = misrouted.connected()
        let next = misrouted.upstream(
            "HTTP/1.1 421 Misdirected Request\nX-Ringside-Not-Owner: b\nContent-Length: 0\n\n"
        )
        #expect(next == ["release closed", "connect peer c"])
    }

    @Test func aKeptConnectionThatClosesUnderAnIdempotentRequestIsReplacedOnce() {
        var harness = EngineHarness()
        _ = harness.client("GET / HTTP/1.1\nHost: a\n\n")
        _ = harness.connected(reused: true)
        #expect(harness.upstreamClosed() == ["connect fresh local"])
        _ = harness.connected()
        let lines = harness.upstreamClosed()
        #expect(lines.count == 1)
        #expect(lines[0].hasPrefix("client HTTP/1.1 502 "))
        #expect(lines[0].contains("the upstream closed before answering"))
        // A POST is never sent twice.
        var post = EngineHarness()
        _ = post.client("POST / HTTP/1.1\nHost: a\nContent-Length: 0\n\n")
        _ = post.connected(reused: true)
        #expect(post.upstreamClosed().has("client HTTP/1.1 502", "closed before answering"))
    }

    @Test func deadlinesEndHeadsConnectsAndRequests() {
        var head = EngineHarness { $0.headerReadTimeout = .seconds(2) }
        #expect(head.client("GET / HTTP/1.1\nHo").isEmpty)
        let late = head.advance(.seconds(3))
        #expect(late.has("client HTTP/1.1 408", "did not arrive in time"))
        #expect(late.last == "close")

        var connect = EngineHarness { $0.connectTimeout = .seconds(1) }
        _ = connect.client("GET / HTTP/1.1\nHost: a\n\n")
        let timedOut = connect.advance(.seconds(2))
        #expect(timedOut.first == "release closed")
        #expect(timedOut.has("client HTTP/1.1 502", "the backend http://127.0.0.1:8080: connect timed out"))

        var request = EngineHarness { $0.requestTimeout = .seconds(5) }
        _ = request.client("GET / HTTP/1.1\nHost: a\n\n")
        _ = request.connected()
        #expect(request.advance(.seconds(6)).has("client HTTP/1.1 504", "no answer from the backend"))

        var idle = EngineHarness { $0.idleTimeout = .seconds(5) }
        #expect(idle.advance(.seconds(6)) == ["close"])
    }

    @Test func drainingClosesIdleConnectionsAndSaysCloseOnTheLastResponse() {
        // Kept alive after a response, with nothing under way: closed at once.
        var idle = EngineHarness()
        _ = idle.client("GET / HTTP/1.1\nHost: a\n\n")
        _ = idle.connected()
        _ = idle.upstream(Self.ok)
        #expect(idle.drainNode().last == "close")
        #expect(idle.engine.isClosing)

        // Opened and not used yet (a client told to close opens one for its next request): served once, then closed.
        var fresh = EngineHarness()
        #expect(fresh.drainNode().isEmpty)
        _ = fresh.client("GET / HTTP/1.1\nHost: a\n\n")
        _ = fresh.connected()
        let answered = fresh.upstream(Self.ok)
        #expect(answered.first?.contains("connection: close\r\n") == true)
        #expect(answered.last == "close")

        // When the listener closes, a connection with part of a head closes (a slow client's is not a request yet);
        // one that has sent nothing is left for the listener's last moment, and served if its request comes.
        var partial = EngineHarness()
        _ = partial.client("GET / HT")
        #expect(partial.drainNode(closingUnused: true) == ["close"])
        var unused = EngineHarness()
        #expect(unused.drainNode(closingUnused: true).isEmpty)
        _ = unused.client("GET / HTTP/1.1\nHost: a\n\n")
        _ = unused.connected()
        #expect(unused.upstream(Self.ok).last == "close")

        var busy = EngineHarness()
        _ = busy.client("GET / HTTP/1.1\nHost: a\n\n")
        _ = busy.connected()
        #expect(busy.drainNode().isEmpty)
        let lines = busy.upstream(Self.ok)
        #expect(lines.count == 3)
        #expect(lines[0].contains("connection: close\r\n"))
        #expect(lines[1] == "release reusable")
        #expect(lines[2] == "close")
    }

    @Test func theKeyHeaderMatchesEveryTokenCharacterInAnyCaseAndAnEmptyValueIsNoKey() {
        var underscore = EngineHarness(router: TableRouter()) { $0.keyHeader = "X_Shard^Key" }
        _ = underscore.client("GET / HTTP/1.1\nHost: a\nx_shard^KEY: k1\n\n")
        #expect(underscore.router.requests.map(\.key) == ["k1"])
        // `_` is not `DEL`, `^` is not `~`.
        var lookalike = EngineHarness(router: TableRouter()) { $0.keyHeader = "X_Shard^Key" }
        _ = lookalike.clientRaw("GET / HTTP/1.1\r\nHost: a\r\nX~Shard~Key: k1\r\n\r\n")
        #expect(lookalike.router.requests.map(\.key) == [nil])

        var empty = EngineHarness(router: TableRouter(rejectMissingKey: true))
        let lines = empty.client("GET / HTTP/1.1\nHost: a\nX-Shard-Key: \n\n")
        #expect(empty.router.requests.map(\.key) == [nil])
        #expect(lines.has("client HTTP/1.1 400", "no key"))
    }

    @Test func forwardedProtoIsSetByTheProxyOnTheAppPlaneAndKeptFromAPeer() {
        var app = EngineHarness()
        _ = app.client("GET / HTTP/1.1\nHost: a\nX-Forwarded-Proto: https\n\n")
        let sent = app.connected()[0]
        #expect(!sent.contains("https"))
        #expect(sent.contains("x-forwarded-proto: http\r\n"))

        var cluster = EngineHarness(plane: .cluster)
        _ = cluster.client("GET / HTTP/1.1\nHost: a\nX-Ringside-Hop: b\nX-Forwarded-Proto: https\n\n")
        let forwarded = cluster.connected()[0]
        #expect(forwarded.contains("X-Forwarded-Proto: https\r\n"))
        #expect(!forwarded.contains("x-forwarded-proto: http\r\n"))
    }

    @Test func anHTTP10RequestGetsAHostAndClosesAfterItsResponse() {
        var harness = EngineHarness()
        _ = harness.client("GET /old HTTP/1.0\n\n")
        let sent = harness.connected()[0]
        #expect(sent.hasPrefix("upstream GET /old HTTP/1.0\r\n"))
        #expect(sent.contains("host: 127.0.0.1:7400\r\n"))
        let lines = harness.upstream("HTTP/1.0 200 OK\n\nbody")
        #expect(lines[0].contains("connection: close\r\n"))
        #expect(harness.upstreamClosed() == ["close"])
    }
}
