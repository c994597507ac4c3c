import ArgumentParser
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import RingsideCluster

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

/// One GET over HTTP/1.1, for the admin commands and the demo.
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
                .head(HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: headers))
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
