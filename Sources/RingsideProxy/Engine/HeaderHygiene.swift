import NIOCore
import NIOHTTP1
import RingsideCluster

/// The header rules of a well-behaved proxy (RFC 9110 §7.6).
enum HeaderHygiene {
    /// The header a forwarding node adds: its name and ring checksum. Stripped from every client request, so clients
    /// cannot claim to be a peer.
    static let hopHeader = "x-ringside-hop"
    /// The header naming the node whose backend served a response.
    static let nodeHeader = "x-ringside-node"
    /// Marks a forwarded request as the sender's last candidate: served wherever it lands, so that views that
    /// disagree cannot lose it.
    static let finalHeader = "x-ringside-final"
    /// Marks a 421 from a peer that does not own the key (as opposed to a backend's own 421).
    static let notOwnerHeader = "x-ringside-not-owner"
    /// The remaining time of a forwarded request, in milliseconds.
    static let deadlineHeader = "x-ringside-deadline-ms"

    /// Headers that describe one connection and never cross a proxy (RFC 9110 §7.6.1), besides those the
    /// `Connection` header names.
    static let hopByHop: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade", "proxy-authenticate",
        "proxy-authorization", "trailer",
    ]

    /// The `Host` given to a request that came without one (HTTP/1.0 allows that): the address the client reached, as
    /// `host:port` (`[address]:port` for IPv6).
    static func authority(of address: SocketAddress?) -> String {
        address.flatMap(HostAndPort.init)?.description ?? "localhost"
    }

    /// Whether a request's `Transfer-Encoding` is one this proxy can pass on: chunked alone. Any other coding would be
    /// forwarded undecoded under a header that no longer names it, so it is refused (501, RFC 9112 §6.1).
    static func isChunkedAlone(_ codings: [Substring]) -> Bool {
        codings.count == 1 && codings[0].lowercased() == "chunked"
    }

    /// Removes hop-by-hop headers and the ones `Connection` lists. Keeps `TE: trailers` (gRPC needs it end to end).
    static func removeHopByHop(from headers: inout HTTPHeaders) {
        // Per request and response: no set is built; `remove(name:)` already matches any case.
        let named = headers[canonicalForm: "connection"].map(String.init)
        let keepsTrailers = headers[canonicalForm: "te"].contains { $0.lowercased() == "trailers" }
        for name in hopByHop { headers.remove(name: name) }
        for name in named { headers.remove(name: name) }
        if keepsTrailers { headers.add(name: "te", value: "trailers") }
    }

    /// A request head as it leaves this proxy: hop-by-hop headers gone, client-supplied internal headers gone,
    /// `X-Forwarded-For`, `X-Forwarded-Proto`, `Via` and (when absent) `X-Request-Id` set.
    static func forwardedRequest(
        _ head: HTTPRequestHead,
        clientAddress: String?,
        scheme: String,
        via: String,
        trustsForwardedProto: Bool = false,
        requestID: () -> String
    ) -> HTTPRequestHead {
        var head = head
        removeHopByHop(from: &head.headers)
        head.headers.remove(name: hopHeader)
        head.headers.remove(name: deadlineHeader)
        head.headers.remove(name: finalHeader)
        head.headers.remove(name: nodeHeader)
        head.headers.remove(name: notOwnerHeader)
        if let clientAddress {
            let previous = head.headers["x-forwarded-for"].joined(separator: ", ")
            head.headers.replaceOrAdd(
                name: "x-forwarded-for",
                value: previous.isEmpty ? clientAddress : "\(previous), \(clientAddress)"
            )
        }
        // Set by the proxy; a peer's (forwarded requests) is kept.
        if !trustsForwardedProto { head.headers.remove(name: "x-forwarded-proto") }
        if !head.headers.contains(name: "x-forwarded-proto") {
            head.headers.add(name: "x-forwarded-proto", value: scheme)
        }
        head.headers.add(name: "via", value: "\(head.version.major).\(head.version.minor) \(via)")
        if !head.headers.contains(name: "x-request-id") { head.headers.add(name: "x-request-id", value: requestID()) }
        head.version = .http1_1
        return head
    }

    /// A response head as it leaves this proxy: hop-by-hop headers gone, `Via` added, `X-Ringside-Node` set when
    /// `servedBy` is given.
    static func returnedResponse(_ head: HTTPResponseHead, via: String, servedBy: String?) -> HTTPResponseHead {
        var head = head
        removeHopByHop(from: &head.headers)
        head.headers.add(name: "via", value: "\(head.version.major).\(head.version.minor) \(via)")
        if let servedBy, !head.headers.contains(name: nodeHeader) {
            head.headers.add(name: nodeHeader, value: servedBy)
        }
        return head
    }
}
