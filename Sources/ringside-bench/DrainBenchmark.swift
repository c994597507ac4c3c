import ArgumentParser
import Foundation
import NIOCore
import RingsideTestSupport

/// A rolling deploy, measured: every node of a cluster under keyed load is drained and started again in turn.
struct DrainBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drain",
        abstract: "Drains and restarts every node of a cluster under keyed load, in turn; counts what failed.",
        discussion: """
            Starts N `ringside run` processes (the binary next to this one) on 127.0.0.1, each with an echo backend \
            of its own and every other node as a seed, and sends keyed GETs from several threads to the nodes that \
            are up, checking every answer. Each node in turn is taken out of the load (as a load balancer does once \
            a pod is terminating), sent SIGTERM, timed until it exits, started again with the same name, and put \
            back once every node is ready. Prints nodes, requests, failed, slowest_drain_s (SIGTERM to exit) and \
            mean_drain_s; failed is the figure that must be 0.
            """
    )

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false

    @Option(help: "Nodes in the cluster.")
    var nodes = 5

    @Option(help: "Client threads sending requests without pause.")
    var clients = 4

    @Option(help: "Seconds of load before the first drain and after the last restart.")
    var settle = 1

    @Flag(help: "Say on stderr when each node drains and comes back, and when each failure happened.")
    var verbose = false

    func validate() throws {
        guard (2...16).contains(nodes) else { throw ValidationError("--nodes must be from 2 to 16") }
        guard (1...64).contains(clients) else { throw ValidationError("--clients must be from 1 to 64") }
    }

    func run() async throws {
        let cluster = try await BenchCluster(count: nodes)
        defer { cluster.stop() }
        try cluster.waitUntilReady(timeout: 30)
        let load = KeyedLoad(entries: cluster.nodes.map(\.app), keys: 1000)
        let loadStart = ContinuousClock.now
        let threads = (0..<clients).map { _ in Thread { load.run() } }
        for thread in threads { thread.start() }
        try await Task.sleep(for: .seconds(settle))
        var drains: [Double] = []
        for index in cluster.nodes.indices {
            let node = cluster.nodes[index]
            load.remove(node.app)
            if verbose {
                FileHandle.standardError.write(
                    Data("\(ContinuousClock.now - loadStart): draining \(node.name) (port \(node.app))\n".utf8)
                )
            }
            let start = Date()
            kill(node.process.processIdentifier, SIGTERM)
            node.process.waitUntilExit()
            drains.append(Date().timeIntervalSince(start))
            guard node.process.terminationStatus == 0 else {
                throw ValidationError("\(node.name) exited \(node.process.terminationStatus) after its drain")
            }
            try cluster.restart(index)
            try cluster.waitUntilReady(timeout: 30)
            load.add(node.app)
            if verbose {
                FileHandle.standardError.write(Data("\(ContinuousClock.now - loadStart): \(node.name) back\n".utf8))
            }
        }
        try await Task.sleep(for: .seconds(settle))
        let outcome = load.stop()
        var row = ResultRow()
        row["nodes"] = .integer(nodes)
        row["requests"] = .integer(outcome.answered + outcome.failures.count)
        row["failed"] = .integer(outcome.failures.count)
        row["slowest_drain_s"] = .number(drains.max() ?? 0, decimals: 3)
        row["mean_drain_s"] = .number(drains.reduce(0, +) / Double(max(1, drains.count)), decimals: 3)
        if json { print(row.json) } else { printTable([row]) }
        for failure in outcome.failures.prefix(5) {
            FileHandle.standardError.write(Data("failed: \(failure)\n".utf8))
        }
    }
}

/// `ringside run` processes on 127.0.0.1, each with an echo backend in this process and every other node as a seed.
final class BenchCluster {
    struct Node {
        var name: String
        var app: Int
        var admin: Int
        var arguments: [String]
        var process = Process()
    }

    private(set) var nodes: [Node] = []
    private var backends: [any Channel] = []
    private let binary = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
        .appendingPathComponent("ringside")

    init(count: Int) async throws {
        let ports = (0..<count).map { _ in (app: freePort(), cluster: freePort(), admin: freePort()) }
        for index in 0..<count {
            let backend = try await EchoBackend.start()
            backends.append(backend.channel)
            let seeds = ports.indices.filter { $0 != index }.map { "127.0.0.1:\(ports[$0].cluster)" }
            var node = Node(
                name: "node-\(index)",
                app: ports[index].app,
                admin: ports[index].admin,
                arguments: [
                    "run", "--node-name", "node-\(index)", "--listen", "127.0.0.1:\(ports[index].app)",
                    "--cluster-listen", "127.0.0.1:\(ports[index].cluster)",
                    "--admin-listen", "127.0.0.1:\(ports[index].admin)",
                    "--backend", "http://127.0.0.1:\(backend.port)", "--join", seeds.joined(separator: ","),
                    "--rejoin-interval", "1s", "--event-loops", "1", "--log-level", "error",
                ]
            )
            try launch(&node)
            nodes.append(node)
        }
    }

    private func launch(_ node: inout Node) throws {
        node.process = Process()
        node.process.executableURL = binary
        node.process.arguments = node.arguments
        node.process.standardOutput = FileHandle.nullDevice
        try node.process.run()
    }

    func restart(_ index: Int) throws { try launch(&nodes[index]) }

    /// Waits until every node is ready and sees all the others as participants.
    func waitUntilReady(timeout: TimeInterval) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let ready = nodes.allSatisfy { node in
                let state = Self.get(port: node.admin, path: "/v1/state") ?? ""
                let readyz = Self.get(port: node.admin, path: "/readyz") ?? ""
                return state.contains("\"participant\":\(nodes.count)") && readyz.hasPrefix("HTTP/1.1 200")
            }
            if ready { return }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw ValidationError("the \(nodes.count) nodes were not all ready within \(Int(timeout)) s")
    }

    func stop() {
        for node in nodes where node.process.isRunning {
            node.process.terminate()
            node.process.waitUntilExit()
        }
        for backend in backends { backend.close(promise: nil) }
    }

    static func get(port: Int, path: String) -> String? {
        let raw = rawExchange(
            port: port,
            Array("GET \(path) HTTP/1.1\r\nHost: bench\r\n\r\n".utf8),
            timeout: .seconds(1)
        )
        return raw.bytes.isEmpty ? nil : String(decoding: raw.bytes, as: UTF8.self)
    }
}
