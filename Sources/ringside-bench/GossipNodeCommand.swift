import ArgumentParser
import Logging
import NIOPosix
import RingsideCluster
import RingsideMembership

#if canImport(Glibc)
import Glibc
#endif

/// `ringside-bench gossip-node`: one cluster node for `gossip-live`, reporting on stdout and taking commands on stdin.
///
/// Output, one JSON object per line, each with `t` (CLOCK_REALTIME nanoseconds): `{"e":"listening","a":ADDRESS}`,
/// `{"e":KIND,"m":MEMBER,"s":STATE,"n":PEERS}` per membership event, `{"e":"bytes","out":N}` every second.
/// Input: `state terminating`, `leave`.
struct GossipNodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gossip-node",
        abstract: "Runs one cluster node for gossip-live (internal).",
        shouldDisplay: false
    )

    @Option(help: "The node's name.")
    var name: String

    @Option(help: "The address of a node to join through.")
    var seed: String?

    @Option(help: "Where to listen.")
    var listen = "127.0.0.1:0"

    func run() async throws {
        var configuration = ClusterConfiguration(nodeName: name)
        configuration.listenAddress = listen
        configuration.seeds = seed.map { [$0] } ?? []
        var logger = Logger(label: "gossip-node")
        logger.logLevel =
            getenv("RINGSIDE_BENCH_LOG").flatMap { Logger.Level(rawValue: String(cString: $0)) } ?? .warning
        let node = ClusterNode(configuration: configuration, logger: logger)
        let commands = Self.standardInputLines()

        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await node.run() }
            let address = try await node.waitUntilRunning()
            Self.emit(["e": .text("listening"), "a": .text(address)])
            group.addTask {
                for await update in node.updates() {
                    guard let event = update.event else {
                        // The view at subscription: whatever happened before it, the count is right.
                        Self.emit(["e": .text("view"), "n": .number(update.sharder.peers.count)])
                        continue
                    }
                    let (kind, member) = Self.describe(event)
                    Self.emit([
                        "e": .text(kind), "m": .text(member.name), "s": .text(member.state.description),
                        "n": .number(update.sharder.peers.count),
                    ])
                }
            }
            group.addTask {
                while !Task.isCancelled {
                    Self.emit(["e": .text("bytes"), "out": .number(node.statistics.bytesOut)])
                    try await Task.sleep(for: .seconds(1))
                }
            }
            for await command in commands {
                switch command {
                case "state terminating":
                    try await node.changeState(to: .terminating)
                case "leave":
                    await node.stop()
                    Self.emit(["e": .text("stopped")])
                    group.cancelAll()
                    return
                default:
                    break
                }
            }
            group.cancelAll()
        }
    }

    static func describe(_ event: MembershipEvent) -> (String, Member) {
        switch event {
        case .joined(let member): ("joined", member)
        case .left(let member): ("left", member)
        case .died(let member): ("died", member)
        case .suspected(let member): ("suspected", member)
        case .alive(let member): ("alive", member)
        case .stateChanged(let member, _): ("state", member)
        case .metadataChanged(let member): ("metadata", member)
        }
    }

    enum Field {
        case text(String)
        case number(Int)
    }

    /// Writes one JSON line, stamped with the wall clock, in a single write(2): the parent reads lines as they come,
    /// and several tasks here report at once. Keys and values are plain (names, numbers), so no escaping is needed.
    static func emit(_ fields: [String: Field]) {
        var line = "{\"t\":\(realtimeNanoseconds())"
        for (key, value) in fields.sorted(by: { $0.key < $1.key }) {
            switch value {
            case .text(let text): line += ",\"\(key)\":\"\(text)\""
            case .number(let number): line += ",\"\(key)\":\(number)"
            }
        }
        line += "}\n"
        var bytes = Array(line.utf8)
        _ = bytes.withUnsafeMutableBytes { write(1, $0.baseAddress, $0.count) }
    }

    /// Lines of standard input, read on a thread of NIO's pool (blocking reads stay off the event loops and off the
    /// cooperative pool).
    static func standardInputLines() -> AsyncStream<String> {
        let (stream, continuation) = AsyncStream<String>.makeStream()
        NIOThreadPool.singleton.submit { _ in
            while let line = readLine() { continuation.yield(line) }
            continuation.finish()
        }
        return stream
    }
}

/// Nanoseconds since the epoch, comparable between processes on one machine.
func realtimeNanoseconds() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
}
