import ArgumentParser

@main
struct RingsideBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ringside-bench",
        abstract: "Measures Ringside and prints figures (a readable table, or one JSON object per line with --json).",
        discussion: "Build in release mode first: swift run -c release ringside-bench <benchmark> [--json]",
        subcommands: [
            ShardingBenchmark.self, GossipBenchmark.self, GossipLiveBenchmark.self, GossipNodeCommand.self,
            ProxyBenchmark.self, DrainBenchmark.self,
        ]
    )
}

/// A duration in nanoseconds.
func nanoseconds(_ duration: Duration) -> Double {
    let (seconds, attoseconds) = duration.components
    return Double(seconds) * 1e9 + Double(attoseconds) / 1e9
}

/// The median of `values` (which must not be empty).
func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    let middle = sorted.count / 2
    return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
}

/// One line of benchmark output: named fields in a fixed order, printed as JSON or as a table row.
struct ResultRow {
    var fields: [(key: String, value: Value)] = []

    enum Value {
        case string(String)
        case integer(Int)
        case number(Double, decimals: Int)

        var json: String {
            switch self {
            case .string(let text): "\"\(text)\""
            case .integer(let value): String(value)
            case .number(let value, let decimals): formatted(value, decimals: decimals)
            }
        }

        var text: String {
            switch self {
            case .string(let text): text
            default: json
            }
        }
    }

    subscript(key: String) -> Value? {
        get { fields.first { $0.key == key }?.value }
        set {
            guard let newValue else { return }
            if let index = fields.firstIndex(where: { $0.key == key }) {
                fields[index].value = newValue
            } else {
                fields.append((key, newValue))
            }
        }
    }

    var json: String { "{" + fields.map { "\"\($0.key)\":\($0.value.json)" }.joined(separator: ",") + "}" }
}

/// `value` with a fixed number of decimals, without Foundation's locale-dependent formatting.
func formatted(_ value: Double, decimals: Int) -> String {
    guard value.isFinite else { return "null" }
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let scaled = (abs(value) * scale).rounded()
    let whole = Int(scaled / scale)
    var fraction = String(Int(scaled) - whole * Int(scale))
    while fraction.count < decimals { fraction = "0" + fraction }
    let sign = value < 0 && scaled != 0 ? "-" : ""
    return decimals == 0 ? "\(sign)\(whole)" : "\(sign)\(whole).\(fraction)"
}

/// Prints rows as an aligned table with a header.
func printTable(_ rows: [ResultRow]) {
    guard let first = rows.first else { return }
    let keys = first.fields.map(\.key)
    var widths = keys.map(\.count)
    for row in rows {
        for (column, key) in keys.enumerated() {
            widths[column] = max(widths[column], row[key]?.text.count ?? 0)
        }
    }
    func line(_ cells: [String]) -> String {
        zip(cells, widths).map { cell, width in String(repeating: " ", count: width - cell.count) + cell }
            .joined(separator: "  ")
    }
    print(line(keys))
    for row in rows {
        print(line(keys.map { row[$0]?.text ?? "" }))
    }
}
