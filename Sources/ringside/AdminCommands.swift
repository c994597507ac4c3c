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

    var address: String { admin ?? ProcessInfo.processInfo.environment["RINGSIDE_ADMIN"] ?? "127.0.0.1:7402" }

    /// GETs `path` from the admin plane and prints the body; a non-2xx answer goes to stderr with exit status 1.
    func printAnswer(to path: String) async throws {
        guard let target = HostAndPort(address) else {
            FileHandle.standardError.write(Data("ringside: --admin \"\(address)\" is not host:port\n".utf8))
            throw ExitCode(2)
        }
        let response: AdminClient.Response
        do {
            response = try await AdminClient.get(path, host: target.host, port: target.port)
        } catch {
            FileHandle.standardError.write(
                Data("ringside: cannot reach the admin plane at \(address): \(AdminClient.reason(error))\n".utf8)
            )
            throw ExitCode(1)
        }
        if (200..<300).contains(response.status) {
            print(response.body, terminator: response.body.hasSuffix("\n") ? "" : "\n")
        } else {
            let body = response.body.trimmingCharacters(in: .whitespacesAndNewlines)
            let detail = body.isEmpty ? "" : ": \(body)"
            FileHandle.standardError.write(
                Data("ringside: the admin plane at \(address) answered \(response.status)\(detail)\n".utf8)
            )
            throw ExitCode(1)
        }
    }
}

struct PeersCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "peers",
        abstract: "Lists the members a node sees (JSON)."
    )
    @OptionGroup var options: AdminOptions
    func run() async throws { try await options.printAnswer(to: "/v1/peers") }
}

struct StateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "state",
        abstract: "Shows a node's state, ring epoch and peer counts (JSON)."
    )
    @OptionGroup var options: AdminOptions
    func run() async throws { try await options.printAnswer(to: "/v1/state") }
}

struct LookupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lookup",
        abstract: "Shows which nodes own a key (JSON)."
    )
    @Argument(help: "The shard key.") var key: String
    @Option(help: "How many owners to show.") var replicas: Int?
    @OptionGroup var options: AdminOptions
    func run() async throws {
        let encoded =
            key.addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed.subtracting(["&", "=", "+"])) ?? key
        try await options.printAnswer(to: "/v1/lookup?key=\(encoded)" + (replicas.map { "&replicas=\($0)" } ?? ""))
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
    @Flag(help: "Print the last progress report as JSON.")
    var json = false
    @OptionGroup var options: AdminOptions

    func run() async throws {
        guard let target = HostAndPort(options.address) else {
            FileHandle.standardError.write(Data("ringside: --admin \"\(options.address)\" is not host:port\n".utf8))
            throw ExitCode(2)
        }
        var path = "/v1/drain"
        if let timeout {
            guard let duration = RingsideSettings.parseDuration(timeout), duration > .zero else {
                FileHandle.standardError.write(Data("ringside: --timeout \"\(timeout)\" is not a duration\n".utf8))
                throw ExitCode(2)
            }
            path +=
                "?timeout_ms=\(max(1, duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000))"
        }
        let started = ContinuousClock.now
        var last: DrainProgress
        do {
            let answer = try await AdminClient.get(path, host: target.host, port: target.port, method: .POST)
            guard answer.status == 202, let progress = Self.decode(answer.body) else {
                let body = answer.body.trimmingCharacters(in: .whitespacesAndNewlines)
                FileHandle.standardError.write(
                    Data("ringside: the admin plane at \(options.address) answered \(answer.status): \(body)\n".utf8)
                )
                throw ExitCode(1)
            }
            last = progress
        } catch let exit as ExitCode {
            throw exit
        } catch {
            FileHandle.standardError.write(
                Data(
                    "ringside: cannot reach the admin plane at \(options.address): \(AdminClient.reason(error))\n".utf8
                )
            )
            throw ExitCode(1)
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
                let answer = try await AdminClient.get("/v1/drain", host: target.host, port: target.port)
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
        if json {
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
        guard exited else {
            FileHandle.standardError.write(Data("ringside: the node did not exit within \(limit)\n".utf8))
            throw ExitCode(1)
        }
        guard last.state == "stopped" else {
            FileHandle.standardError.write(
                Data(
                    "ringside: the node exited before its last report (it was \(last.state)); what it cut is unknown\n"
                        .utf8
                )
            )
            throw ExitCode(1)
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
