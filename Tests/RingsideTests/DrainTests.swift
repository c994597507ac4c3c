import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import RingsideTestSupport
import Testing

/// Runs blocking socket work on a thread of its own, so that the test's tasks go on meanwhile.
func onThread<Value: Sendable>(_ body: @escaping @Sendable () -> Value) async -> Value {
    await withCheckedContinuation { continuation in
        Thread.detachNewThread { continuation.resume(returning: body()) }
    }
}

/// A keyed request's bytes.
func keyedRequest(_ path: String, key: String, closing: Bool = false) -> [UInt8] {
    Array(
        "GET \(path) HTTP/1.1\r\nHost: app\r\nX-Shard-Key: \(key)\r\n\(closing ? "Connection: close\r\n" : "")\r\n".utf8
    )
}

@Suite("Draining ringside processes", .serialized)
struct DrainTests {
    /// Whether `node` comes to report one HTTP/1.1 request under way on its app plane.
    func oneRequestUnderWay(at node: RingsideProcesses.Node, in cluster: RingsideProcesses) async -> Bool {
        await eventually(timeout: .seconds(5)) {
            cluster.admin(node, "/v1/drain")?.contains("\"app_http1\":1") == true
        }
    }

    /// A key `owner` owns, as `asking` sees it.
    func key(ownedBy owner: String, in cluster: RingsideProcesses, asking: RingsideProcesses.Node) throws -> String {
        try #require((0..<500).map { "key-\($0)" }.first { cluster.owner(of: $0, askingNode: asking) == owner })
    }

    @Test(arguments: ["epoll", "nio"])
    func aDrainWaitsForRequestsUnderWayOnEveryPlaneThenExitsZero(appIO: String) async throws {
        let io = ["--app-io", appIO]
        try await withProcesses(2, joinAll: true, extraArguments: [0: io, 1: io]) { cluster in
            let other = cluster.nodes[0]
            let draining = cluster.nodes[1]
            let key = try key(ownedBy: "node-1", in: cluster, asking: other)
            // Two-second requests: HTTP/1.1 and HTTP/2 on the draining node's app plane, and one that another node
            // forwards to it.
            async let local = onThread {
                rawExchange(port: draining.app, keyedRequest("/delay/2000", key: key), timeout: .seconds(10))
            }
            async let hop = onThread {
                rawExchange(port: other.app, keyedRequest("/delay/2000", key: key), timeout: .seconds(10))
            }
            async let stream = http2Exchange(
                port: draining.app,
                head: HTTPRequestHead(
                    version: .http2,
                    method: .GET,
                    uri: "/delay/2000",
                    headers: ["host": "app", "x-shard-key": key]
                )
            )
            let underWay = await eventually(timeout: .seconds(5)) {
                let progress = cluster.admin(draining, "/v1/drain") ?? ""
                return progress.contains("\"app_http1\":1") && progress.contains("\"app_http2\":1")
                    && progress.contains("\"cluster\":1")
            }
            #expect(underWay, "three requests under way on node-1")
            cluster.signal(draining, SIGTERM)
            #expect(await eventually(timeout: .seconds(2)) { !cluster.isReady(draining) }, "readiness fails at once")
            #expect(cluster.admin(draining, "/v1/drain")?.contains("\"state\":\"draining\"") == true)

            let plain = try #require(parseResponse(await local.bytes))
            #expect(plain.status == 200)
            #expect(plain.body == Array("delayed".utf8))
            #expect(plain.header("connection") == "close", "the client learns not to send another on it")
            let forwarded = try #require(parseResponse(await hop.bytes))
            #expect(forwarded.status == 200)
            #expect(forwarded.header("x-ringside-node") == "node-1")
            let http2 = try await stream
            #expect(http2.head.status == .ok)
            #expect(http2.body == Array("delayed".utf8))

            #expect(await eventually(timeout: .seconds(15)) { !draining.process.isRunning }, "node-1 exits")
            #expect(draining.process.terminationStatus == 0)
            // node-0 learned of the departure: the key is its own now, from its kept connections as from new ones.
            for _ in 0..<5 {
                let response = cluster.get("/after", key: key, through: other)
                #expect(response?.status == 200)
                #expect(response?.header("x-ringside-node") == "node-0")
            }
        }
    }

    @Test func aDrainPastItsTimeoutCutsWhatIsLeftAndSaysSo() async throws {
        try await withProcesses(1, extraArguments: [0: ["--drain-timeout", "1s"]]) { cluster in
            let node = cluster.nodes[0]
            async let slow = onThread {
                rawExchange(port: node.app, keyedRequest("/delay/8000", key: "k"), timeout: .seconds(10))
            }
            #expect(await oneRequestUnderWay(at: node, in: cluster))
            let drain = await onThread {
                try? ProcessTests.runRingside(["drain", "--admin", "127.0.0.1:\(node.admin)", "--timeout", "1s"])
            }
            let result = try #require(drain)
            #expect(result.status == 3, "\(result.output) \(result.errors)")
            #expect(result.output.contains("0 requests finished, 1 cut"), "\(result.output)")
            #expect(result.output.contains("the node has exited"), "\(result.output)")
            #expect(await eventually(timeout: .seconds(5)) { !node.process.isRunning })
            #expect(node.process.terminationStatus == 3)
            let cut = await slow
            #expect(parseResponse(cut.bytes) == nil, "the request was cut")
        }
    }

    @Test func theDrainCommandWaitsForTheExitAndReportsWhatFinished() async throws {
        try await withProcesses(1) { cluster in
            let node = cluster.nodes[0]
            #expect(cluster.get("/before", key: "k", through: node)?.status == 200)
            #expect(cluster.admin(node, "/v1/drain")?.contains("\"state\":\"running\"") == true)
            let result = try #require(
                await onThread {
                    try? ProcessTests.runRingside(["drain", "--admin", "127.0.0.1:\(node.admin)", "--json"])
                }
            )
            #expect(result.status == 0, "\(result.output) \(result.errors)")
            #expect(result.output.contains("\"state\":\"stopped\""), "\(result.output)")
            #expect(result.output.contains("\"cut\":0"), "\(result.output)")
            #expect(await eventually(timeout: .seconds(5)) { !node.process.isRunning })
            #expect(node.process.terminationStatus == 0)
            // Nobody to drain any more: the command says the node cannot be reached.
            let again = try ProcessTests.runRingside(["drain", "--admin", "127.0.0.1:\(node.admin)"])
            #expect(again.status == 1)
            #expect(again.errors.contains("cannot reach the admin plane"), "\(again.errors)")
        }
    }

    @Test func aSecondSignalDuringTheDrainStopsAtOnce() async throws {
        try await withProcesses(1) { cluster in
            let node = cluster.nodes[0]
            async let slow = onThread {
                rawExchange(port: node.app, keyedRequest("/delay/8000", key: "k"), timeout: .seconds(10))
            }
            #expect(await oneRequestUnderWay(at: node, in: cluster))
            cluster.signal(node, SIGTERM)
            #expect(
                await eventually(timeout: .seconds(5)) {
                    cluster.admin(node, "/v1/drain")?.contains("\"state\":\"draining\"") == true
                }
            )
            let second = ContinuousClock.now
            cluster.signal(node, SIGTERM)
            #expect(await eventually(timeout: .seconds(5)) { !node.process.isRunning }, "it stops at once")
            #expect(ContinuousClock.now - second < .seconds(5), "well before the 8-second request would have ended")
            #expect(node.process.terminationStatus == 3, "a request was cut")
            _ = await slow
        }
    }

    @Test func neitherAHalfSentHeadNorAnOpenTunnelHoldsTheDrain() async throws {
        let webSocket = try await WebSocketEchoBackend.start()
        defer { webSocket.channel.close(promise: nil) }
        try await withProcesses(1, extraArguments: [0: ["--backend", "http://127.0.0.1:\(webSocket.port)"]]) {
            cluster in
            let node = cluster.nodes[0]
            // A slow client's head, half sent, and a WebSocket tunnel, both open when the drain begins.
            let slowloris = try #require(connectLoopback(port: node.app))
            defer { close(slowloris) }
            sendAll(slowloris, Array("GET /slow HTTP/1.1\r\nHost: app\r\nX-Sh".utf8))
            let tunnel = try #require(connectLoopback(port: node.app))
            defer { close(tunnel) }
            sendAll(
                tunnel,
                Array(
                    ("GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                        + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").utf8
                )
            )
            var answer: [UInt8] = []
            receive(tunnel, into: &answer) { String(decoding: $0, as: UTF8.self).contains("\r\n\r\n") }
            #expect(String(decoding: answer, as: UTF8.self).hasPrefix("HTTP/1.1 101"))
            #expect(cluster.admin(node, "/v1/drain")?.contains("\"tunnels\":1") == true)
            let started = ContinuousClock.now
            let result = try #require(
                await onThread {
                    try? ProcessTests.runRingside(["drain", "--admin", "127.0.0.1:\(node.admin)", "--json"])
                }
            )
            #expect(result.status == 0, "\(result.output) \(result.errors)")
            #expect(result.output.contains("\"tunnels_closed\":1"), "\(result.output)")
            #expect(ContinuousClock.now - started < .seconds(8), "the default 30 s drain timeout was not waited out")
            #expect(await eventually(timeout: .seconds(5)) { !node.process.isRunning })
            #expect(node.process.terminationStatus == 0)
        }
    }

    /// The acceptance test of a rolling deploy: five nodes under continuous keyed load, each drained and started again
    /// in turn (the same name, a new incarnation), and no request fails.
    @Test func aRollingDrainAndRestartOfFiveNodesUnderLoadLosesNoRequest() async throws {
        try await withProcesses(
            5,
            joinAll: true,
            extraArguments: Dictionary(
                uniqueKeysWithValues: (0..<5).map {
                    ($0, ["--rejoin-interval", "1s"])
                }
            )
        ) { cluster in
            let load = KeyedLoad(entries: cluster.nodes.map(\.app), keys: 200)
            let workers = (0..<4).map { _ in Thread { load.run() } }
            for worker in workers { worker.start() }
            defer { load.stop() }
            for index in 0..<5 {
                let node = cluster.nodes[index]
                // As a load balancer does once the pod is terminating: no new connections to it.
                load.remove(node.app)
                cluster.signal(node, SIGTERM)
                #expect(await eventually(timeout: .seconds(20)) { !node.process.isRunning }, "\(node.name) exits")
                #expect(node.process.terminationStatus == 0, "\(node.name) drained without cutting")
                try cluster.restart(index)
                try await cluster.waitUntilReady(5)
                load.add(node.app)
            }
            let served = load.stop()
            #expect(served.failures.isEmpty, "\(served.failures.prefix(5))")
            #expect(served.answered > 100, "\(served.answered) answers")
            // Converged: every answer comes from the key's owner.
            for number in 0..<20 {
                let key = "key-\(number)"
                let owner = cluster.owner(of: key, askingNode: cluster.nodes[0])
                for node in cluster.nodes {
                    #expect(cluster.get("/check", key: key, through: node)?.header("x-ringside-node") == owner)
                }
            }
        }
    }
}

@Suite("The readiness gate of ringside processes", .serialized)
struct ReadinessGateProcessTests {
    /// One `ringside run` with `arguments` (ports chosen here; the backend at `backend`, or at a port where nothing
    /// listens), its log in a pipe; `body` runs while it does, and it is stopped after.
    func withNode(
        _ arguments: [String],
        backend: Int? = nil,
        _ body: (_ admin: Int, _ stop: () -> String) async throws -> Void
    ) async throws {
        let admin = freePort()
        let log = Pipe()
        let process = RingsideProcesses.process(
            [
                "run", "--node-name", "alone", "--listen", "127.0.0.1:\(freePort())",
                "--cluster-listen", "127.0.0.1:\(freePort())", "--admin-listen", "127.0.0.1:\(admin)",
                "--backend", "http://127.0.0.1:\(backend ?? freePort())", "--participate-immediately", "false",
                "--rejoin-interval", "1s",
            ] + arguments,
            errors: log
        )
        try process.run()
        func stop() -> String {
            if process.isRunning {
                process.terminate()
                process.waitUntilExit()
            }
            return String(decoding: log.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        }
        defer { _ = stop() }
        try await body(admin, stop)
    }

    /// The text of a GET to the admin plane at `admin` (empty when nothing answered), and its status.
    func admin(_ admin: Int, _ path: String) -> (status: Int?, text: String) {
        let response = parseResponse(
            rawExchange(port: admin, Array("GET \(path) HTTP/1.1\r\nHost: a\r\n\r\n".utf8)).bytes
        )
        return (response?.status, String(decoding: response?.body ?? [], as: UTF8.self))
    }

    @Test func aNodeWhoseSeedDoesNotResolveIsNeverReadyAndSaysWhy() async throws {
        let backend = try await EchoBackend.start()
        defer { backend.channel.close(promise: nil) }
        try await withNode(["--join", "nosuchhost.invalid:7401", "--wait-for-size", "2"], backend: backend.port) {
            node,
            stop in
            // Give it a few rejoin rounds.
            #expect(
                await eventually(timeout: .seconds(10)) { admin(node, "/readyz").text.contains("have not answered") }
            )
            let readyz = admin(node, "/readyz")
            #expect(readyz.status == 503)
            #expect(readyz.text.contains("nosuchhost.invalid:7401"))
            #expect(admin(node, "/v1/state").text.contains("\"state\":\"viewer\""), "it owns nothing")
            let log = stop()
            #expect(log.contains("the seeds have not answered"), "\(log)")
        }
    }

    @Test func aNodeWaitsForTheSizeUntilItsWaitTimesOut() async throws {
        let backend = try await EchoBackend.start()
        defer { backend.channel.close(promise: nil) }
        try await withNode(["--wait-for-size", "3", "--wait-timeout", "4s"], backend: backend.port) { node, _ in
            let waiting = await eventually(timeout: .seconds(5)) {
                admin(node, "/readyz").text.contains("1 of the 3 members")
            }
            #expect(waiting, "held out while it sees 1 of 3")
            #expect(
                await eventually(timeout: .seconds(10)) { admin(node, "/readyz").status == 200 },
                "ready once the wait timed out"
            )
            #expect(admin(node, "/v1/state").text.contains("\"state\":\"participant\""))
        }
    }

    @Test func aNodeWithAnUnhealthyBackendIsNotReadyAndDoesNotTakePart() async throws {
        // Nothing listens on the backend port.
        try await withNode([]) { node, _ in
            #expect(await eventually(timeout: .seconds(10)) { admin(node, "/readyz").text.contains("does not answer") })
            #expect(admin(node, "/v1/state").text.contains("\"state\":\"viewer\""))
        }
    }
}

@Suite("Listeners that cannot start")
struct ListenFailureTests {
    @Test(arguments: ["listen", "cluster-listen", "admin-listen"])
    func aListenerThatCannotStartExitsOneNamingItsSetting(setting: String) async throws {
        // Something holds the port already.
        let taken = try await EchoBackend.start()
        defer { taken.channel.close(promise: nil) }
        var addresses = [
            "listen": "127.0.0.1:\(freePort())", "cluster-listen": "127.0.0.1:\(freePort())",
            "admin-listen": "127.0.0.1:\(freePort())",
        ]
        addresses[setting] = "127.0.0.1:\(taken.port)"
        let result = try ProcessTests.runRingside(
            ["run", "--node-name", "n", "--backend", "http://127.0.0.1:\(freePort())"]
                + addresses.sorted { $0.key < $1.key }.flatMap { ["--\($0.key)", $0.value] }
        )
        #expect(result.status == 1)
        #expect(result.errors.contains("cannot listen on 127.0.0.1:\(taken.port) (\(setting))"), "\(result.errors)")
        #expect(result.errors.contains("Address already in use"), "\(result.errors)")
    }
}
