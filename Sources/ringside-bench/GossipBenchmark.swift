import ArgumentParser
import RingsideMembership
import RingsideSimulation

/// `ringside-bench gossip`: the membership protocol in the deterministic simulator, default (LAN) timings.
struct GossipBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gossip",
        abstract: "Measures membership convergence, failure detection and traffic in the simulator.",
        discussion: """
            Per cluster size and loss rate, one seeded run: bootstrap_s (N-1 nodes join through one seed until all
            see all), join_convergence_s (one more node joins until all see it), state_convergence_s (a node becomes
            terminating until all see it), detection_s (a process crashes, so connections to it are refused, until
            every live node has it dead), detection_silent_s (a host goes silent, the same), false_positives (deaths
            declared about live nodes, over the whole run), bytes_per_node_per_s (bytes sent per node per second in a
            steady window: no changes, every node's update queue empty, which settle_s after the join it was). Times
            are virtual, checked every 10 ms.
            """
    )

    @Flag(help: "Print one JSON object per line instead of a table.")
    var json = false

    @Option(parsing: .upToNextOption, help: "Cluster sizes to simulate.")
    var nodes: [Int] = [10, 100, 1000]

    @Option(parsing: .upToNextOption, help: "Message loss rates to simulate, from 0 to 1.")
    var loss: [Double] = [0, 0.05]

    @Option(help: "The length of the steady window that measures traffic, in seconds.")
    var steadySeconds = 60

    @Option(help: "The simulator's seed.")
    var seed: UInt64 = 42

    mutating func validate() throws {
        guard nodes.allSatisfy({ $0 >= 10 }) else { throw ValidationError("--nodes must all be at least 10") }
        guard loss.allSatisfy({ (0..<1).contains($0) }) else { throw ValidationError("--loss must be in [0, 1)") }
    }

    func run() throws {
        var rows: [ResultRow] = []
        for count in nodes {
            for rate in loss {
                let row = measure(nodes: count, loss: rate)
                if json { print(row.json) } else { rows.append(row) }
            }
        }
        if !json { printTable(rows) }
    }

    func measure(nodes count: Int, loss rate: Double) -> ResultRow {
        let started = ContinuousClock.now
        let simulator = ClusterSimulator(seed: seed)
        simulator.recordsEvents = false
        simulator.loss = rate
        let deaths = DeathLedger()
        simulator.onEvent = { _, _, event in
            if case .died(let member) = event { deaths.record(member.name) }
        }
        let names = (0..<count).map { "node-\($0)" }
        let timeout = Duration.seconds(300)
        let tick = Duration.milliseconds(10)

        func everyone(_ observers: [String], sees name: String, _ check: (Member) -> Bool) -> Bool {
            observers.allSatisfy { simulator.node($0).member(named: name).map(check) ?? false }
        }

        let early = Array(names.dropLast())
        for name in early { simulator.addNode(name) }
        for name in early.dropFirst() { simulator.join(name, seeds: ["node-0"]) }
        let bootstrap = simulator.run(
            until: { early.allSatisfy { simulator.node($0).activeMemberCount == early.count } },
            timeout: timeout,
            checkingEvery: tick
        )

        let last = names[count - 1]
        simulator.addNode(last)
        simulator.join(last, seeds: ["node-0"])
        let join = simulator.run(
            until: { names.allSatisfy { simulator.node($0).activeMemberCount == count } },
            timeout: timeout,
            checkingEvery: tick
        )

        // Steady state: every node has passed on everything the joins produced.
        let settle = simulator.run(
            until: { names.allSatisfy { simulator.node($0).pendingUpdateCount == 0 } },
            timeout: timeout,
            checkingEvery: .milliseconds(100)
        )
        let bytesBefore = simulator.totalBytesSent
        simulator.run(for: .seconds(steadySeconds))
        let bytesPerNodePerSecond =
            Double(simulator.totalBytesSent - bytesBefore) / Double(count) / Double(steadySeconds)

        try? simulator.changeState("node-5", to: .terminating)
        let state = simulator.run(
            until: { everyone(names, sees: "node-5") { $0.state == .terminating } },
            timeout: timeout,
            checkingEvery: tick
        )

        deaths.crashed.insert("node-7")
        simulator.crash("node-7")
        let survivors = names.filter { $0 != "node-7" }
        let detection = simulator.run(
            until: { everyone(survivors, sees: "node-7") { !$0.status.isActive } },
            timeout: timeout,
            checkingEvery: tick
        )

        deaths.crashed.insert("node-8")
        simulator.crash("node-8", hostDown: true)
        let remaining = survivors.filter { $0 != "node-8" }
        let silentDetection = simulator.run(
            until: { everyone(remaining, sees: "node-8") { !$0.status.isActive } },
            timeout: timeout,
            checkingEvery: tick
        )

        var row = ResultRow()
        row["nodes"] = .integer(count)
        row["loss"] = .number(rate, decimals: 2)
        row["bootstrap_s"] = Self.seconds(bootstrap)
        row["join_convergence_s"] = Self.seconds(join)
        row["state_convergence_s"] = Self.seconds(state)
        row["detection_s"] = Self.seconds(detection)
        row["detection_silent_s"] = Self.seconds(silentDetection)
        row["false_positives"] = .integer(deaths.falsePositives)
        row["bytes_per_node_per_s"] = .number(bytesPerNodePerSecond, decimals: 1)
        row["settle_s"] = Self.seconds(settle)
        row["simulated_s"] = .number(nanoseconds(simulator.now - .zero) / 1e9, decimals: 1)
        row["wall_s"] = .number(nanoseconds(ContinuousClock.now - started) / 1e9, decimals: 1)
        return row
    }

    /// A measured time in seconds, or null when the condition never held within the timeout.
    static func seconds(_ duration: Duration?) -> ResultRow.Value {
        guard let duration else { return .number(.nan, decimals: 2) }
        return .number(nanoseconds(duration) / 1e9, decimals: 2)
    }
}

/// Counts deaths declared about nodes that were never crashed.
final class DeathLedger {
    var crashed: Set<String> = []
    private(set) var falsePositives = 0

    func record(_ name: String) {
        if !crashed.contains(name) { falsePositives += 1 }
    }
}
