import ArgumentParser
import Foundation
import Synchronization

/// `ringside-bench gossip-live`: a cluster of real processes on loopback, one node each.
struct GossipLiveBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gossip-live",
        abstract: "Starts a cluster of real node processes on 127.0.0.1 and measures it.",
        discussion: """
            Steps: N-1 nodes join through node-0 (bootstrap_s); one more joins (join_convergence_s: until every node
            sees N); a quiet window (bytes_per_node_per_s, rss_mb: the mean resident set of the processes); node-5
            becomes terminating (state_convergence_s: until every other node has the change); node-7 is killed with
            SIGKILL (detection_s: until every other node has it dead); node-9 leaves (leave_s: until every other node
            has it gone). Each node stamps its own reports with the wall clock.
            """
    )

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false

    @Option(help: "How many node processes to start (at least 10).")
    var nodes = 32

    @Option(help: "The length of the quiet window that measures traffic, in seconds.")
    var steadySeconds = 10

    mutating func validate() throws {
        guard nodes >= 10 else { throw ValidationError("--nodes must be at least 10") }
    }

    func run() throws {
        let cluster = LiveCluster()
        defer { cluster.killAll() }
        let names = (0..<nodes).map { "node-\($0)" }
        let timeout = 120.0

        let seed = try cluster.spawn(names[0], seed: nil)
        let early = Array(names.dropLast())
        let bootstrapStart = realtimeNanoseconds()
        for name in early.dropFirst() { _ = try cluster.spawn(name, seed: seed) }
        let bootstrap = try cluster.waitFor(timeout, "bootstrap") {
            $0.latestTime(whenEach: early) { $0.peers == early.count }
        }

        let joinStart = realtimeNanoseconds()
        _ = try cluster.spawn(names[nodes - 1], seed: seed)
        let join = try cluster.waitFor(timeout, "join") { $0.latestTime(whenEach: names) { $0.peers == names.count } }

        Thread.sleep(forTimeInterval: 3)
        let bytesBefore = cluster.bytesSent(names)
        Thread.sleep(forTimeInterval: Double(steadySeconds))
        let bytesAfter = cluster.bytesSent(names)
        let seconds = Double(bytesAfter.time - bytesBefore.time) / 1e9
        let bytesPerNodePerSecond = Double(bytesAfter.total - bytesBefore.total) / Double(nodes) / seconds
        let rss = cluster.residentMegabytes(names)

        let stateStart = realtimeNanoseconds()
        try cluster.send("state terminating", to: "node-5")
        let state = try cluster.waitFor(timeout, "state change") {
            $0.latestTime(whenEach: names) { $0.kind == "state" && $0.member == "node-5" && $0.state == "terminating" }
        }

        let survivors = names.filter { $0 != "node-7" }
        let detectionStart = realtimeNanoseconds()
        cluster.kill("node-7")
        let detection = try cluster.waitFor(timeout, "detection") {
            $0.latestTime(whenEach: survivors) { ($0.kind == "died" || $0.kind == "left") && $0.member == "node-7" }
        }

        let remaining = survivors.filter { $0 != "node-9" }
        let leaveStart = realtimeNanoseconds()
        try cluster.send("leave", to: "node-9")
        let leave = try cluster.waitFor(timeout, "leave") {
            $0.latestTime(whenEach: remaining) { $0.kind == "left" && $0.member == "node-9" }
        }

        var row = ResultRow()
        row["nodes"] = .integer(nodes)
        row["bootstrap_s"] = .number(Double(bootstrap - bootstrapStart) / 1e9, decimals: 3)
        row["join_convergence_s"] = .number(Double(join - joinStart) / 1e9, decimals: 3)
        row["state_convergence_s"] = .number(Double(state - stateStart) / 1e9, decimals: 3)
        row["detection_s"] = .number(Double(detection - detectionStart) / 1e9, decimals: 3)
        row["leave_s"] = .number(Double(leave - leaveStart) / 1e9, decimals: 3)
        row["bytes_per_node_per_s"] = .number(bytesPerNodePerSecond, decimals: 1)
        row["rss_mb"] = .number(rss.mean, decimals: 1)
        row["rss_max_mb"] = .number(rss.max, decimals: 1)
        if json { print(row.json) } else { printTable([row]) }
    }
}

/// One line a node process reported.
struct NodeReport: Sendable {
    var time: Int64
    var kind: String
    var member: String?
    var state: String?
    var peers: Int?
    var address: String?
    var bytesOut: Int?
}

/// The node processes of a `gossip-live` run and everything they reported.
final class LiveCluster: Sendable {
    private struct Child {
        var process: Process
        var input: FileHandle
    }

    private let children = Mutex<[String: Child]>([:])
    private let log = Mutex<[String: [NodeReport]]>([:])

    /// Starts the node `name`, joining through `seed`; returns the address it listens on.
    func spawn(_ name: String, seed: String?) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        process.arguments = ["gossip-node", "--name", name] + (seed.map { ["--seed", $0] } ?? [])
        let output = Pipe()
        let input = Pipe()
        process.standardOutput = output
        process.standardInput = input
        try process.run()
        children.withLock { $0[name] = Child(process: process, input: input.fileHandleForWriting) }
        let reading = output.fileHandleForReading
        Thread.detachNewThread { [self] in
            var pending = Data()
            while true {
                let chunk = reading.availableData
                if chunk.isEmpty { break }
                pending.append(chunk)
                while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                    let line = pending[pending.startIndex..<newline]
                    pending.removeSubrange(pending.startIndex...newline)
                    if let report = Self.parse(Data(line)) { log.withLock { $0[name, default: []].append(report) } }
                }
            }
        }
        return try waitFor(30, "\(name) to listen") { cluster in
            cluster.reports[name]?.first { $0.kind == "listening" }?.address
        }
    }

    func send(_ command: String, to name: String) throws {
        guard let child = children.withLock({ $0[name] }) else { return }
        try child.input.write(contentsOf: Data((command + "\n").utf8))
    }

    func kill(_ name: String) {
        guard let child = children.withLock({ $0[name] }) else { return }
        Foundation.kill(child.process.processIdentifier, SIGKILL)
    }

    func killAll() {
        for child in children.withLock({ Array($0.values) }) where child.process.isRunning {
            Foundation.kill(child.process.processIdentifier, SIGKILL)
        }
    }

    /// The sum of the latest byte counts of `names`, and the latest time among those reports.
    func bytesSent(_ names: [String]) -> (total: Int, time: Int64) {
        log.withLock { reports in
            var total = 0
            var time: Int64 = 0
            for name in names {
                guard let last = reports[name]?.last(where: { $0.kind == "bytes" }) else { continue }
                total += last.bytesOut ?? 0
                time = max(time, last.time)
            }
            return (total, time)
        }
    }

    /// The mean and largest resident set size of the processes of `names`, in MiB.
    func residentMegabytes(_ names: [String]) -> (mean: Double, max: Double) {
        let sizes = names.compactMap { name -> Double? in
            guard let child = children.withLock({ $0[name] }),
                let status = try? String(
                    contentsOfFile: "/proc/\(child.process.processIdentifier)/status",
                    encoding: .utf8
                ),
                let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
                let kilobytes = Double(
                    line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? ""
                )
            else { return nil }
            return kilobytes / 1024
        }
        guard !sizes.isEmpty else { return (0, 0) }
        return (sizes.reduce(0, +) / Double(sizes.count), sizes.max() ?? 0)
    }

    /// Polls `condition` over the reports every 10 ms until it gives a value, or fails after `timeout` seconds.
    func waitFor<Value>(_ timeout: Double, _ what: String, _ condition: (LiveCluster) -> Value?) throws -> Value {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let value = condition(self) { return value }
            Thread.sleep(forTimeInterval: 0.01)
        }
        let views = reports.sorted { $0.key < $1.key }.map { name, lines in
            let news = lines.filter { $0.member != nil }.suffix(4).map { "\($0.kind) \($0.member ?? "")" }
            return "\(name): \(lines.last { $0.peers != nil }?.peers ?? 0) (last news: \(news.joined(separator: ", ")))"
        }
        throw ValidationError(
            "gave up waiting for \(what) after \(Int(timeout)) s; peers seen by each node: \(views.joined(separator: "; "))"
        )
    }

    /// For each of `names`, the first report for which `matches` holds; the latest of those times, or nil while
    /// some node has no such report yet.
    func latestTime(whenEach names: [String], _ matches: (NodeReport) -> Bool) -> Int64? {
        log.withLock { reports in
            var latest: Int64 = 0
            for name in names {
                guard let report = reports[name]?.first(where: matches) else { return nil }
                latest = max(latest, report.time)
            }
            return latest
        }
    }

    /// Everything every node reported so far.
    var reports: [String: [NodeReport]] { log.withLock { $0 } }

    static func parse(_ line: Data) -> NodeReport? {
        guard let object = try? JSONSerialization.jsonObject(with: line) as? [String: Any],
            let time = (object["t"] as? NSNumber)?.int64Value, let kind = object["e"] as? String
        else { return nil }
        return NodeReport(
            time: time,
            kind: kind,
            member: object["m"] as? String,
            state: object["s"] as? String,
            peers: (object["n"] as? NSNumber)?.intValue,
            address: object["a"] as? String,
            bytesOut: (object["out"] as? NSNumber)?.intValue
        )
    }
}
