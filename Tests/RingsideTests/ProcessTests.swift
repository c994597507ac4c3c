import Foundation
import NIOCore
import RingsideTestSupport
import Testing

/// Real `ringside run` processes on 127.0.0.1, each with an echo backend of its own in this process.
final class RingsideProcesses {
    struct Node {
        var name: String
        var app: Int
        var cluster: Int
        var admin: Int
        var process: Process
        /// The flags it was started with, for a restart.
        var arguments: [String] = []
    }

    private(set) var nodes: [Node] = []
    private var backends: [any Channel] = []
    /// Where each node's log goes (`NAME.log`); set it before ``start(_:joinAll:extraArguments:)`` to keep the logs
    /// beside other files of the test.
    var logDirectory = FileManager.default.temporaryDirectory
        .appendingPathComponent("ringside-logs-\(UUID().uuidString)")

    /// The repository's root (this file is Tests/RingsideTests/ProcessTests.swift).
    static var repository: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
    }

    /// The `ringside` binary built next to this test bundle.
    static var binary: URL {
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
            .appendingPathComponent("ringside")
    }

    /// Starts `count` nodes, `node-0` the seed of the others (every node the seed of every other with `joinAll`),
    /// and waits until each is ready and sees all. `extraArguments` adds flags for the node with that index.
    func start(_ count: Int, joinAll: Bool = false, extraArguments: (Int) -> [String] = { _ in [] }) async throws {
        let ports = (0..<count).map { _ in (app: freePort(), cluster: freePort(), admin: freePort()) }
        for index in 0..<count {
            let backend = try await EchoBackend.start()
            backends.append(backend.channel)
            var node = Node(
                name: "node-\(index)",
                app: ports[index].app,
                cluster: ports[index].cluster,
                admin: ports[index].admin,
                process: Process()
            )
            let seeds =
                joinAll
                ? ports.indices.filter { $0 != index }.map { "127.0.0.1:\(ports[$0].cluster)" }
                : (index == 0 ? [] : ["127.0.0.1:\(ports[0].cluster)"])
            node.arguments =
                [
                    "run", "--node-name", node.name, "--listen", "127.0.0.1:\(node.app)",
                    "--cluster-listen", "127.0.0.1:\(node.cluster)", "--admin-listen", "127.0.0.1:\(node.admin)",
                    "--backend", "http://127.0.0.1:\(backend.port)", "--log-level", "warning",
                ] + (seeds.isEmpty ? [] : ["--join", seeds.joined(separator: ",")]) + extraArguments(index)
            try launch(&node)
            nodes.append(node)
        }
        try await waitUntilReady(count)
    }

    private func launch(_ node: inout Node) throws {
        try FileManager.default.createDirectory(at: logDirectory, withIntermediateDirectories: true)
        let path = logDirectory.appendingPathComponent("\(node.name).log").path
        if !FileManager.default.fileExists(atPath: path) {
            _ = FileManager.default.createFile(atPath: path, contents: nil)
        }
        let file = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        file.seekToEndOfFile()
        node.process = Self.process(node.arguments, errors: file)
        try node.process.run()
    }

    /// A `ringside` process with `arguments`, its standard error going to `errors`. Nothing of it is the test's own
    /// output: a child that outlives a crashed test must not keep the runner's pipe open (the runner would wait for
    /// it forever).
    static func process(
        _ arguments: [String],
        errors: Any = FileHandle.nullDevice,
        output: Any = FileHandle.nullDevice
    ) -> Process {
        let process = Process()
        process.executableURL = binary
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = output
        process.standardError = errors
        return process
    }

    /// What `node` has logged so far.
    func log(_ node: Node) -> String {
        let path = logDirectory.appendingPathComponent("\(node.name).log").path
        return (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    }

    /// Waits until every running node is ready and sees `count` participants.
    func waitUntilReady(_ count: Int, timeout: Duration = .seconds(30)) async throws {
        let ready = await eventually(timeout: timeout) {
            nodes.allSatisfy { node in
                admin(node, "/v1/state")?.contains("\"participant\":\(count)") == true && isReady(node)
            }
        }
        guard ready else { throw TestFailure("the \(count) ringside processes did not become ready") }
    }

    /// Whether `node`'s `/readyz` says 200.
    func isReady(_ node: Node) -> Bool {
        parseResponse(rawExchange(port: node.admin, Array("GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n".utf8)).bytes)?
            .status == 200
    }

    /// Starts node `index` again with the flags it had (the same name, a new incarnation).
    func restart(_ index: Int) throws {
        try launch(&nodes[index])
    }

    /// Sends `signal` to `node`'s process.
    func signal(_ node: Node, _ signal: Int32) {
        Foundation.kill(node.process.processIdentifier, signal)
    }

    /// The body of a GET to `node`'s admin plane.
    func admin(_ node: Node, _ path: String) -> String? {
        let raw = rawExchange(
            port: node.admin,
            Array("GET \(path) HTTP/1.1\r\nHost: admin\r\n\r\n".utf8),
            timeout: .seconds(2)
        )
        return parseResponse(raw.bytes).map { String(decoding: $0.body, as: UTF8.self) }
    }

    /// The owner of `key` according to `node`'s admin plane.
    func owner(of key: String, askingNode node: Node) -> String? {
        guard let body = admin(node, "/v1/lookup?key=\(key)"), let start = body.range(of: "\"name\":\"") else {
            return nil
        }
        return String(body[start.upperBound...].prefix { $0 != "\"" })
    }

    /// A keyed GET through `node`'s app plane.
    func get(_ path: String, key: String, through node: Node) -> TestResponse? {
        parseResponse(
            rawExchange(port: node.app, Array("GET \(path) HTTP/1.1\r\nHost: app\r\nX-Shard-Key: \(key)\r\n\r\n".utf8))
                .bytes
        )
    }

    /// The most memory the process of `node` has had resident (VmHWM), in MiB.
    func peakResidentMegabytes(_ node: Node) -> Double? {
        processMemoryMegabytes(node.process.processIdentifier, "VmHWM")
    }

    func kill(_ node: Node) {
        Foundation.kill(node.process.processIdentifier, SIGKILL)
        node.process.waitUntilExit()
    }

    func stop() async {
        for node in nodes where node.process.isRunning { node.process.terminate() }
        for node in nodes { node.process.waitUntilExit() }
        for backend in backends { try? await backend.close() }
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

func withProcesses(
    _ count: Int,
    joinAll: Bool = false,
    extraArguments: [Int: [String]] = [:],
    logDirectory: URL? = nil,
    _ body: (RingsideProcesses) async throws -> Void
) async throws {
    let cluster = RingsideProcesses()
    if let logDirectory { cluster.logDirectory = logDirectory }
    do {
        try await cluster.start(count, joinAll: joinAll) { extraArguments[$0] ?? [] }
        try await body(cluster)
    } catch {
        await cluster.stop()
        throw error
    }
    await cluster.stop()
}

@Suite("ringside processes", .serialized)
struct ProcessTests {
    @Test func everyKeyIsServedByItsOwnerWhicheverNodeItEntersBy() async throws {
        try await withProcesses(3, extraArguments: [1: ["--replicas", "2"]]) { cluster in
            var owners: Set<String> = []
            for index in 0..<30 {
                let key = "account-\(index)"
                let owner = try #require(cluster.owner(of: key, askingNode: cluster.nodes[0]))
                owners.insert(owner)
                for node in cluster.nodes {
                    let response = try #require(cluster.get("/accounts/\(index)", key: key, through: node))
                    #expect(response.status == 200)
                    #expect(response.header("x-ringside-node") == owner)
                    // A key owned where it enters never crosses the cluster port: one proxy on the way, not two.
                    #expect(response.headers("x-echo-h-via").count == (node.name == owner ? 1 : 2))
                }
            }
            #expect(owners.count == 3)
            // /v1/lookup reports `replicas` owners unless the query says otherwise, the owner first.
            func lookup(_ query: String) -> TestResponse? {
                let request = "GET /v1/lookup?\(query) HTTP/1.1\r\nHost: admin\r\n\r\n"
                return parseResponse(rawExchange(port: cluster.nodes[1].admin, Array(request.utf8)).bytes)
            }
            func names(_ response: TestResponse?) -> [String] {
                let body = String(decoding: response?.body ?? [], as: UTF8.self)
                return body.components(separatedBy: "\"name\":\"").dropFirst().compactMap {
                    $0.split(separator: "\"").first
                }
                .map(String.init)
            }
            let two = names(lookup("key=account-0"))
            #expect(two.count == 2)
            #expect(two.first == cluster.owner(of: "account-0", askingNode: cluster.nodes[0]))
            #expect(names(lookup("key=account-0&replicas=3")).count == 3)
            #expect(lookup("key=account-0&replicas=many")?.status == 400)
            #expect(lookup("key=account-0&replicas=0")?.status == 400)
            #expect(lookup("key=account-0&replicas=4")?.status == 503)
            let metrics = try #require(cluster.admin(cluster.nodes[0], "/metrics"))
            #expect(metrics.contains(#"ringside_requests_total{path="local",code="2xx"}"#))
            #expect(metrics.contains(#"ringside_requests_total{path="forwarded_out",code="2xx"}"#))
            #expect(metrics.contains(#"ringside_requests_total{path="forwarded_in",code="2xx"}"#))
            #expect(metrics.contains("ringside_gossip_probes_total"))
        }
    }

    @Test func viewsThatDisagreeNeitherLoseNorDoubleForwardARequest() async throws {
        // node-2 places keys with another sharder: for many keys it and the others disagree about the owner, as nodes
        // do for a moment while a change spreads.
        try await withProcesses(3, extraArguments: [2: ["--sharder", "rendezvous"]]) { cluster in
            for index in 0..<40 {
                for node in cluster.nodes {
                    let response = try #require(cluster.get("/items/\(index)", key: "item-\(index)", through: node))
                    #expect(response.status == 200)
                    #expect(response.headers("x-echo-h-via").count <= 2, "at most one hop")
                }
            }
            let misroutes = cluster.nodes.compactMap { cluster.admin($0, "/metrics") }.compactMap { text in
                text.split(separator: "\n").first { $0.hasPrefix("ringside_request_misroutes_total ") }
                    .flatMap { Double($0.split(separator: " ").last ?? "") }
            }
            #expect(misroutes.reduce(0, +) > 0, "the disagreement was exercised")
        }
    }

    @Test func twoHundredMegabytesCrossAForwardHopBothWaysInBoundedMemory() async throws {
        try await withProcesses(2) { cluster in
            let entry = cluster.nodes[0]
            let key = try #require(
                (0..<200).map { "blob-\($0)" }.first { cluster.owner(of: $0, askingNode: entry) == "node-1" }
            )
            let size = 200 << 20
            let upload = try #require(
                streamingExchange(
                    port: entry.app,
                    head:
                        "PUT /discard HTTP/1.1\r\nHost: app\r\nX-Shard-Key: \(key)\r\nContent-Length: \(size)\r\n\r\n",
                    uploadBytes: size
                )
            )
            #expect(upload.status == 200)
            #expect(upload.bodyPrefix == String(size), "the owner's backend received every byte")
            let download = try #require(
                streamingExchange(
                    port: entry.app,
                    head: "GET /generate/\(size) HTTP/1.1\r\nHost: app\r\nX-Shard-Key: \(key)\r\n\r\n"
                )
            )
            #expect(download.status == 200)
            #expect(download.bodyBytes == size)
            for node in cluster.nodes {
                let peak = try #require(cluster.peakResidentMegabytes(node))
                // Streamed, not buffered: far below the 200 MiB that went through each direction.
                #expect(peak < 128, "\(node.name) peaked at \(peak) MiB")
            }
        }
    }

    @Test func requestsForAKilledOwnersKeysSucceedOnTheNextOwner() async throws {
        try await withProcesses(3) { cluster in
            let victim = cluster.nodes[2]
            let key = try #require(
                (0..<200).map { "order-\($0)" }.first {
                    cluster.owner(of: $0, askingNode: cluster.nodes[0]) == victim.name
                }
            )
            cluster.kill(victim)
            for attempt in 0..<20 {
                let response = try #require(cluster.get("/orders/\(attempt)", key: key, through: cluster.nodes[0]))
                #expect(response.status == 200)
                #expect(response.header("x-ringside-node") != victim.name)
            }
        }
    }

    /// A process out of file descriptors sets accepting aside instead of retrying at once (which would spin), and
    /// serves again once descriptors are freed; what it holds meanwhile is not lost.
    @Test func aProcessOutOfDescriptorsWaitsAndRecovers() async throws {
        try await withProcesses(1) { cluster in
            let node = cluster.nodes[0]
            let pid = node.process.processIdentifier
            // A connection that already has its upstream connection pooled, before the limit.
            guard let kept = connectLoopback(port: node.app) else { throw TestFailure("no connection") }
            defer { close(kept) }
            let request = Array("GET / HTTP/1.1\r\nHost: app\r\nX-Shard-Key: k\r\n\r\n".utf8)
            #expect(parseResponse(exchange(on: kept, request)).map(\.status) == 200)

            let open = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count
            let limit = try Self.descriptorLimit(of: pid)
            try Self.limitDescriptors(of: pid, to: open + 4)
            // Far more connections than it may accept: the kernel queues them; the process takes four and runs out.
            let flood = (0..<40).compactMap { _ in connectLoopback(port: node.app) }
            #expect(flood.count == 40)
            let exhausted = await eventually {
                (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? 0 >= open + 4
            }
            #expect(exhausted)
            // Out of descriptors, it does not spin: well under half a CPU over a second of standing exhaustion (an
            // observation window, not a wait for a condition; retrying at once used two CPUs' worth).
            let before = processCPUTicks(pid)
            let start = ContinuousClock.now
            try await Task.sleep(for: .seconds(1))
            let after = processCPUTicks(pid)
            let ticks = after.user + after.system - before.user - before.system
            let used = Double(ticks) / Double(sysconf(Int32(_SC_CLK_TCK)))
            let window = (ContinuousClock.now - start).components
            #expect(used < 0.5 * (Double(window.seconds) + Double(window.attoseconds) / 1e18))
            // The connection it held is still served, over the upstream connection it pooled.
            #expect(parseResponse(exchange(on: kept, request)).map(\.status) == 200)

            for fd in flood { close(fd) }
            try Self.limitDescriptors(of: pid, to: limit)
            let served = await eventually { cluster.get("/", key: "k2", through: node)?.status == 200 }
            #expect(served)
            #expect(cluster.admin(node, "/livez") == "ok\n")
        }
    }

    /// Sends `request` on the blocking socket `fd` and reads until a whole response arrived (five seconds at most).
    private func exchange(on fd: Int32, _ request: [UInt8]) -> [UInt8] {
        sendAll(fd, request)
        var received: [UInt8] = []
        receive(fd, into: &received) { parseResponse($0) != nil }
        return received
    }

    /// Sets the soft open-file limit of another process with util-linux's prlimit (the hard one stays: raising it back needs a privilege).
    static func limitDescriptors(of pid: Int32, to limit: Int) throws {
        let tool = Process()
        tool.executableURL = URL(fileURLWithPath: "/usr/bin/prlimit")
        tool.arguments = ["--pid", "\(pid)", "--nofile=\(limit):"]
        try tool.run()
        tool.waitUntilExit()
        guard tool.terminationStatus == 0 else { throw TestFailure("prlimit exited \(tool.terminationStatus)") }
    }

    /// The soft open-file limit of another process (`/proc/PID/limits`).
    static func descriptorLimit(of pid: Int32) throws -> Int {
        let limits = try String(contentsOfFile: "/proc/\(pid)/limits", encoding: .utf8)
        guard let line = limits.split(separator: "\n").first(where: { $0.hasPrefix("Max open files") }),
            let soft = line.split(separator: " ", omittingEmptySubsequences: true).dropFirst(3).first.flatMap({
                Int($0)
            })
        else { throw TestFailure("no open-file limit in /proc/\(pid)/limits") }
        return soft
    }

    @Test func theAdminCommandsAskARunningNodeAndSayWhyWhenNoneAnswers() async throws {
        try await withProcesses(1) { cluster in
            let admin = "127.0.0.1:\(cluster.nodes[0].admin)"
            let lookup = try Self.runRingside(["lookup", "customer-42", "--admin", admin, "--json"])
            #expect(lookup.status == 0)
            #expect(lookup.output.contains("\"key\":\"customer-42\""))
            #expect(lookup.output.contains("\"name\":\"node-0\""))
            let state = try Self.runRingside(["state", "--admin", admin, "--json"])
            #expect(state.status == 0)
            #expect(state.output.contains("\"participant\":1"))
            // A table by default: a header, then one row a member (this node starred).
            let peers = try Self.runRingside(["peers", "--admin", admin])
            let lines = peers.output.split(separator: "\n").map(String.init)
            #expect(lines.first?.hasPrefix("NAME") == true && lines.first?.contains("ADDRESS") == true)
            #expect(lines.dropFirst().first?.hasPrefix("node-0 *") == true, "\(peers.output)")
            #expect(lines.dropFirst().first?.contains("participant") == true)
            let owners = try Self.runRingside(["lookup", "customer-42", "--admin", admin])
            #expect(owners.output.hasPrefix("RANK"))
            #expect(owners.output.contains("1     node-0 *"), "\(owners.output)")
            let summary = try Self.runRingside(["state", "--admin", admin])
            #expect(summary.output.contains("cluster_auth  none"), "\(summary.output)")
            let nobody = try Self.runRingside(["peers", "--admin", "127.0.0.1:\(freePort())"])
            #expect(nobody.status == 1)
            #expect(nobody.errors.contains("cannot reach the admin plane at 127.0.0.1:"))
            #expect(nobody.errors.contains("Connection refused"))
        }
    }

    /// One convention for every subcommand: 2 for a command line that is wrong, whatever is wrong with it.
    @Test func everySubcommandExitsTwoForABadCommandLine() throws {
        let cases: [[String]] = [
            ["lookup"], ["lookup", "k", "--replicas", "many"], ["lookup", "k", "--replicas", "0"],
            ["state", "--admin", "nonsense"],
            ["peers", "--frobnicate"], ["drain", "--timeout", "soon"], ["drain", "--timeout", "48h"],
            ["peers", "--token-file", "/nonexistent"],
            ["run", "--replica", "2"], ["nonsense"],
        ]
        for arguments in cases {
            let result = try Self.runRingside(arguments)
            #expect(result.status == 2, "\(arguments): \(result.errors)")
            #expect(result.errors.contains("ringside") || result.errors.contains("Error"), "\(arguments)")
        }
    }

    @Test func anInvalidCommandLineExitsWithStatus2AndNamesTheFlag() throws {
        let cases: [([String], String)] = [
            (["--event-loops", "-1"], "event-loops (from --event-loops): \"-1\" is not a whole number"),
            (["--request-timeout", "-5s"], "request-timeout (from --request-timeout): \"-5s\""),
            (["--listen", "nonsense"], "listen (from --listen): \"nonsense\""),
            (["--replica", "2"], "Unknown option '--replica'"),
            (["--backend"], "Missing value for '--backend"),
        ]
        for (arguments, expected) in cases {
            let result = try Self.runRingside(["run"] + arguments)
            #expect(result.status == 2, "\(arguments)")
            #expect(result.errors.hasPrefix("ringside: invalid configuration: "), "\(arguments): \(result.errors)")
            #expect(result.errors.contains(expected), "\(arguments): \(result.errors)")
        }
    }

    /// Runs `ringside` with `arguments` to its end.
    static func runRingside(_ arguments: [String]) throws -> (status: Int32, output: String, errors: String) {
        let output = Pipe()
        let errors = Pipe()
        let process = RingsideProcesses.process(arguments, errors: errors)
        process.standardOutput = output
        try process.run()
        let outputData = output.fileHandleForReading.readDataToEndOfFile()
        let errorData = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (
            process.terminationStatus, String(decoding: outputData, as: UTF8.self),
            String(decoding: errorData, as: UTF8.self)
        )
    }

    @Test func badRequestsAreAnsweredAndTheProcessStaysHealthy() async throws {
        try await withProcesses(1) { cluster in
            let node = cluster.nodes[0]
            let malformed = rawExchange(port: node.app, Array("NOT HTTP AT ALL\r\n\r\n".utf8))
            #expect(parseResponse(malformed.bytes)?.status == 400)
            let huge = rawExchange(
                port: node.app,
                Array("GET / HTTP/1.1\r\nHost: a\r\nX-Huge: \(String(repeating: "x", count: 100_000))\r\n\r\n".utf8)
            )
            #expect(parseResponse(huge.bytes)?.status == 431)
            #expect(cluster.admin(node, "/livez") == "ok\n")
            #expect(cluster.get("/", key: "k", through: node)?.status == 200)
            let unknown = rawExchange(port: node.admin, Array("GET /nope HTTP/1.1\r\nHost: a\r\n\r\n".utf8))
            #expect(parseResponse(unknown.bytes)?.status == 404)
        }
    }
}
