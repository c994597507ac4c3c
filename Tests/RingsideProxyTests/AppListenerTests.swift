import NIOCore
import NIOPosix
import RingsideTestSupport
import Testing

@testable import RingsideProxy

#if canImport(Glibc)
import Glibc
#endif

/// Sends a request keyed "named" to a "peer" whose address is a host name, the rest to the local backend.
struct NamedPeerRouter: ProxyRouter {
    var port: Int

    func routes(for request: RoutingRequest) -> Result<[ProxyRoute], ProxyRefusal> {
        .success(request.key == "named" ? [.peer(name: "named", address: "localhost:\(port)")] : [.local])
    }
}

@Suite("The app listener's life and hand-overs")
struct AppListenerTests {
    func send(_ fd: Int32, _ text: String) { sendAll(fd, Array(text.utf8)) }

    /// Whether 127.0.0.1:`port` comes to refuse connections (its listener has closed).
    func refuses(_ port: Int) async -> Bool {
        await eventually {
            guard let probe = connectLoopback(port: port) else { return true }
            close(probe)
            return false
        }
    }

    @Test(arguments: AppIO.allCases)
    func closingTurnsNewConnectionsAwayAndLetsTheRequestUnderWayFinish(io: AppIO) async throws {
        let backend = try await EchoBackend.start()
        defer { backend.channel.close(promise: nil) }
        let (proxy, upstreams) = try await startProxy(io: io, backendPort: backend.port)
        defer { upstreams.shutdown() }
        let port = try #require(proxy.localAddress?.port)
        let fd = try #require(connectLoopback(port: port))
        defer { close(fd) }
        // The echo backend answers at once and echoes the body as it comes: "hello" back means the exchange is under
        // way end to end.
        send(fd, "POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\nhello")
        var bytes: [UInt8] = []
        receive(fd, into: &bytes) { String(decoding: $0, as: UTF8.self).contains("hello") }
        #expect(String(decoding: bytes, as: UTF8.self).hasPrefix("HTTP/1.1 200 OK\r\n"))

        async let closed: Void = proxy.close()
        let refused = await refuses(port)
        #expect(refused, "new connections are refused once the listener closes")

        send(fd, "world")
        receive(fd, into: &bytes) { String(decoding: $0, as: UTF8.self).hasSuffix("0\r\n\r\n") }
        try await closed
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(text.hasSuffix("0\r\n\r\n"), "the response under way ends properly")
        #expect(text.contains("hello\r\n") && text.contains("world\r\n"), "the whole body was echoed")
    }

    /// A client that connected just before the listener closed and sends its request a moment later is served, not
    /// reset: the closing listener leaves a connection that has sent nothing for its last second.
    @Test(arguments: AppIO.allCases)
    func aConnectionThatHasNotSentYetIsServedWhenTheListenerCloses(io: AppIO) async throws {
        let backend = try await EchoBackend.start()
        defer { backend.channel.close(promise: nil) }
        let (proxy, upstreams) = try await startProxy(io: io, backendPort: backend.port)
        defer { upstreams.shutdown() }
        let port = try #require(proxy.localAddress?.port)
        let fd = try #require(connectLoopback(port: port))
        defer { close(fd) }
        // The listener has taken the connection (a served request on another one says the proxy is up and reading).
        #expect(parseResponse(rawExchange(port: port, request("GET /up HTTP/1.1\nHost: app\n\n")).bytes)?.status == 200)
        async let closed = proxy.close()
        let refused = await refuses(port)
        #expect(refused, "the listener has closed")
        send(fd, "GET /late HTTP/1.1\r\nHost: app\r\n\r\n")
        var bytes: [UInt8] = []
        receive(fd, into: &bytes) { parseResponse($0) != nil }
        _ = try await closed
        let response = try #require(parseResponse(bytes), "answered, not reset")
        #expect(response.status == 200)
        #expect(response.header("x-echo-uri") == "/late")
        #expect(response.header("connection") == "close")
    }

    @Test(arguments: AppIO.allCases)
    func closingClosesTheUpstreamConnectionsItKept(io: AppIO) async throws {
        let backend = try await CannedBackend.start(answer: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        defer { backend.channel.close(promise: nil) }
        let (proxy, upstreams) = try await startProxy(io: io, backendPort: backend.port)
        let port = try #require(proxy.localAddress?.port)
        let raw = rawExchange(
            port: port,
            request("GET / HTTP/1.1\nHost: app\nConnection: close\n\n"),
            untilClosed: true
        )
        #expect(parseResponse(raw.bytes)?.status == 200)
        let open = { CannedBackend.open.withLockedValue { $0[backend.port] ?? 0 } }
        #expect(open() == 1, "the upstream connection is kept for the next request")
        try await proxy.close()
        upstreams.shutdown()
        #expect(await eventually { open() == 0 }, "nothing the listener kept stays open")
    }

    @Test(arguments: AppIO.allCases)
    func aRouteWhoseAddressIsANameIsServed(io: AppIO) async throws {
        let named = try await EchoBackend.start()
        defer { named.channel.close(promise: nil) }
        try await withProxy(io: io, router: NamedPeerRouter(port: named.port)) { port in
            let named = rawExchange(
                port: port,
                request("GET /a HTTP/1.1\nHost: app\nX-Shard-Key: named\nConnection: close\n\n"),
                untilClosed: true
            )
            let response = try #require(parseResponse(named.bytes))
            #expect(response.status == 200)
            #expect(response.header("x-echo-h-x-ringside-hop") == "node-a", "the named peer was reached as a peer")
            let local = rawExchange(
                port: port,
                request("GET /b HTTP/1.1\nHost: app\nX-Shard-Key: local\nConnection: close\n\n"),
                untilClosed: true
            )
            let text = String(decoding: local.bytes, as: UTF8.self)
            #expect(text.contains("x-echo-uri: /b"))
        }
    }
}
