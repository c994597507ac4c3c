import ArgumentParser
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import RingsideCluster
import RingsideProxy

/// Options shared by the commands that ask a running node.
struct AdminOptions: ParsableArguments {
    @Option(help: "The node's admin address (default: RINGSIDE_ADMIN, or 127.0.0.1:7402).")
    var admin: String?

    @Option(help: "A file holding the admin plane's bearer token (default: RINGSIDE_ADMIN_TOKEN_FILE).")
    var tokenFile: String?

    @Flag(help: "Print the node's JSON answer instead of a table.")
    var json = false

    var address: String { admin ?? ProcessInfo.processInfo.environment["RINGSIDE_ADMIN"] ?? "127.0.0.1:7402" }

    /// The admin address, or exit status 2 when it is not `host:port`.
    func target() throws -> HostAndPort {
        guard let target = HostAndPort(address) else { throw usage("--admin \"\(address)\" is not host:port") }
        return target
    }

    /// The `Authorization` header the token file asks for, if any; exit status 2 when the file cannot be read.
    func authorization() throws -> [(String, String)] {
        guard let path = tokenFile ?? ProcessInfo.processInfo.environment["RINGSIDE_ADMIN_TOKEN_FILE"] else {
            return []
        }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw usage("--token-file \"\(path)\" cannot be read")
        }
        return [("authorization", "Bearer \(text.trimmingCharacters(in: .whitespacesAndNewlines))")]
    }

    /// Asks the admin plane: the answer of any status, or exit status 1 when the node cannot be reached.
    func ask(_ path: String, method: HTTPMethod = .GET) async throws -> AdminClient.Response {
        let target = try target()
        do {
            return try await AdminClient.get(
                path,
                host: target.host,
                port: target.port,
                method: method,
                headers: try authorization()
            )
        } catch let exit as ExitCode {
            throw exit
        } catch {
            throw failure("cannot reach the admin plane at \(address): \(AdminClient.reason(error))")
        }
    }

    /// GETs `path`: the JSON body with `--json`, else `table` of it; a non-2xx answer goes to stderr with exit status 1.
    func printAnswer(to path: String, table: (Any) -> String?) async throws {
        let response = try await ask(path)
        guard (200..<300).contains(response.status) else {
            let body = response.body.trimmingCharacters(in: .whitespacesAndNewlines)
            throw failure("the admin plane at \(address) answered \(response.status)\(body.isEmpty ? "" : ": \(body)")")
        }
        let parsed = try? JSONSerialization.jsonObject(with: Data(response.body.utf8))
        if !json, let parsed, let text = table(parsed) {
            print(text, terminator: "")
        } else {
            print(response.body, terminator: response.body.hasSuffix("\n") ? "" : "\n")
        }
    }
}

/// Says `message` on stderr; exit status 2 (a bad command line), as every subcommand uses it.
func usage(_ message: String) -> ExitCode {
    FileHandle.standardError.write(Data("ringside: \(message)\n".utf8))
    return ExitCode(2)
}

/// Says `message` on stderr; exit status 1 (the node could not be reached, or refused).
func failure(_ message: String) -> ExitCode {
    FileHandle.standardError.write(Data("ringside: \(message)\n".utf8))
    return ExitCode(1)
}

/// Columns padded to their widest cell, the first row a header.
func table(_ rows: [[String]]) -> String {
    guard let first = rows.first else { return "" }
    let widths = first.indices.map { column in rows.map { $0[column].count }.max() ?? 0 }
    return rows.map { row in
        row.enumerated().map { column, cell in
            column == row.count - 1 ? cell : cell.padding(toLength: widths[column], withPad: " ", startingAt: 0)
        }.joined(separator: "  ")
    }.joined(separator: "\n") + "\n"
}

/// A JSON value as a table cell.
func cell(_ value: Any?) -> String {
    if let flag = value as? Bool, let value, type(of: value) == Bool.self { return flag ? "yes" : "no" }
    return switch value {
    case let text as String: printable(text)
    case let number as NSNumber: number.stringValue
    case let object as [String: Any]:
        object.sorted { $0.key < $1.key }.map { "\(cell($0.key))=\(cell($0.value))" }.joined(separator: ",")
    case nil: "-"
    default: "\(value!)"
    }
}

/// `text` with its control, format (bidi overrides, zero-width) and separator characters escaped (`\u{1B}`), and
/// backslashes doubled: names and metadata come from other nodes, and a table shows them rather than sending them to
/// the terminal or letting them disguise themselves.
func printable(_ text: String) -> String {
    var result = ""
    for scalar in text.unicodeScalars {
        switch scalar.properties.generalCategory {
        case .control, .format, .lineSeparator, .paragraphSeparator:
            result += scalar.escaped(asASCII: true)
        default:
            if scalar == "\\" { result += "\\\\" } else { result.unicodeScalars.append(scalar) }
        }
    }
    return result
}

struct PeersCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "peers",
        abstract: "Lists the members a node sees."
    )
    @OptionGroup var options: AdminOptions
    func run() async throws {
        try await options.printAnswer(to: "/v1/peers") { body in
            guard let peers = body as? [[String: Any]] else { return nil }
            return table(
                [["NAME", "ADDRESS", "STATE", "STATUS", "INCARNATION", "METADATA"]]
                    + peers.map { peer in
                        let name = cell(peer["name"]) + ((peer["self"] as? Bool) == true ? " *" : "")
                        return [name]
                            + ["address", "state", "status", "incarnation", "metadata"].map { cell(peer[$0]) }
                    }
            )
        }
    }
}

struct StateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "state",
        abstract: "Shows a node's state, ring epoch and peer counts."
    )
    @OptionGroup var options: AdminOptions
    func run() async throws {
        try await options.printAnswer(to: "/v1/state") { body in
            guard let state = body as? [String: Any] else { return nil }
            return table(
                [["KEY", "VALUE"]] + ["name", "state", "epoch", "cluster_auth", "peers"].map { [$0, cell(state[$0])] }
            )
        }
    }
}

struct LookupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lookup",
        abstract: "Shows which nodes own a key, in order of preference."
    )
    @Argument(help: "The shard key.") var key: String
    @Option(help: "How many owners to show (1 or more).") var replicas: Int?
    @OptionGroup var options: AdminOptions

    func validate() throws {
        if let replicas, replicas < 1 { throw ValidationError("--replicas \(replicas) is not 1 or more") }
    }

    func run() async throws {
        let encoded =
            key.addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed.subtracting(["&", "=", "+"])) ?? key
        let path = "/v1/lookup?key=\(encoded)" + (replicas.map { "&replicas=\($0)" } ?? "")
        try await options.printAnswer(to: path) { body in
            guard let answer = body as? [String: Any], let owners = answer["owners"] as? [[String: Any]] else {
                return nil
            }
            return table(
                [["RANK", "NAME", "ADDRESS", "STATE"]]
                    + owners.enumerated().map { rank, owner in
                        let name = cell(owner["name"]) + ((owner["self"] as? Bool) == true ? " *" : "")
                        return ["\(rank + 1)", name, cell(owner["address"]), cell(owner["state"])]
                    }
            )
        }
    }
}

struct DrainCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drain",
        abstract: "Drains a node and waits until it has exited.",
        discussion: """
            The node fails readiness, becomes terminating (peers stop sending it new keys), lets every connection \
            close after its response, leaves once nothing is under way (or at the timeout) and exits. Prints what \
            happened. Exit status: 0 drained, 1 the node could not be reached or did not exit in time, 2 a bad \
            option, 3 the drain cut requests.
            """
    )
    @Option(help: "How long the node waits for requests under way (default: its drain-timeout).")
    var timeout: String?
    @OptionGroup var options: AdminOptions

    func run() async throws {
        let target = try options.target()
        let authorization = try options.authorization()
        var path = "/v1/drain"
        if let timeout {
            guard let duration = RingsideSettings.parseDuration(timeout), duration > .zero,
                duration <= NodeDrain.longestTimeout
            else {
                throw usage(
                    "--timeout \"\(printable(timeout))\" is not a positive duration such as 30s or 5m (at most a day)"
                )
            }
            path +=
                "?timeout_ms=\(max(1, duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000))"
        }
        let started = ContinuousClock.now
        let answer = try await options.ask(path, method: .POST)
        guard answer.status == 202, var last = Self.decode(answer.body) else {
            let body = answer.body.trimmingCharacters(in: .whitespacesAndNewlines)
            throw failure("the admin plane at \(options.address) answered \(answer.status): \(body)")
        }
        if last.elapsedSeconds > 0.5 {
            FileHandle.standardError.write(
                Data(
                    "ringside: a drain was under way already (started by \(last.trigger ?? "?")); it goes on as it began\n"
                        .utf8
                )
            )
        }
        // The node answers until it exits (it reports `stopped` for a moment first); then its admin port refuses. Other
        // failures (a slow answer) are polled again.
        let limit = Duration.seconds(last.timeoutSeconds ?? 30) + .seconds(30)
        var exited = false
        var refusedSince: ContinuousClock.Instant?
        while ContinuousClock.now - started < limit {
            do {
                let answer = try await AdminClient.get(
                    "/v1/drain",
                    host: target.host,
                    port: target.port,
                    headers: authorization
                )
                if let progress = Self.decode(answer.body) { last = progress }
                refusedSince = nil
            } catch  where Self.isRefused(error) {
                // Gone: after its last report, or (a report missed) once it has refused for a second.
                let since = refusedSince ?? ContinuousClock.now
                refusedSince = since
                if last.state == "stopped" || ContinuousClock.now - since > .seconds(1) {
                    exited = true
                    break
                }
            } catch {
                refusedSince = nil
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        if options.json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(last), as: UTF8.self))
        } else {
            let seconds = Double(Int(last.elapsedSeconds * 100)) / 100
            print(
                "drained in \(seconds) s: \(last.finished) requests finished, \(last.cut) cut"
                    + (last.tunnelsClosed > 0 ? ", \(last.tunnelsClosed) tunnels closed" : "")
                    + (last.timedOut ? " (the timeout passed)" : "") + (exited ? "; the node has exited" : "")
            )
        }
        guard exited else { throw failure("the node did not exit within \(limit)") }
        guard last.state == "stopped" else {
            throw failure("the node exited before its last report (it was \(last.state)); what it cut is unknown")
        }
        if last.cut > 0 { throw ExitCode(3) }
    }

    /// Whether `error` says nothing listens at the address any more.
    private static func isRefused(_ error: any Error) -> Bool {
        AdminClient.reason(error).lowercased().contains("refused")
    }

    private static func decode(_ body: String) -> DrainProgress? {
        try? JSONDecoder().decode(DrainProgress.self, from: Data(body.utf8))
    }
}

/// One request over HTTP/1.1, for the admin commands and the demo.
enum AdminClient {
    /// Why a connection failed, in the words of the system.
    static func reason(_ error: any Error) -> String { ConnectionFailureText.reason(error) }

    struct Response {
        var status: Int
        var headers: HTTPHeaders
        var body: String
    }

    static func get(
        _ path: String,
        host: String,
        port: Int,
        method: HTTPMethod = .GET,
        headers extra: [(String, String)] = []
    ) async throws -> Response {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(2))
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(
                        wrappingChannelSynchronously: channel
                    )
                }
            }
        return try await channel.executeThenClose { inbound, outbound in
            var headers = HTTPHeaders([("host", "\(host):\(port)"), ("connection", "close")])
            for (name, value) in extra { headers.add(name: name, value: value) }
            try await outbound.write(
                .head(HTTPRequestHead(version: .http1_1, method: method, uri: path, headers: headers))
            )
            try await outbound.write(.end(nil))
            var response = Response(status: 0, headers: [:], body: "")
            var body = ByteBuffer()
            for try await part in inbound {
                switch part {
                case .head(let head):
                    response.status = Int(head.status.code)
                    response.headers = head.headers
                case .body(var chunk):
                    body.writeBuffer(&chunk)
                case .end:
                    break
                }
            }
            response.body = String(buffer: body)
            return response
        }
    }
}
