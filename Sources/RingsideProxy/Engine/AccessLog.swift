import Logging
import NIOCore
import NIOHTTP1
import RingsideSharding

/// What the access log says of a request, taken from its head when there is an access log.
struct AccessFacts {
    var method: String
    /// The target as the client sent it (its first 512 bytes).
    var path: String
    /// The shard key's hash (the key itself may be personal data; its hash finds the owner all the same).
    var keyHash: UInt64?
    /// The client's `X-Request-Id`, or the one this proxy gave the request.
    var requestID: String
}

/// One line a request, as Envoy's access log: off unless `access-log` is set, and then written through a logger of
/// its own (``ProxyConfiguration/accessLog``), whatever the log level. Message `request`; metadata
/// `ringside.method`, `ringside.path`, `ringside.key_hash`, `ringside.route` (`local`, or `peer:NAME`),
/// `ringside.status`, `ringside.bytes` (response bytes relayed from the upstream), `ringside.duration_ms`,
/// `ringside.request_id`, `ringside.served_by` (the node whose backend the request went to; none when this proxy
/// answered without a route), `ringside.plane` (`app`, or `cluster` for a request another node forwarded here).
enum AccessLog {
    /// Writes the line of a request on `plane` that its connection is done with, if `configuration` has an access
    /// log.
    static func write(
        _ configuration: ProxyConfiguration,
        _ plane: ProxyPlane,
        facts: AccessFacts?,
        route: ProxyRoute?,
        status: Int,
        bytes: Int,
        nanoseconds: Int64
    ) {
        guard let logger = configuration.accessLog else { return }
        let localName = configuration.nodeName
        let plane = plane == .cluster ? "cluster" : "app"
        var metadata: Logger.Metadata = [
            "ringside.method": "\(facts?.method ?? "-")",
            "ringside.path": "\(facts?.path ?? "-")",
            "ringside.key_hash": "\(facts?.keyHash.map { String($0, radix: 16) } ?? "-")",
            "ringside.route": "\(route.map(describe) ?? "none")",
            "ringside.status": "\(status)",
            "ringside.bytes": "\(bytes)",
            "ringside.duration_ms": "\(Double(nanoseconds / 1000) / 1000)",
            "ringside.request_id": "\(facts?.requestID ?? "-")",
            "ringside.plane": "\(plane)",
        ]
        switch route {
        case .local: metadata["ringside.served_by"] = "\(localName)"
        case .peer(let name, _): metadata["ringside.served_by"] = "\(name)"
        case nil: break
        }
        logger.info("request", metadata: metadata)
    }

    static func describe(_ route: ProxyRoute) -> String {
        switch route {
        case .local: "local"
        case .peer(let name, _): "peer:\(name)"
        }
    }
}

extension AccessFacts {
    /// The facts of an HTTP/2 stream's request, from its head as it goes upstream (with its `X-Request-Id`).
    init(_ head: HTTPRequestHead, keyHeader: String) {
        method = head.method.rawValue
        path = String(head.uri.utf8.prefix(512)) ?? head.uri
        keyHash = head.headers.first(name: keyHeader).map { ShardKey.hash($0) }
        requestID = head.headers.first(name: "x-request-id") ?? "-"
    }
}
