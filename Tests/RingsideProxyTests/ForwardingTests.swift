import Logging
import NIOCore
import NIOHTTP1
import RingsideCluster
import RingsideSharding
import RingsideTestSupport
import Testing

@testable import RingsideProxy

/// `count` full Ringside nodes in this process, each with its own echo backend, `node-0` the seed of the others.
/// The kind of backend each node of a test cluster gets.
enum TestBackendKind {
    case echo
    case http2Trailers
    case webSocket
}

func withRingside(
    _ count: Int,
    backends kind: TestBackendKind = .echo,
    _ body: ([RingsideServer]) async throws -> Void
) async throws {
    var backends: [any Channel] = []
    func makeServer(_ index: Int, seeds: [String]) async throws -> RingsideServer {
        let backend: (channel: any Channel, port: Int) =
            switch kind {
            case .echo: try await EchoBackend.start()
            case .http2Trailers: try await TrailerBackend.start()
            case .webSocket: try await WebSocketEchoBackend.start()
            }
        backends.append(backend.channel)
        var cluster = ClusterConfiguration(nodeName: "node-\(index)")
        cluster.listenAddress = "127.0.0.1:0"
        cluster.seeds = seeds
        return RingsideServer(
            cluster: cluster,
            proxy: ProxyConfiguration(nodeName: "node-\(index)"),
            appHost: "127.0.0.1",
            appPort: 0,
            backendHost: "127.0.0.1",
            backendPort: backend.port,
            backendSpeaksHTTP2: kind == .http2Trailers,
            logger: Logger(label: "test")
        )
    }
    try await withThrowingTaskGroup(of: Void.self) { group in
        let seed = try await makeServer(0, seeds: [])
        group.addTask { try await seed.run() }
        let seedAddress = try await seed.node.waitUntilRunning()
        var servers = [seed]
        for index in 1..<count {
            let server = try await makeServer(index, seeds: [seedAddress])
            servers.append(server)
            group.addTask { try await server.run() }
        }
        for server in servers { _ = try await server.node.waitUntilRunning() }
        _ = await eventually { servers.allSatisfy { $0.appPortBound != nil && $0.node.peers.count == count } }
        let outcome: Result<Void, any Error>
        do {
            try await body(servers)
            outcome = .success(())
        } catch {
            outcome = .failure(error)
        }
        for server in servers { await server.stop() }
        try await group.waitForAll()
        for backend in backends { try? await backend.close() }
        try outcome.get()
    }
}

@Suite("Forwarding between nodes", .serialized)
struct ForwardingTests {
    @Test func everyKeyIsServedByItsOwnerWhicheverNodeItEntersBy() async throws {
        try await withRingside(3) { servers in
            #expect(servers.allSatisfy { $0.node.peers.count == 3 })
            var servedBy: [String: Set<String>] = [:]
            for index in 0..<60 {
                let key = "customer-\(index)"
                let owner = try servers[0].node.lookup(key).first!.name
                for server in servers {
                    let raw = rawExchange(
                        port: server.appPortBound!,
                        request("GET /orders/\(index) HTTP/1.1\nHost: app\nX-Shard-Key: \(key)\n\n")
                    )
                    let response = try #require(parseResponse(raw.bytes))
                    #expect(response.status == 200)
                    #expect(response.header("x-echo-uri") == "/orders/\(index)")
                    servedBy[key, default: []].insert(response.header("x-ringside-node") ?? "?")
                }
                #expect(servedBy[key] == [owner], "key \(key) is owned by \(owner)")
            }
            // Keys spread over all three nodes.
            #expect(Set(servedBy.values.flatMap { $0 }).count == 3)
        }
    }

    @Test func aRequestBodyCrossesTheHop() async throws {
        try await withRingside(2) { servers in
            let key = (0..<100).map { "k\($0)" }.first { (try? servers[0].node.lookup($0).first?.isSelf) == false }!
            let payload = (0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            let raw = rawExchange(
                port: servers[0].appPortBound!,
                request(
                    "POST /upload HTTP/1.1\nHost: app\nX-Shard-Key: \(key)\nContent-Length: \(payload.count)\n\n",
                    body: payload
                )
            )
            let response = try #require(parseResponse(raw.bytes))
            #expect(response.status == 200)
            #expect(response.header("x-ringside-node") == "node-1")
            #expect(response.body == payload)
        }
    }

    @Test func anHTTP2RequestWithTrailersCrossesTheHopEndToEnd() async throws {
        try await withRingside(2, backends: .http2Trailers) { servers in
            let key = (0..<100).map { "k\($0)" }.first { (try? servers[0].node.lookup($0).first?.isSelf) == false }!
            let head = HTTPRequestHead(
                version: .http2,
                method: .POST,
                uri: "/orders.OrderService/Get",
                headers: HTTPHeaders([
                    ("host", "app"), ("content-type", "application/grpc"), ("te", "trailers"), ("x-shard-key", key),
                ])
            )
            let message: [UInt8] = [0, 0, 0, 0, 3, 1, 2, 3]
            let response = try await http2Exchange(
                port: servers[0].appPortBound!,
                head: head,
                body: message,
                trailers: ["x-check": "passed"]
            )
            #expect(response.head.status == .ok)
            #expect(response.head.headers.first(name: "x-ringside-node") == "node-1")
            #expect(response.body == message)
            #expect(response.trailers?.first(name: "grpc-status") == "0")
            #expect(response.trailers?.first(name: "x-echo-trailer") == "passed", "the request's trailers arrived too")
        }
    }

    /// An `h2c://` backend: HTTP/1.1 clients are served by the engine too, each request a stream of its own, locally
    /// and across the hop, on a kept connection, with a chunked body's trailers reaching the backend.
    @Test func http1ClientsReachAnHTTP2BackendLocallyAndAcrossTheHop() async throws {
        try await withRingside(2, backends: .http2Trailers) { servers in
            let keys = (0..<100).map { "k\($0)" }
            let local = try #require(keys.first { (try? servers[0].node.lookup($0).first?.isSelf) == true })
            let remote = try #require(keys.first { (try? servers[0].node.lookup($0).first?.isSelf) == false })
            for (key, owner) in [(local, "node-0"), (remote, "node-1")] {
                let raw = rawExchange(
                    port: servers[0].appPortBound!,
                    request(
                        """
                        POST /a HTTP/1.1\nHost: app\nX-Shard-Key: \(key)\nContent-Length: 5\n\nhelloPOST /b HTTP/1.1
                        Host: app\nX-Shard-Key: \(key)\nTransfer-Encoding: chunked\n\n3\nabc\n0\nx-check: passed\n
                        HEAD /c HTTP/1.1\nHost: app\nX-Shard-Key: \(key)\nConnection: close\n\n
                        """
                    ),
                    untilClosed: true
                )
                let text = String(decoding: raw.bytes, as: UTF8.self)
                #expect(raw.closed)
                #expect(text.components(separatedBy: "HTTP/1.1 200 OK\r\n").count == 4, "three answers: \(text)")
                #expect(text.components(separatedBy: "x-ringside-node: \(owner)").count == 4, "from \(owner): \(text)")
                let first = try #require(parseResponse(raw.bytes))
                #expect(first.header("x-echo-uri") == "/a")
                #expect(first.body == Array("hello".utf8))
                #expect(text.contains("x-echo-uri: /b"))
                #expect(text.contains("abc\r\n0\r\n"))
                #expect(text.contains("x-echo-trailer: passed"), "the request's trailer reached the backend")
                #expect(text.contains("x-echo-uri: /c"))
            }
        }
    }

    @Test func aWebSocketEchoesThroughAForwardHopAndLocally() async throws {
        try await withRingside(2, backends: .webSocket) { servers in
            let keys = (0..<100).map { "room-\($0)" }
            let remote = keys.first { (try? servers[0].node.lookup($0).first?.isSelf) == false }!
            let local = keys.first { (try? servers[0].node.lookup($0).first?.isSelf) == true }!
            for (key, owner) in [(remote, "node-1"), (local, "node-0")] {
                let result = try #require(
                    webSocketEcho(port: servers[0].appPortBound!, key: key, message: "hello \(key)")
                )
                #expect(result.status == 101)
                // The accept value the backend computed from the client's key, passed through unchanged.
                #expect(result.header("sec-websocket-accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                #expect(result.header("x-ringside-node") == owner)
                #expect(result.header("upgrade")?.lowercased() == "websocket")
                #expect(result.header("connection")?.lowercased() == "upgrade")
                #expect(result.echoed == "hello \(key)")
            }
        }
    }

    @Test func theClusterPortRefusesRequestsThatDidNotComeFromAPeer() async throws {
        try await withRingside(2) { servers in
            let address = try await servers[1].node.waitUntilRunning()
            let port = Int(address.split(separator: ":").last!)!
            // A request without the hop header is not from a peer: refused before the backend sees it.
            let raw = rawExchange(
                port: port,
                request("GET / HTTP/1.1\nHost: x\nX-Shard-Key: k\n\n"),
                timeout: .seconds(1)
            )
            #expect(parseResponse(raw.bytes)?.status == 403)
            #expect(servers[1].node.peers.count == 2)
        }
    }
}
