import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import RingsideCluster
import RingsideTestSupport
import Testing

@testable import RingsideProxy

/// How the app plane serves connections: every relay test runs both ways.
typealias AppIO = ProxyConfiguration.AppIO

/// Routes every request to the local backend, or refuses keyless ones when asked to.
struct LocalRouter: ProxyRouter {
    var rejectMissingKey = false

    func routes(for request: RoutingRequest) -> Result<[ProxyRoute], ProxyRefusal> {
        if request.key == nil && rejectMissingKey {
            return .failure(ProxyRefusal(status: .badRequest, message: "the request has no X-Shard-Key header"))
        }
        return .success([.local])
    }
}

/// A proxy serving its connections the `io` way (over TLS with `tls`) in front of an echo backend, both on free ports,
/// for one test.
func withProxy(
    io: AppIO,
    configuration: ProxyConfiguration = proxyConfiguration(),
    router: any ProxyRouter = LocalRouter(),
    backendHost: String = "127.0.0.1",
    backendPort: Int? = nil,
    log: RequestLog? = nil,
    tls: PlaneTLS? = nil,
    _ body: (_ proxyPort: Int) async throws -> Void
) async throws {
    let backend = try await EchoBackend.start(log: log)
    let (proxy, upstreams) = try await startProxy(
        io: io,
        configuration: configuration,
        router: router,
        backendHost: backendHost,
        backendPort: backendPort ?? backend.port,
        tls: tls
    )
    do {
        try await body(proxy.localAddress!.port!)
    } catch {
        try? await proxy.close()
        try? await backend.channel.close()
        throw error
    }
    try await proxy.close()
    upstreams.shutdown()
    try await backend.channel.close()
}

/// An app listener on a free port of 127.0.0.1 with `io`, routing with `router` to the backend at `backendPort`;
/// over TLS with `tls`, to a TLS backend with `backendTLS`. The caller closes the listener, then shuts the upstreams
/// down.
func startProxy(
    io: AppIO,
    configuration: ProxyConfiguration = proxyConfiguration(),
    router: any ProxyRouter = LocalRouter(),
    backendHost: String = "127.0.0.1",
    backendPort: Int,
    backendTLS: PlaneTLS? = nil,
    tls: PlaneTLS? = nil
) async throws -> (listener: any AppListener, upstreams: ClusterUpstreams) {
    var configuration = configuration
    configuration.appIO = io
    let upstreams = ClusterUpstreams(
        backendHost: backendHost,
        backendPort: backendPort,
        backendTLS: backendTLS,
        configuration: configuration
    )
    let listener = try await AppServer.bind(
        host: "127.0.0.1",
        port: 0,
        group: MultiThreadedEventLoopGroup.singleton,
        configuration: configuration,
        router: router,
        upstreams: upstreams,
        tls: tls
    )
    return (listener, upstreams)
}

/// The test proxy's configuration, adjusted.
func proxyConfiguration(_ adjust: (inout ProxyConfiguration) -> Void = { _ in }) -> ProxyConfiguration {
    var configuration = ProxyConfiguration(nodeName: "node-a")
    adjust(&configuration)
    return configuration
}

func request(_ text: String, body: [UInt8] = []) -> [UInt8] {
    Array(text.replacingCRLF().utf8) + body
}

extension String {
    /// Lines written with "\n" in tests become "\r\n" on the wire.
    func replacingCRLF() -> String {
        split(separator: "\n", omittingEmptySubsequences: false).joined(separator: "\r\n")
    }
}

/// Sends requests keyed "down" to a peer that is not there, the rest to the local backend.
struct PartlyDownRouter: ProxyRouter {
    func routes(for request: RoutingRequest) -> Result<[ProxyRoute], ProxyRefusal> {
        .success(request.key == "down" ? [.peer(name: "gone", address: "127.0.0.1:1")] : [.local])
    }
}

@Suite("Proxy on loopback")
struct ProxyTests {
    @Test(arguments: AppIO.allCases) func aLocalRequestIsProxiedWithProxyHygiene(io: AppIO) async throws {
        try await withProxy(io: io) { port in
            let raw = rawExchange(
                port: port,
                request(
                    "GET /hello?x=1 HTTP/1.1\nHost: app\nX-Shard-Key: user-1\nX-Ringside-Hop: spoofed\nConnection: keep-alive, X-Private\nX-Private: secret\nProxy-Connection: keep-alive\nTE: trailers\n\n"
                )
            )
            let response = try #require(parseResponse(raw.bytes))
            #expect(response.status == 200)
            #expect(response.header("x-echo-uri") == "/hello?x=1")
            #expect(response.header("x-echo-h-x-ringside-hop") == nil)
            #expect(response.header("x-echo-h-x-private") == nil)
            #expect(response.header("x-echo-h-proxy-connection") == nil)
            #expect(response.header("x-echo-h-te") == "trailers")
            #expect(response.header("x-echo-h-x-forwarded-for") == "127.0.0.1")
            #expect(response.header("x-echo-h-x-forwarded-proto") == "http")
            #expect(response.header("x-echo-h-via")?.contains("ringside-node-a") == true)
            #expect(response.header("x-echo-h-x-request-id")?.isEmpty == false)
            #expect(response.header("x-ringside-node") == "node-a")
        }
    }

    @Test(arguments: AppIO.allCases) func bodiesStreamBothWays(io: AppIO) async throws {
        try await withProxy(io: io) { port in
            let payload = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
            let raw = rawExchange(
                port: port,
                request(
                    "POST /upload HTTP/1.1\nHost: app\nX-Shard-Key: k\nContent-Length: \(payload.count)\n\n",
                    body: payload
                )
            )
            let response = try #require(parseResponse(raw.bytes))
            #expect(response.status == 200)
            #expect(response.body == payload)
        }
    }

    @Test(arguments: AppIO.allCases) func headAnd204And304HaveNoBodies(io: AppIO) async throws {
        try await withProxy(io: io) { port in
            for (method, path, status) in [
                ("HEAD", "/", 200), ("GET", "/status/204", 204), ("GET", "/status/304", 304),
            ] {
                let raw = rawExchange(
                    port: port,
                    request("\(method) \(path) HTTP/1.1\nHost: app\n\n"),
                    timeout: .seconds(1)
                )
                let response = try #require(parseResponse(raw.bytes, bodiless: true))
                #expect(response.status == status)
                let head = headEnd(raw.bytes)!
                #expect(raw.bytes.count == head + 4, "no body bytes after a \(status) to \(method)")
            }
        }
    }

    @Test(arguments: AppIO.allCases) func expectContinueIsAnsweredByTheProxy(io: AppIO) async throws {
        try await withProxy(io: io) { port in
            let raw = rawExchange(
                port: port,
                request(
                    "PUT /x HTTP/1.1\nHost: app\nExpect: 100-continue\nConnection: close\nContent-Length: 5\n\nhello"
                ),
                untilClosed: true
            )
            let text = String(decoding: raw.bytes, as: UTF8.self)
            #expect(text.hasPrefix("HTTP/1.1 100 Continue"))
            #expect(text.contains("HTTP/1.1 200 OK"))
            #expect(!text.contains("x-echo-h-expect"))
        }
    }

    @Test(arguments: AppIO.allCases) func malformedRequestsAre400(io: AppIO) async throws {
        try await withProxy(io: io) { port in
            let raw = rawExchange(port: port, Array("GARBAGE\r\n\r\n".utf8))
            #expect(parseResponse(raw.bytes)?.status == 400)
            let both = rawExchange(
                port: port,
                request("POST / HTTP/1.1\nHost: app\nContent-Length: 3\nTransfer-Encoding: chunked\n\n0\n\n")
            )
            #expect(parseResponse(both.bytes)?.status == 400)
        }
    }

    @Test(arguments: AppIO.allCases) func hugeHeadersAre431(io: AppIO) async throws {
        try await withProxy(io: io, configuration: proxyConfiguration { $0.maxHeaderBytes = 8192 }) { port in
            let raw = rawExchange(
                port: port,
                request("GET / HTTP/1.1\nHost: app\nX-Big: \(String(repeating: "a", count: 20_000))\n\n")
            )
            #expect(parseResponse(raw.bytes)?.status == 431)
            // The proxy still serves the next client.
            #expect(
                parseResponse(rawExchange(port: port, request("GET / HTTP/1.1\nHost: app\n\n")).bytes)?.status == 200
            )
        }
    }

    @Test(arguments: AppIO.allCases) func bodiesOverTheLimitAre413(io: AppIO) async throws {
        try await withProxy(io: io, configuration: proxyConfiguration { $0.maxBodyBytes = 1000 }) { port in
            let raw = rawExchange(port: port, request("POST / HTTP/1.1\nHost: app\nContent-Length: 5000\n\n"))
            #expect(parseResponse(raw.bytes)?.status == 413)
        }
    }

    @Test(arguments: AppIO.allCases) func aSlowLorisClientIsClosed(io: AppIO) async throws {
        try await withProxy(io: io, configuration: proxyConfiguration { $0.headerReadTimeout = .milliseconds(300) }) {
            port in
            let started = ContinuousClock.now
            let raw = rawExchange(
                port: port,
                request("GET / HTTP/1.1\nHost: app\nX-Slow: yes\n\n"),
                timeout: .seconds(5),
                pauseAfter: 10,
                pause: .seconds(2)
            )
            #expect(parseResponse(raw.bytes)?.status == 408)
            #expect(ContinuousClock.now - started < .seconds(3))
        }
    }

    @Test(arguments: AppIO.allCases) func aMissingKeyIsRejectedWhenConfigured(io: AppIO) async throws {
        try await withProxy(io: io, router: LocalRouter(rejectMissingKey: true)) { port in
            let raw = rawExchange(port: port, request("GET / HTTP/1.1\nHost: app\n\n"))
            #expect(parseResponse(raw.bytes)?.status == 400)
        }
    }

    @Test(arguments: AppIO.allCases) func anUnreachableBackendIs502(io: AppIO) async throws {
        try await withProxy(io: io, backendPort: 1) { port in
            let raw = rawExchange(port: port, request("GET / HTTP/1.1\nHost: app\n\n"))
            #expect(parseResponse(raw.bytes)?.status == 502)
        }
    }

    @Test(arguments: AppIO.allCases) func aPipelinedRequestAfterAFailedOneKeepsItsBody(io: AppIO) async throws {
        try await withProxy(io: io, router: PartlyDownRouter()) { port in
            let raw = rawExchange(
                port: port,
                request(
                    "GET /first HTTP/1.1\nHost: app\nX-Shard-Key: down\n\n"
                        + "POST /second HTTP/1.1\nHost: app\nX-Shard-Key: up\nContent-Length: 5\nConnection: close\n\nhello"
                ),
                untilClosed: true
            )
            let text = String(decoding: raw.bytes, as: UTF8.self)
            #expect(text.hasPrefix("HTTP/1.1 502"))
            #expect(text.contains("x-echo-uri: /second"))
            #expect(text.contains("\r\n5\r\nhello\r\n0\r\n"), "the second request's body reached the backend whole")
        }
    }

    @Test(arguments: AppIO.allCases) func keepAliveCarriesManyRequests(io: AppIO) async throws {
        try await withProxy(io: io) { port in
            let one = "GET /a HTTP/1.1\nHost: app\n\n"
            let raw = rawExchange(
                port: port,
                request(one + one + "GET /last HTTP/1.1\nHost: app\nConnection: close\n\n"),
                untilClosed: true
            )
            let text = String(decoding: raw.bytes, as: UTF8.self)
            #expect(text.split(separator: "HTTP/1.1 200 OK", omittingEmptySubsequences: false).count == 4)
            #expect(text.contains("x-echo-uri: /last"))
        }
    }
}

@Suite("The byte-level relay hands over what it does not carry")
struct RelayHandOffTests {
    @Test(arguments: AppIO.allCases) func aRefusalOnTheGeneralPathClosesAConnectionThatAskedToClose(
        io: AppIO
    ) async throws {
        try await withProxy(io: io, router: LocalRouter(rejectMissingKey: true)) { port in
            let raw = rawExchange(port: port, request("GET / HTTP/1.0\nHost: app\n\n"), untilClosed: true)
            #expect(parseResponse(raw.bytes)?.status == 400)
            #expect(raw.closed)
        }
    }

    @Test(arguments: AppIO.allCases) func aKeptUpstreamConnectionIsNotUsedForAnotherRoute(io: AppIO) async throws {
        try await withProxy(io: io, router: PartlyDownRouter()) { port in
            let raw = rawExchange(
                port: port,
                request(
                    "GET /one HTTP/1.1\nHost: app\nX-Shard-Key: up\n\n"
                        + "GET /two HTTP/1.1\nHost: app\nX-Shard-Key: down\n\n"
                        + "GET /three HTTP/1.1\nHost: app\nX-Shard-Key: up\nConnection: close\n\n"
                ),
                untilClosed: true
            )
            // The status codes in order (bodies need not end in a newline, so no line splitting).
            let statuses = String(decoding: raw.bytes, as: UTF8.self).components(separatedBy: "HTTP/1.1 ").dropFirst()
                .map { String($0.prefix(3)) }
            #expect(statuses == ["200", "502", "200"])
        }
    }

    @Test(arguments: AppIO.allCases) func anHTTP10RequestTakesTheGeneralPath(io: AppIO) async throws {
        try await withProxy(io: io) { port in
            let raw = rawExchange(port: port, request("GET /old HTTP/1.0\nHost: app\n\n"), untilClosed: true)
            let response = try #require(parseResponse(raw.bytes, closed: raw.closed))
            #expect(response.status == 200)
            #expect(response.header("x-echo-uri") == "/old")
            #expect(response.header("x-ringside-node") == "node-a")
        }
    }

    @Test(arguments: AppIO.allCases) func hostIsRequiredOnceInHTTP11AndGivenToHTTP10(io: AppIO) async throws {
        try await withProxy(io: io) { port in
            // RFC 9112 §3.2: HTTP/1.1 without Host, or any request with two, is 400 and never reaches the backend.
            for bad in [
                "GET /bare HTTP/1.1\n\n", "GET /two HTTP/1.1\nHost: a\nHost: b\n\n",
                "GET /two HTTP/1.0\nHost: a\nHost: b\n\n",
            ] {
                let raw = rawExchange(port: port, request(bad), untilClosed: true)
                let response = try #require(parseResponse(raw.bytes))
                #expect(response.status == 400, "\(bad)")
                #expect(response.header("x-echo-uri") == nil)
            }
            // HTTP/1.0 may leave it out: the backend gets the address the client reached.
            let raw = rawExchange(port: port, request("GET /bare HTTP/1.0\n\n"), untilClosed: true)
            let response = try #require(parseResponse(raw.bytes, closed: raw.closed))
            #expect(response.status == 200)
            #expect(response.header("x-echo-h-host") == "127.0.0.1:\(port)")
        }
    }

    @Test(arguments: AppIO.allCases) func anAbsoluteTargetReachesTheBackendInOriginFormWithItsHost(
        io: AppIO
    ) async throws {
        try await withProxy(io: io) { port in
            // RFC 9112 §3.2.2: the authority of an absolute-form target is the request's host, whatever Host says.
            let cases: [(request: String, uri: String, host: String)] = [
                ("GET http://shop.example:8080/cart?id=7 HTTP/1.1\nHost: other\n\n", "/cart?id=7", "shop.example:8080"),
                ("GET HTTPS://shop.example HTTP/1.1\nHost: shop.example\n\n", "/", "shop.example"),
                ("GET http://[::1]:81?q HTTP/1.1\nHost: x\n\n", "/?q", "[::1]:81"),
                (
                    "POST http://shop.example/up HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n\n1\nz\n0\n\n", "/up",
                    "shop.example"
                ),
                ("GET http://shop.example/old HTTP/1.0\n\n", "/old", "shop.example"),
            ]
            for (text, uri, host) in cases {
                let raw = rawExchange(port: port, request(text), untilClosed: text.contains("HTTP/1.0"))
                let response = try #require(parseResponse(raw.bytes, closed: raw.closed), "\(text)")
                #expect(response.status == 200, "\(text)")
                #expect(response.header("x-echo-uri") == uri, "\(text)")
                #expect(response.header("x-echo-h-host") == host, "\(text)")
            }
        }
    }

    @Test(arguments: AppIO.allCases) func targetsAndMethodsAReverseProxyDoesNotServeAreRefused(io: AppIO) async throws {
        try await withProxy(io: io) { port in
            let cases: [(request: String, status: Int)] = [
                // A tunnel would turn the connection into opaque bytes the relay would read as HTTP.
                ("CONNECT shop.example:443 HTTP/1.1\nHost: shop.example:443\n\n", 501),
                ("GET * HTTP/1.1\nHost: app\n\n", 400),
                ("GET shop.example/x HTTP/1.1\nHost: app\n\n", 400),
                ("GET ftp://shop.example/x HTTP/1.1\nHost: app\n\n", 400),
                ("GET http://user@shop.example/x HTTP/1.1\nHost: app\n\n", 400),
                ("GET http:///x HTTP/1.1\nHost: app\n\n", 400),
                // RFC 9112 §6.1: HTTP/1.0 has no transfer codings.
                ("POST / HTTP/1.0\nHost: app\nTransfer-Encoding: chunked\n\n0\n\n", 400),
                ("POST / HTTP/1.1\nHost: app\nContent-Length: 3\nContent-Length: 3\n\nabc", 400),
            ]
            for (text, status) in cases {
                let raw = rawExchange(port: port, request(text), untilClosed: true)
                let response = try #require(parseResponse(raw.bytes), "\(text)")
                #expect(response.status == status, "\(text)")
                #expect(response.header("x-echo-uri") == nil, "\(text)")
            }
            // The asterisk is OPTIONS's, and passed on.
            let options = rawExchange(
                port: port,
                request("OPTIONS * HTTP/1.1\nHost: app\nConnection: close\n\n"),
                untilClosed: true
            )
            #expect(parseResponse(options.bytes)?.header("x-echo-uri") == "*")
        }
    }

    @Test(arguments: AppIO.allCases) func transferCodingsOtherThanChunkedAre501(io: AppIO) async throws {
        try await withProxy(io: io) { port in
            // Passed on, "gzip" would be dropped with the hop-by-hop header and the backend would read the compressed
            // bytes as the body.
            let raw = rawExchange(
                port: port,
                request("POST / HTTP/1.1\nHost: app\nTransfer-Encoding: gzip, chunked\n\n3\nabc\n0\n\n"),
                untilClosed: true
            )
            let response = try #require(parseResponse(raw.bytes))
            #expect(response.status == 501)
            #expect(response.header("x-echo-uri") == nil)
        }
    }

    @Test(arguments: AppIO.allCases) func anIdleHTTP2ConnectionIsSentGoAwayAndClosed(io: AppIO) async throws {
        let configuration = proxyConfiguration { $0.idleTimeout = .milliseconds(300) }
        try await withProxy(io: io, configuration: configuration) { port in
            // One GET on stream 1 (HPACK: :method GET, :scheme http, :path /, :authority a), then nothing.
            let get: [UInt8] = [0, 0, 6, 1, 5, 0, 0, 0, 1, 0x82, 0x86, 0x84, 0x01, 0x01, 0x61]
            let afterRequest = rawExchange(port: port, RawHTTP2.preface + get, untilClosed: true)
            #expect(afterRequest.closed)
            #expect(RawHTTP2.goAways(afterRequest.bytes).contains { $0.lastStream == 1 && $0.code == 0 })
            // A connection that never opens a stream.
            let quiet = rawExchange(port: port, RawHTTP2.preface, untilClosed: true)
            #expect(quiet.closed)
            #expect(RawHTTP2.goAways(quiet.bytes).contains { $0.lastStream == 0 && $0.code == 0 })
        }
    }

    @Test(arguments: AppIO.allCases) func aConnectionThatStopsInsideTheHTTP2PrefaceIsClosed(io: AppIO) async throws {
        let configuration = proxyConfiguration { $0.headerReadTimeout = .milliseconds(300) }
        try await withProxy(io: io, configuration: configuration) { port in
            let partial = rawExchange(port: port, Array(RawHTTP2.preface.prefix(16)), untilClosed: true)
            #expect(partial.closed)
            #expect(partial.bytes.isEmpty)
        }
    }

    @Test(arguments: AppIO.allCases) func http2HeaderBlocksUpToMaxHeaderBytesAreTaken(io: AppIO) async throws {
        let configuration = proxyConfiguration { $0.idleTimeout = .milliseconds(300) }
        try await withProxy(io: io, configuration: configuration) { port in
            // A 20 kB field: over NIO's default of 16 KiB, under max-header-bytes (64 KiB), which the proxy advertises.
            // The client acknowledges the proxy's SETTINGS first (the larger limit holds from then on).
            var block: [UInt8] = [0x82, 0x86, 0x84, 0x01, 0x01, 0x61, 0x00, 5] + Array("x-big".utf8)
            block += RawHTTP2.hpackInteger(20_000, prefixBits: 7) + Array(repeating: UInt8(ascii: "b"), count: 20_000)
            var bytes = RawHTTP2.preface + [0, 0, 0, 4, 1, 0, 0, 0, 0]
            let pieces = stride(from: 0, to: block.count, by: 16_384).map {
                Array(block[$0..<min($0 + 16_384, block.count)])
            }
            for (index, piece) in pieces.enumerated() {
                let last = index == pieces.count - 1
                let type: UInt8 = index == 0 ? 1 : 9
                let flags: UInt8 = (last ? 4 : 0) | (index == 0 ? 1 : 0)
                bytes += [0, UInt8(piece.count >> 8), UInt8(piece.count & 0xff), type, flags, 0, 0, 0, 1] + piece
            }
            let raw = rawExchange(port: port, bytes, untilClosed: true)
            #expect(RawHTTP2.frames(raw.bytes).contains { $0.type == 1 && $0.stream == 1 })
            #expect(!RawHTTP2.goAways(raw.bytes).contains { $0.code != 0 })
        }
    }

    @Test(arguments: AppIO.allCases) func aChunkedUploadIsHandedOverAndTheConnectionGoesOn(io: AppIO) async throws {
        try await withProxy(io: io) { port in
            let raw = rawExchange(
                port: port,
                request(
                    "GET /before HTTP/1.1\nHost: app\n\n"
                        + "POST /chunked HTTP/1.1\nHost: app\nTransfer-Encoding: chunked\n\n5\nhello\n0\n\n"
                        + "GET /after HTTP/1.1\nHost: app\nConnection: close\n\n"
                ),
                untilClosed: true
            )
            let text = String(decoding: raw.bytes, as: UTF8.self)
            #expect(text.split(separator: "HTTP/1.1 200 OK", omittingEmptySubsequences: false).count == 4)
            #expect(text.contains("x-echo-uri: /before"))
            #expect(text.contains("x-echo-uri: /chunked"))
            #expect(text.contains("hello"))
            #expect(text.contains("x-echo-uri: /after"))
        }
    }

    @Test(arguments: AppIO.allCases) func laterHTTP1VersionsAreServedAs11AndBadRequestLinesAre400(
        io: AppIO
    ) async throws {
        try await withProxy(io: io) { port in
            // RFC 9112 §2.3: a minor version this proxy does not know is served as the highest it does.
            let later = rawExchange(port: port, request("GET /later HTTP/1.7\nHost: app\n\n"))
            let response = try #require(parseResponse(later.bytes))
            #expect(response.status == 200)
            #expect(response.header("x-echo-uri") == "/later")
            #expect(response.header("x-echo-version") == "1.1")
            // With a chunked body too, absolute target or not: one engine reads every HTTP/1.x request.
            for target in ["/", "http://app/"] {
                let chunked = rawExchange(
                    port: port,
                    request("POST \(target) HTTP/1.7\nHost: app\nTransfer-Encoding: chunked\n\n1\nz\n0\n\n")
                )
                let response = try #require(parseResponse(chunked.bytes), "\(target)")
                #expect(response.status == 200, "\(target)")
                #expect(response.body == Array("z".utf8), "\(target)")
            }
            let major = rawExchange(port: port, request("GET / HTTP/3.0\nHost: app\n\n"), untilClosed: true)
            #expect([400, 505].contains(parseResponse(major.bytes)?.status ?? 0))
            let target = rawExchange(port: port, request("GET  / HTTP/1.1\nHost: app\n\n"))
            #expect(parseResponse(target.bytes)?.status == 400)
            let folded = rawExchange(port: port, request("GET / HTTP/1.1\nHost: app\n folded\n\n"))
            #expect(parseResponse(folded.bytes)?.status == 400)
        }
    }

    @Test(arguments: AppIO.allCases) func aLargeChunkedDownloadPassesThroughUnchanged(io: AppIO) async throws {
        try await withProxy(io: io) { port in
            let raw = rawExchange(
                port: port,
                request("GET /generate/1000000 HTTP/1.1\nHost: app\nConnection: close\n\n"),
                untilClosed: true
            )
            let response = try #require(parseResponse(raw.bytes))
            #expect(response.status == 200)
            #expect(response.body.count == 1_000_000)
        }
    }
}

@Suite("The relay under mutated requests")
struct RelayFuzzTests {
    /// A small seeded generator, so that a failure can be replayed.
    struct Generator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    static let valid = Array(
        "GET /a?b=c HTTP/1.1\r\nHost: app\r\nX-Shard-Key: k1\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\nContent-Length: 4\r\n\r\nbody"
            .utf8
    )

    static func mutate(_ bytes: [UInt8], using generator: inout Generator) -> [UInt8] {
        var bytes = bytes
        let interesting: [UInt8] = [13, 10, 32, 9, 58, 0, 127, 44, 97, 48, 200]
        for _ in 0..<Int.random(in: 1...4, using: &generator) {
            let index = Int.random(in: 0..<bytes.count, using: &generator)
            switch Int.random(in: 0..<4, using: &generator) {
            case 0: bytes[index] = interesting.randomElement(using: &generator)!
            case 1: bytes.insert(interesting.randomElement(using: &generator)!, at: index)
            case 2: if bytes.count > 1 { bytes.remove(at: index) }
            default: bytes[index] = UInt8.random(in: 0...255, using: &generator)
            }
        }
        return bytes
    }

    @Test(arguments: AppIO.allCases) func mutatedRequestsGetAnAnswerOrAClose(io: AppIO) async throws {
        try await withProxy(io: io, configuration: proxyConfiguration { $0.headerReadTimeout = .milliseconds(300) }) {
            port in
            var generator = Generator(state: 42)
            let requests = (0..<200).map { _ in Self.mutate(Self.valid, using: &generator) }
            let answers = await withTaskGroup(of: (Int, [UInt8]).self) { group in
                for (index, request) in requests.enumerated() {
                    group.addTask { (index, rawExchange(port: port, request, timeout: .milliseconds(600)).bytes) }
                }
                var answers = [[UInt8]](repeating: [], count: requests.count)
                for await (index, bytes) in group { answers[index] = bytes }
                return answers
            }
            // Both kinds occur: the mutations are not all fatal, nor all harmless.
            let statuses = answers.compactMap { parseResponse($0)?.status }
            #expect(statuses.contains(200) && statuses.contains(400))
            for (index, answer) in answers.enumerated() where !answer.isEmpty {
                let response = parseResponse(answer)
                #expect(response != nil, "request \(index) got an unparsable answer")
                if let status = response?.status {
                    #expect([200, 400, 408, 413, 431, 501, 502, 505].contains(status), "request \(index): \(status)")
                }
            }
            // The proxy is still healthy.
            let after = rawExchange(port: port, Self.valid)
            #expect(parseResponse(after.bytes)?.status == 200)
        }
    }
}

/// A backend that answers every request head with fixed bytes, then closes if asked to.
final class CannedBackend: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let answer: [UInt8]
    let closes: Bool
    /// Requests answered on a connection before the next one finds it closed, unanswered (as by a server that closes
    /// idle connections just as a request comes); nil for no limit.
    let answersPerConnection: Int?
    private let answered = NIOLockedValueBox(0)

    init(answer: String, closes: Bool, answersPerConnection: Int? = nil) {
        self.answer = Array(answer.utf8)
        self.closes = closes
        self.answersPerConnection = answersPerConnection
    }

    /// Connections accepted by every canned backend so far, by port.
    static let accepted = NIOLockedValueBox<[Int: Int]>([:])
    /// Connections open to every canned backend now, by port.
    static let open = NIOLockedValueBox<[Int: Int]>([:])

    func channelActive(context: ChannelHandlerContext) {
        if let port = context.channel.localAddress?.port {
            Self.accepted.withLockedValue { $0[port, default: 0] += 1 }
            Self.open.withLockedValue { $0[port, default: 0] += 1 }
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let port = context.channel.localAddress?.port { Self.open.withLockedValue { $0[port, default: 0] -= 1 } }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = Array(unwrapInboundIn(data).readableBytesView)
        guard headEnd(bytes) != nil else { return }
        let count = answered.withLockedValue {
            $0 += 1
            return $0
        }
        if let limit = answersPerConnection, count > limit {
            context.close(promise: nil)
            return
        }
        let done = context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: answer)))
        if closes { done.assumeIsolated().whenComplete { _ in context.close(promise: nil) } }
    }

    static func start(
        answer: String,
        closes: Bool = false,
        answersPerConnection: Int? = nil
    ) async throws -> (channel: any Channel, port: Int) {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        CannedBackend(answer: answer, closes: closes, answersPerConnection: answersPerConnection)
                    )
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return (channel, channel.localAddress!.port!)
    }
}

@Suite("The relay frames what backends send")
struct RelayResponseTests {
    func exchange(
        io: AppIO,
        backend answer: String,
        closes: Bool = false,
        request text: String
    ) async throws -> [UInt8] {
        try await exchangeClosing(io: io, backend: answer, closes: closes, request: text).bytes
    }

    /// The client's bytes, and whether the proxy closed the connection (within 5 s).
    func exchangeClosing(
        io: AppIO,
        backend answer: String,
        closes: Bool = false,
        request text: String
    ) async throws -> (bytes: [UInt8], closed: Bool) {
        let backend = try await CannedBackend.start(answer: answer, closes: closes)
        defer { backend.channel.close(promise: nil) }
        var result: (bytes: [UInt8], closed: Bool) = ([], false)
        try await withProxy(io: io, backendPort: backend.port) { port in
            result = rawExchange(port: port, request(text), timeout: .seconds(5), untilClosed: true)
        }
        return result
    }

    @Test(arguments: AppIO.allCases) func aGarbledResponseIs502AndAClientThatAskedToCloseIsClosed(
        io: AppIO
    ) async throws {
        let (bytes, closed) = try await exchangeClosing(
            io: io,
            backend: "NOT HTTP\r\n\r\n",
            request: "GET / HTTP/1.1\nHost: app\nConnection: close\n\n"
        )
        let response = try #require(parseResponse(bytes))
        #expect(response.status == 502)
        #expect(String(decoding: response.body, as: UTF8.self).contains("status line or body length is malformed"))
        #expect(closed)
    }

    @Test(arguments: AppIO.allCases) func a502SaysWhatWasWrongWithTheUpstreamsAnswer(io: AppIO) async throws {
        let cases: [(answer: String, closes: Bool, says: String)] = [
            (
                "HTTP/1.1 200 OK\r\nX-Big: \(String(repeating: "a", count: 70_000))\r\nContent-Length: 0\r\n\r\n",
                false,
                "larger than 64 KiB"
            ),
            ("HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n", false, "response head is malformed"),
            ("HTTP/1.1 103 Early Hints\r\n\r\n", true, "closed before answering"),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false, "chunked framing is malformed"),
            ("", true, "closed before answering"),
        ]
        for (answer, closes, says) in cases {
            // POST: not idempotent, so the one route's failure is the answer.
            let bytes = try await exchange(
                io: io,
                backend: answer,
                closes: closes,
                request: "POST / HTTP/1.1\nHost: app\nContent-Length: 0\nConnection: close\n\n"
            )
            // The final answer, after any interim ones; only its start is shown, should it be a large one.
            let text = String(decoding: bytes, as: UTF8.self)
            let final =
                text.range(of: "HTTP/1.1 502 ").map { String(text[$0.lowerBound...]) } ?? String(text.prefix(200))
            #expect(final.hasPrefix("HTTP/1.1 502 ") && final.contains(says), "\(says): \(final.prefix(200))")
        }
    }

    @Test(arguments: AppIO.allCases) func aBodyUntilCloseReachesTheClientWhichIsThenClosed(io: AppIO) async throws {
        let bytes = try await exchange(
            io: io,
            backend: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it",
            closes: true,
            request: "GET / HTTP/1.1\nHost: app\n\n"
        )
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(text.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(text.lowercased().contains("connection: close\r\n"))
        #expect(text.hasSuffix("\r\n\r\nall of it"))
    }

    @Test(arguments: AppIO.allCases) func aCloseThatComesWithTheLastBytesEndsTheResponse(io: AppIO) async throws {
        // Epoll reports the backend's close once, often together with its last bytes: a relay that stopped reading at
        // a short read would never see the end of a body that runs until the close.
        let backend = try await CannedBackend.start(
            answer: "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it",
            closes: true
        )
        defer { backend.channel.close(promise: nil) }
        try await withProxy(io: io, backendPort: backend.port) { port in
            for attempt in 1...20 {
                let raw = rawExchange(
                    port: port,
                    request("GET / HTTP/1.1\nHost: app\n\n"),
                    timeout: .seconds(3),
                    untilClosed: true
                )
                #expect(raw.closed, "attempt \(attempt)")
                #expect(String(decoding: raw.bytes, as: UTF8.self).hasSuffix("\r\n\r\nall of it"), "attempt \(attempt)")
                if !raw.closed { break }
            }
        }
    }

    @Test(arguments: AppIO.allCases) func aKeptConnectionClosedUnderARequestIsReplacedForIdempotentOnes(
        io: AppIO
    ) async throws {
        // The backend answers one request a connection and closes the next one's connection unanswered, as a server
        // closing idle connections does when a request crosses the close.
        let backend = try await CannedBackend.start(
            answer: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            answersPerConnection: 1
        )
        defer { backend.channel.close(promise: nil) }
        try await withProxy(io: io, backendPort: backend.port) { port in
            // Three GETs on one client connection (the byte-level path), then HTTP/1.0 ones (the general path, which
            // leases per request).
            let get = "GET / HTTP/1.1\nHost: app\n\n"
            let raw = rawExchange(
                port: port,
                request(get + get + "GET / HTTP/1.1\nHost: app\nConnection: close\n\n"),
                untilClosed: true
            )
            let text = String(decoding: raw.bytes, as: UTF8.self)
            #expect(text.components(separatedBy: "HTTP/1.1 200 OK").count == 4, "\(text)")
            // Six: the pool is per event loop, so at least four of them go out on a kept connection.
            for _ in 0..<6 {
                let old = rawExchange(port: port, request("GET /old HTTP/1.0\nHost: app\n\n"), untilClosed: true)
                #expect(parseResponse(old.bytes)?.status == 200)
            }
            // A POST may have been acted on before the close: it is not sent twice. (It follows a GET on the same
            // client connection, so it goes out on the upstream connection the GET was answered on.)
            let post = rawExchange(
                port: port,
                request(get + "POST / HTTP/1.1\nHost: app\nContent-Length: 0\nConnection: close\n\n"),
                untilClosed: true
            )
            let answers = String(decoding: post.bytes, as: UTF8.self)
            #expect(answers.hasPrefix("HTTP/1.1 200 OK"))
            #expect(answers.contains("HTTP/1.1 502 Bad Gateway"), "\(answers)")
        }
    }

    @Test(arguments: AppIO.allCases) func chunkedTrailersAndInterimResponsesPassThroughVerbatim(io: AppIO) async throws
    {
        let chunked = "4\r\nwiki\r\n5;x=y\r\npedia\r\n0\r\nGrpc-Status: 0\r\n\r\n"
        let bytes = try await exchange(
            io: io,
            backend: "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
                + "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Grpc-Status\r\n\r\n" + chunked,
            request: "GET / HTTP/1.1\nHost: app\nConnection: close\n\n"
        )
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(text.hasPrefix("HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n"))
        #expect(text.contains("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Grpc-Status\r\n"))
        #expect(text.contains("x-ringside-node: node-a\r\n"))
        #expect(text.hasSuffix("\r\n\r\n" + chunked))
    }

    @Test(arguments: AppIO.allCases) func aLengthBesideChunkedFramingIsNotPassedOn(io: AppIO) async throws {
        // RFC 9112 §6.3: the coding frames the body, and an intermediary removes the length before passing it on, so
        // that no one further along can read the body by the length instead.
        let bytes = try await exchange(
            io: io,
            backend: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            request: "GET / HTTP/1.1\nHost: app\nConnection: close\n\n"
        )
        let text = String(decoding: bytes, as: UTF8.self).lowercased()
        #expect(text.hasPrefix("http/1.1 200 ok\r\n"))
        #expect(text.contains("transfer-encoding: chunked\r\n"))
        #expect(!text.contains("content-length"))
        #expect(text.hasSuffix("\r\n\r\n2\r\nok\r\n0\r\n\r\n"))
    }

    @Test(arguments: AppIO.allCases) func aChunkedResponseLeavesItsUpstreamConnectionReusable(io: AppIO) async throws {
        let backend = try await CannedBackend.start(
            answer: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        )
        defer { backend.channel.close(promise: nil) }
        try await withProxy(io: io, backendPort: backend.port) { port in
            let one = "GET / HTTP/1.1\nHost: app\n\n"
            let raw = rawExchange(
                port: port,
                request(one + one + "GET / HTTP/1.1\nHost: app\nConnection: close\n\n"),
                untilClosed: true
            )
            let text = String(decoding: raw.bytes, as: UTF8.self)
            #expect(text.split(separator: "HTTP/1.1 200 OK", omittingEmptySubsequences: false).count == 4)
        }
        #expect(CannedBackend.accepted.withLockedValue { $0[backend.port] } == 1)
    }

    @Test(arguments: AppIO.allCases) func fieldsAResponseNamesInConnectionStayBehind(io: AppIO) async throws {
        let bytes = try await exchange(
            io: io,
            backend: "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Backend-Only\r\nX-Backend-Only: 1\r\n"
                + "X-Kept: 2\r\nContent-Length: 2\r\n\r\nok",
            request: "GET / HTTP/1.1\nHost: app\nConnection: close\n\n"
        )
        let text = String(decoding: bytes, as: UTF8.self).lowercased()
        #expect(text.hasPrefix("http/1.1 200 ok\r\n"))
        #expect(!text.contains("x-backend-only"))
        #expect(text.contains("x-kept: 2\r\n"))
        #expect(text.hasSuffix("\r\n\r\nok"))
    }

    @Test(arguments: AppIO.allCases) func anHTTP10ResponseIsSpokenAs11AndItsConnectionNotReused(io: AppIO) async throws
    {
        let bytes = try await exchange(
            io: io,
            backend: "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
            request: "GET / HTTP/1.1\nHost: app\nConnection: close\n\n"
        )
        let response = try #require(parseResponse(bytes))
        #expect(response.status == 200)
        #expect(response.body == Array("ok".utf8))
        #expect(String(decoding: bytes, as: UTF8.self).hasPrefix("HTTP/1.1 200 OK"))
    }
}
