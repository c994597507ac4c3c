import Logging
import NIOCore
import NIOPosix
import RingsideCluster
import RingsideTestSupport
import Testing

@testable import RingsideProxy

@Suite("TLS on the app plane and towards the backend")
struct TLSPlaneTests {
    /// An app listener over TLS (a certificate for 127.0.0.1 and localhost from a CA made here), to an echo backend.
    func withTLSProxy(_ body: (_ port: Int, _ ca: TestCA) async throws -> Void) async throws {
        let ca = try TestCA(directory: TestCA.temporaryDirectory())
        try ca.writeBundle()
        let files = try ca.issue(["localhost", "127.0.0.1"], file: "app")
        let tls = try PlaneTLS.app(certificate: files.certificate, key: files.key, logger: Logger(label: "test"))
        try await withProxy(io: .nio, tls: tls) { port in try await body(port, ca) }
    }

    @Test func aRequestOverTLSIsProxiedAndSaysHTTPSToTheBackend() async throws {
        try await withTLSProxy { port, ca in
            // A client's own X-Forwarded-Proto is replaced by what the proxy saw.
            let exchange = try await tlsExchange(
                port: port,
                request("GET /tls HTTP/1.1\nHost: app\nX-Forwarded-Proto: http\nConnection: close\n\n"),
                ca: ca.bundle,
                serverName: "localhost"
            )
            #expect(exchange.negotiatedProtocol == "http/1.1")
            let response = try #require(exchange.response)
            #expect(response.status == 200)
            #expect(response.header("x-echo-uri") == "/tls")
            #expect(response.headers("x-echo-h-x-forwarded-proto") == ["https"])
            // Without ALPN, the first bytes tell HTTP/1.1.
            let bare = try await tlsExchange(
                port: port,
                request("GET /bare HTTP/1.1\nHost: app\nConnection: close\n\n"),
                ca: ca.bundle,
                serverName: "localhost",
                protocols: []
            )
            #expect(bare.negotiatedProtocol == nil)
            #expect(bare.response?.status == 200)
            // An HTTP/2 client is offered h2.
            let h2 = try await tlsExchange(
                port: port,
                [],
                ca: ca.bundle,
                protocols: ["h2", "http/1.1"],
                timeout: .milliseconds(100)
            )
            #expect(h2.negotiatedProtocol == "h2")
        }
    }

    @Test func aPlaintextRequestToTheTLSPortIsNotServed() async throws {
        try await withTLSProxy { port, _ in
            let raw = rawExchange(port: port, request("GET / HTTP/1.1\nHost: app\n\n"), untilClosed: true)
            #expect(raw.closed)
            #expect(parseResponse(raw.bytes, closed: true) == nil || !raw.bytes.starts(with: Array("HTTP/".utf8)))
        }
    }

    /// A plaintext proxy to an `https://` backend at `host` whose certificate names `backendNames`, trusting `trusted`
    /// (the backend's CA, or another).
    func httpsBackendStatus(host: String, backendNames: [String], trustsBackendCA: Bool) async throws -> Int? {
        let backendCA = try TestCA(directory: TestCA.temporaryDirectory())
        let other = try TestCA(name: "other CA", directory: TestCA.temporaryDirectory())
        let backend = try await EchoBackend.start(tls: try backendCA.serverContext(backendNames, file: "backend"))
        defer { backend.channel.close(promise: nil) }
        let bundle = try (trustsBackendCA ? backendCA : other).writeBundle()
        let tls = try PlaneTLS.backend(ca: bundle, logger: Logger(label: "test"))
        let (listener, upstreams) = try await startProxy(
            io: .epoll,
            backendHost: host,
            backendPort: backend.port,
            backendTLS: tls
        )
        defer { upstreams.shutdown() }
        #expect(upstreams.backend == nil, "a TLS backend is not carried by the relay loops")
        #expect(upstreams.backendURL == "https://\(host):\(backend.port)")
        defer { Task { try? await listener.close() } }
        let raw = rawExchange(port: listener.localAddress!.port!, request("GET /s HTTP/1.1\nHost: app\n\n"))
        return parseResponse(raw.bytes)?.status
    }

    @Test func anHTTPSBackendIsCheckedAgainstItsCAAndItsName() async throws {
        #expect(
            try await httpsBackendStatus(host: "localhost", backendNames: ["localhost"], trustsBackendCA: true) == 200
        )
        #expect(
            try await httpsBackendStatus(host: "127.0.0.1", backendNames: ["127.0.0.1"], trustsBackendCA: true) == 200
        )
        // Another CA's certificate, or one for another name, is refused: the client gets a 502.
        #expect(
            try await httpsBackendStatus(host: "localhost", backendNames: ["localhost"], trustsBackendCA: false) == 502
        )
        #expect(
            try await httpsBackendStatus(host: "localhost", backendNames: ["api.other"], trustsBackendCA: true) == 502
        )
    }
}
