import NIOCore
import NIOPosix
import RingsideTestSupport
import Testing

@testable import RingsideProxy

#if canImport(Glibc)
import Glibc
#endif

/// What an attacker tried against the data plane, on both drivers: each of these reached a backend, or answered
/// wrongly, before the one engine.
@Suite("Hostile requests on loopback")
struct HardeningTests {
    @Test(arguments: AppIO.allCases) func aConnectionThatNamesContentLengthCannotSmuggleARequest(io: AppIO) async throws
    {
        let log = RequestLog()
        try await withProxy(io: io, log: log) { port in
            // The smuggled request would reach the backend with a forged hop header and without X-Forwarded-For, and
            // an unfinished one would wait on the pooled connection for the next client's request.
            let smuggled =
                "GET /smuggled HTTP/1.1\r\nHost: app\r\nX-Ringside-Final: 1\r\n\r\nGET /prefix HTTP/1.1\r\nX: "
            let raw = rawExchange(
                port: port,
                request(
                    "POST /outer HTTP/1.1\nHost: app\nContent-Length: \(smuggled.utf8.count)\nConnection: content-length\n\n"
                ) + Array(smuggled.utf8),
                untilClosed: true
            )
            let response = try #require(parseResponse(raw.bytes))
            #expect(response.status == 400)
            #expect(raw.closed)
            // The next client is served its own request.
            let next = rawExchange(port: port, request("GET /victim HTTP/1.1\nHost: app\n\n"))
            let uri = try #require(parseResponse(next.bytes)).header("x-echo-uri")
            #expect(uri == "/victim")
            #expect(log.lines == ["GET /victim"])
        }
    }

    @Test(arguments: AppIO.allCases) func aRequestPipelinedBehindARefusalNeverReachesABackend(io: AppIO) async throws {
        let log = RequestLog()
        try await withProxy(io: io, log: log) { port in
            for refused in [
                "POST / HTTP/1.1\nHost: app\nTransfer-Encoding: gzip, chunked\n\n0\n\n",
                "GET / HTTP/1.1\nHost: app\nConnection: host\n\n",
                "GET / HTTP/1.1\nHost: app\nExpect: 200-ok\n\n",
            ] {
                let raw = rawExchange(
                    port: port,
                    request(refused + "GET /behind HTTP/1.1\nHost: app\n\n"),
                    untilClosed: true
                )
                let status = try #require(parseResponse(raw.bytes)).status
                #expect([400, 417, 501].contains(status), "\(refused)")
                #expect(raw.closed)
            }
            // Once a later request has been served, anything sent before it would have arrived.
            _ = rawExchange(port: port, request("GET /probe HTTP/1.1\nHost: app\n\n"))
            #expect(await eventually { log.lines.contains("GET /probe") })
            #expect(log.lines == ["GET /probe"])
        }
    }

    @Test(arguments: AppIO.allCases) func aKeyHeaderWithAnUnderscoreIsFound(io: AppIO) async throws {
        // The key "down" goes to a peer that is not there: a 502 shows the key was read; 200 would mean the local
        // backend served it as keyless.
        let configuration = proxyConfiguration { $0.keyHeader = "X_Shard_Key" }
        try await withProxy(io: io, configuration: configuration, router: PartlyDownRouter()) { port in
            for body in ["", "abc"] {
                let raw = rawExchange(
                    port: port,
                    request(
                        "POST / HTTP/1.1\nHost: app\nx_shard_key: down\nContent-Length: \(body.utf8.count)\n\n\(body)"
                    )
                )
                let status = try #require(parseResponse(raw.bytes)).status
                #expect(status == 502)
            }
        }
    }

    @Test(arguments: AppIO.allCases) func aRefusedUpgradeIsAnsweredAndSentOnce(io: AppIO) async throws {
        let log = RequestLog()
        try await withProxy(io: io, log: log) { port in
            let raw = rawExchange(
                port: port,
                request("GET /status/403 HTTP/1.1\nHost: app\nConnection: Upgrade\nUpgrade: websocket\n\n")
            )
            let response = try #require(parseResponse(raw.bytes))
            #expect(response.status == 403)
            #expect(log.lines == ["GET /status/403"])
        }
    }

    @Test(arguments: AppIO.allCases) func headersTheProxySetsAreNotTakenFromTheClient(io: AppIO) async throws {
        try await withProxy(io: io) { port in
            let raw = rawExchange(port: port, request("GET / HTTP/1.1\nHost: app\nX-Forwarded-Proto: https\n\n"))
            let response = try #require(parseResponse(raw.bytes))
            #expect(response.headers("x-echo-h-x-forwarded-proto") == ["http"])
        }
        let reject = proxyConfiguration { $0.missingKey = .reject }
        try await withProxy(io: io, configuration: reject, router: LocalRouter(rejectMissingKey: true)) { port in
            // An empty key is no key.
            let raw = rawExchange(port: port, request("GET / HTTP/1.1\nHost: app\nX-Shard-Key: \n\n"))
            let status = try #require(parseResponse(raw.bytes)).status
            #expect(status == 400)
        }
    }

    @Test(arguments: AppIO.allCases) func anHTTP2ConnectionErrorEndsTheConnectionAfterOneGoAway(io: AppIO) async throws
    {
        try await withProxy(io: io) { port in
            let raw = rawExchange(port: port, RawHTTP2.connectionErrorThenJunk, untilClosed: true)
            #expect(raw.closed)
            #expect(RawHTTP2.goAways(raw.bytes).count == 1)
            #expect(RawHTTP2.goAways(raw.bytes).allSatisfy { $0.code != 0 })
        }
    }

    @Test(arguments: AppIO.allCases) func manyPipelinedRequestsAreAllServedAndAClientThatLeavesThemIsDropped(
        io: AppIO
    ) async throws {
        try await withProxy(io: io) { port in
            // More than one read's worth (16 KiB) of requests in one send: all of them are answered.
            let one = request("GET /p HTTP/1.1\nHost: app\n\n")
            let fd = try #require(connectLoopback(port: port))
            #expect(sendAll(fd, Array(Array(repeating: one, count: 800).joined())))
            var received: [UInt8] = []
            let status = Array("HTTP/1.1 200".utf8)
            func answers(_ bytes: [UInt8]) -> Int { bytes.ranges(of: status).count }
            receive(fd, into: &received, timeout: .seconds(10)) { answers($0) >= 800 }
            #expect(answers(received) == 800)
            close(fd)
            // A client that leaves its pipelined requests unread and closes takes nothing down.
            for _ in 0..<3 {
                let gone = try #require(connectLoopback(port: port))
                _ = sendAll(gone, Array(Array(repeating: one, count: 800).joined()))
                close(gone)
            }
            let after = rawExchange(port: port, request("GET /after HTTP/1.1\nHost: app\n\n"))
            #expect(parseResponse(after.bytes)?.status == 200)
        }
    }

    @Test(arguments: AppIO.allCases) func aBackendNamedByHostNameIsServedAndNamedInA502(io: AppIO) async throws {
        let log = RequestLog()
        try await withProxy(io: io, backendHost: "localhost", log: log) { port in
            let raw = rawExchange(port: port, request("POST /named HTTP/1.1\nHost: app\nContent-Length: 2\n\nhi"))
            let response = try #require(parseResponse(raw.bytes))
            #expect(response.status == 200)
            #expect(response.body == Array("hi".utf8))
            #expect(log.lines == ["POST /named"])
        }
        try await withProxy(io: io, backendHost: "no-such-host.invalid") { port in
            let raw = rawExchange(port: port, request("GET / HTTP/1.1\nHost: app\n\n"))
            let response = try #require(parseResponse(raw.bytes))
            #expect(response.status == 502)
            #expect(String(decoding: response.body, as: UTF8.self).contains("http://no-such-host.invalid:"))
        }
    }

    @Test(arguments: AppIO.allCases) func idleUpstreamConnectionsAreClosed(io: AppIO) async throws {
        let log = RequestLog()
        let configuration = proxyConfiguration { $0.upstreamIdleTimeout = .milliseconds(300) }
        try await withProxy(io: io, configuration: configuration, log: log) { port in
            for index in 0..<3 {
                let raw = rawExchange(port: port, request("GET /\(index) HTTP/1.1\nHost: app\n\n"))
                #expect(parseResponse(raw.bytes)?.status == 200)
            }
            #expect(log.lines.count == 3)
            #expect(await eventually { log.openConnections == 0 })
        }
    }

    @Test(arguments: AppIO.allCases) func a502NamesTheBackendItCouldNotReach(io: AppIO) async throws {
        try await withProxy(io: io, backendPort: freePort()) { port in
            let raw = rawExchange(port: port, request("GET / HTTP/1.1\nHost: app\n\n"))
            let response = try #require(parseResponse(raw.bytes))
            #expect(response.status == 502)
            let body = String(decoding: response.body, as: UTF8.self)
            #expect(body.contains("the backend http://127.0.0.1:"), "\(body)")
            #expect(!body.contains("local"), "\(body)")
        }
    }
}

@Suite("Upstream connection bounds")
struct UpstreamBoundsTests {
    @Test func leasesPastTheBoundWaitThenAreRefused() async throws {
        let backend = try await EchoBackend.start()
        defer { backend.channel.close(promise: nil) }
        let pool = HTTP1Pool(
            configuration: proxyConfiguration {
                $0.maxConnectionsPerUpstream = 2
                $0.maxPendingPerUpstream = 1
            },
            speaksBytes: true
        )
        defer { pool.shutdown() }
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let lease = { pool.lease(host: "127.0.0.1", port: backend.port, on: loop, fresh: false) }
        let first = try await lease().get()
        _ = try await lease().get()
        let waiting = lease()
        await #expect(throws: UpstreamBusy.self) { try await lease().get() }
        // A connection given back goes to the request that waited.
        first.release(true)
        let third = try await waiting.get()
        #expect(third.reused)
        #expect(third.channel === first.channel)
    }
}
