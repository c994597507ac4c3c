import ArgumentParser
import RingsideSharding

/// `ringside-bench sharding`: lookup cost, rebuild cost, balance and movement of every sharder.
struct ShardingBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sharding",
        abstract: "Measures each sharder at several cluster sizes.",
        discussion: """
            Fields: lookup_ns and lookup3_ns (one and three owners, from the key string, median over batches),
            rebuild_ms (building the snapshot from the peer set, median), peak_to_mean (the busiest peer's share of
            the random keys over the mean share), moved_fraction (keys whose first owner changes when one more peer
            joins), optimal_fraction (1/(N+1), the least any scheme can move).
            """
    )

    @Flag(help: "Print one JSON object per line instead of a table.")
    var json = false

    @Option(help: "How many random keys measure balance and movement.")
    var keys = 1_000_000

    @Option(parsing: .upToNextOption, help: "Cluster sizes to measure.")
    var nodes: [Int] = [3, 10, 100, 1000]

    @Option(parsing: .upToNextOption, help: "Sharders to measure: ring, rendezvous, maglev.")
    var sharders: [String] = ["ring", "rendezvous", "maglev"]

    @Option(help: "Tokens per peer for the ring.")
    var tokens = HashRing.defaultTokensPerPeer

    @Option(help: "Probes per key for the ring (1 is the classic ring).")
    var probes = HashRing.defaultProbes

    @Option(help: "Table size (a prime) for Maglev.")
    var tableSize = MaglevHasher.defaultTableSize

    mutating func validate() throws {
        guard keys >= 1000 else { throw ValidationError("--keys must be at least 1000") }
        guard nodes.allSatisfy({ $0 >= 1 }) else { throw ValidationError("--nodes must all be at least 1") }
        for name in sharders where !["ring", "rendezvous", "maglev"].contains(name) {
            throw ValidationError("unknown sharder \"\(name)\": use ring, rendezvous or maglev")
        }
    }

    func run() throws {
        var generator = SplitMix64(seed: 0x5249_4E47_5349_4445)
        let keyStrings = (0..<keys).map { _ in "k" + String(generator.next(), radix: 36) }
        let keyHashes = keyStrings.map(ShardKey.hash)

        var rows: [ResultRow] = []
        for name in sharders {
            let algorithm: ShardingAlgorithm =
                switch name {
                case "ring": .ring(tokensPerPeer: tokens, probes: probes)
                case "maglev": .maglev(tableSize: tableSize)
                default: .rendezvous
                }
            for count in nodes {
                let row = try measure(algorithm, nodes: count, keyStrings: keyStrings, keyHashes: keyHashes)
                if json { print(row.json) } else { rows.append(row) }
            }
        }
        if !json { printTable(rows) }
    }

    func measure(
        _ algorithm: ShardingAlgorithm,
        nodes count: Int,
        keyStrings: [String],
        keyHashes: [UInt64]
    ) throws -> ResultRow {
        let peers = Self.peers(count)
        let grown = Self.peers(count + 1)

        var buildTimes: [Double] = []
        var sharder = try algorithm.makeSharder(peers: peers)
        for _ in 0..<(count >= 1000 ? 5 : 11) {
            let start = ContinuousClock.now
            sharder = try algorithm.makeSharder(peers: peers)
            buildTimes.append(nanoseconds(ContinuousClock.now - start) / 1e6)
        }

        let lookupNanoseconds = try Self.timeLookups(keyStrings) { key in
            try sharder.owner(of: key).name.utf8.count
        }
        let lookup3Nanoseconds = try Self.timeLookups(keyStrings) { key in
            try sharder.lookup(key, replicas: min(3, count)).count
        }

        let before = try Self.firstOwners(sharder, keyHashes)
        var perPeer: [String: Int] = [:]
        for owner in before { perPeer[owner, default: 0] += 1 }
        let mean = Double(keyHashes.count) / Double(count)
        let peak = Double(perPeer.values.max() ?? 0)

        let after = try Self.firstOwners(try algorithm.makeSharder(peers: grown), keyHashes)
        let moved = zip(before, after).count { $0 != $1 }

        var row = ResultRow()
        row["sharder"] = .string(algorithm.name)
        row["parameter"] = .string(Self.parameter(of: algorithm))
        row["nodes"] = .integer(count)
        row["lookup_ns"] = .number(lookupNanoseconds, decimals: 1)
        row["lookup3_ns"] = .number(lookup3Nanoseconds, decimals: 1)
        row["rebuild_ms"] = .number(median(buildTimes), decimals: 3)
        row["peak_to_mean"] = .number(peak / mean, decimals: 4)
        row["moved_fraction"] = .number(Double(moved) / Double(keyHashes.count), decimals: 5)
        row["optimal_fraction"] = .number(1 / Double(count + 1), decimals: 5)
        row["keys"] = .integer(keyHashes.count)
        return row
    }

    /// Names and addresses like a StatefulSet's, all participants. Addresses are never contacted.
    static func peers(_ count: Int) -> [Peer] {
        (0..<count).map { Peer(name: "ringside-\($0)", address: "ringside-\($0).ringside:7401", state: .participant) }
    }

    static func parameter(of algorithm: ShardingAlgorithm) -> String {
        switch algorithm {
        case .ring(let tokens, let probes): "tokens=\(tokens),probes=\(probes)"
        case .maglev(let size): "table=\(size)"
        case .rendezvous: "-"
        }
    }

    static func firstOwners(_ sharder: any Sharder, _ keyHashes: [UInt64]) throws -> [String] {
        try keyHashes.map { try sharder.owner(forKeyHash: $0, op: .readWrite).name }
    }

    /// The median over eleven batches of the mean time of one lookup, each batch sized to take about 20 ms.
    static func timeLookups(_ keys: [String], _ lookup: (String) throws -> Int) throws -> Double {
        var sink = 0
        var probe = 0
        let probeStart = ContinuousClock.now
        while probe < min(keys.count, 1000) {
            sink &+= try lookup(keys[probe])
            probe += 1
        }
        let estimate = max(1, nanoseconds(ContinuousClock.now - probeStart) / Double(probe))
        let batch = max(1000, min(keys.count, Int(20e6 / estimate)))
        var perLookup: [Double] = []
        var next = 0
        for _ in 0..<11 {
            let start = ContinuousClock.now
            for _ in 0..<batch {
                sink &+= try lookup(keys[next])
                next += 1
                if next == keys.count { next = 0 }
            }
            perLookup.append(nanoseconds(ContinuousClock.now - start) / Double(batch))
        }
        if sink == 42 { print("", terminator: "") }
        return median(perLookup)
    }
}
