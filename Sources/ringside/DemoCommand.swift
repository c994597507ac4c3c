import ArgumentParser
import Foundation
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import RingsideCluster
import RingsideProxy
import ServiceLifecycle

/// `ringside demo`: three nodes on this machine, each with a built-in backend, and a tour of where keys go.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Starts a three-node cluster on 127.0.0.1 with built-in backends and shows where keys go.",
        discussion: """
            Node n (1 to 3) listens for the application on base+10(n-1), for its cluster on the next port, for its \
            admin plane on the one after, and its backend on the next. It keeps running until Ctrl-C so that you can \
            send requests yourself.
            """
    )

    @Option(help: "The first port; each node uses four from base+10(n-1).") var basePort = 7400
    @Option(help: "How many keys the tour sends.") var keys = 9

    func run() async throws {
        LoggingSystem.bootstrap { LineLogHandler(label: $0, format: .logfmt, level: .warning) }
        // The three nodes share this process, so each admin plane shows the metrics of all three, summed.
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let metricsText: @Sendable () -> String = {
            "# ringside demo: three nodes in one process; these are their sums\n" + registry.emitToString()
        }
        let logger = Logger(label: "ringside.demo")
        let names = ["node-1", "node-2", "node-3"]
        var servers: [RingsideServer] = []
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        var admins: [any Channel] = []
        var backends: [any Channel] = []
        do {
            for (index, name) in names.enumerated() {
                let base = basePort + 10 * index
                backends.append(try await DemoBackend.start(port: base + 3, name: name))
                var cluster = ClusterConfiguration(nodeName: name)
                cluster.listenAddress = "127.0.0.1:\(base + 1)"
                cluster.seeds = index == 0 ? [] : ["127.0.0.1:\(basePort + 1)"]
                cluster.rejoinInterval = .seconds(5)
                let server = RingsideServer(
                    cluster: cluster,
                    proxy: ProxyConfiguration(nodeName: name),
                    appHost: "127.0.0.1",
                    appPort: base,
                    backendHost: "127.0.0.1",
                    backendPort: base + 3,
                    logger: logger
                )
                let events = ClusterEventLog()
                admins.append(
                    try await AdminServer.bind(
                        host: "127.0.0.1",
                        port: base + 2,
                        group: MultiThreadedEventLoopGroup.singleton,
                        node: server.node,
                        sources: AdminSources(metricsText: metricsText, drain: server.drain, events: events)
                    )
                )
                servers.append(server)
                // A node drained through its admin plane leaves; the other two go on.
                services.append(.init(service: server, successTerminationBehavior: .ignore))
                services.append(.init(service: ClusterEventFollower(log: events, node: server.node)))
            }
        } catch {
            FileHandle.standardError.write(
                Data(
                    "ringside: cannot start the demo on ports \(basePort)-\(basePort + 23): \(error)\ntry --base-port\n"
                        .utf8
                )
            )
            throw ExitCode(1)
        }
        let group = ServiceGroup(
            configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            try await tour(servers)
            try await tasks.waitForAll()
        }
        for channel in admins + backends { try? await channel.close() }
    }

    func tour(_ servers: [RingsideServer]) async throws {
        let deadline = ContinuousClock.now + .seconds(10)
        while servers.contains(where: { $0.node.peers.count < servers.count || $0.appPortBound == nil }) {
            guard ContinuousClock.now < deadline else {
                say("The three nodes did not find each other within 10 s; see the log above.")
                return
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        say("Three Ringside nodes are up on 127.0.0.1, each with a backend of its own.\n")
        let header = ["key", "owner", "via node-1", "via node-2", "via node-3"]
        var rows: [[String]] = []
        for index in 1...keys {
            let key = "user-\(index)"
            let owner = (try? servers[0].node.lookup(key).first?.name) ?? "?"
            var row = [key, owner]
            for server in servers {
                let response = try? await AdminClient.get(
                    "/hello",
                    host: "127.0.0.1",
                    port: server.appPortBound ?? 0,
                    headers: [("X-Shard-Key", key)]
                )
                row.append(response?.headers.first(name: "x-ringside-node") ?? "failed")
            }
            rows.append(row)
        }
        say(table([header] + rows), terminator: "")
        say(
            """

            Each key is served by the same node's backend whichever node it enters by ("via"), and that node is the
            owner the ring gives. Try it yourself:

              curl -i -H 'X-Shard-Key: user-42' http://127.0.0.1:\(basePort)/hello
              curl -i -H 'X-Shard-Key: user-42' http://127.0.0.1:\(basePort + 10)/hello
              ringside lookup user-42 --admin 127.0.0.1:\(basePort + 2)
              ringside peers --admin 127.0.0.1:\(basePort + 2)
              curl http://127.0.0.1:\(basePort + 2)/v1/state
              open http://127.0.0.1:\(basePort + 2)/ for the status page

            Press Ctrl-C to stop.
            """
        )
    }
}

/// Writes a line to standard output at once, whether or not it is a terminal.
func say(_ line: String, terminator: String = "\n") {
    FileHandle.standardOutput.write(Data((line + terminator).utf8))
}

/// The demo's backend: answers every request with who served it.
final class DemoBackend: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let name: String

    init(name: String) { self.name = name }

    static func start(port: Int, name: String) async throws -> any Channel {
        try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(DemoBackend(name: name))
                }
            }
            .bind(host: "127.0.0.1", port: port)
            .get()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let request) = unwrapInboundIn(data) else { return }
        let key = request.headers.first(name: "x-shard-key") ?? "(none)"
        let body = ByteBuffer(
            string: "Hello from the backend of \(name): \(request.method) \(request.uri), key \(key)\n"
        )
        var headers = HTTPHeaders([
            ("content-type", "text/plain; charset=utf-8"), ("content-length", String(body.readableBytes)),
        ])
        if !request.isKeepAlive { headers.add(name: "connection", value: "close") }
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: .ok, headers: headers))),
            promise: nil
        )
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }
}
