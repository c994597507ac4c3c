import NIOHTTP1
import RingsideCluster
import RingsideSharding

/// Routes the app plane's requests by the cluster's current view: to the owners of the key, best first.
public struct ClusterRouter: ProxyRouter {
    /// The node whose view decides.
    public let node: ClusterNode
    /// The data plane's settings (key header, missing-key policy).
    public let configuration: ProxyConfiguration
    /// How many owners a request may be tried on, the first included.
    public var candidates = 3

    private static let localOnly: [ProxyRoute] = [.local]

    /// A router over `node`'s view.
    public init(node: ClusterNode, configuration: ProxyConfiguration) {
        self.node = node
        self.configuration = configuration
    }

    public func routes(for request: RoutingRequest) -> Result<[ProxyRoute], ProxyRefusal> {
        guard let key = request.key else {
            switch configuration.missingKey {
            case .local: return .success([.local])
            case .reject:
                return .failure(
                    ProxyRefusal(status: .badRequest, message: "the request has no \(configuration.keyHeader) header")
                )
            }
        }
        let sharder = node.sharder
        // With no participant left (a lone node draining), the terminating ones still serve: read lookups keep them.
        let op: ShardingOperation = sharder.eligibleCount(for: .readWrite) > 0 ? .readWrite : .read
        let count = min(candidates, sharder.eligibleCount(for: op))
        guard count > 0 else {
            return .failure(
                ProxyRefusal(status: .serviceUnavailable, message: "no participant owns keys in this node's view yet")
            )
        }
        do {
            if count == 1 {
                // One candidate (a single participant): no arrays to build for the common local answer.
                let owner = try sharder.owner(of: key, op: op)
                return .success(owner.isSelf ? Self.localOnly : [.peer(name: owner.name, address: owner.address)])
            }
            let owners = try sharder.lookup(key, replicas: count, op: op)
            return .success(owners.map { $0.isSelf ? .local : .peer(name: $0.name, address: $0.address) })
        } catch {
            return .failure(ProxyRefusal(status: .serviceUnavailable, message: error.message))
        }
    }

    public func upstreamFailed(_ route: ProxyRoute, error: (any Error)?) {
        if case .peer(let name, _) = route { node.reportUnreachable(name) }
    }
}

/// Routes requests that other nodes forwarded to this node's cluster port: served here, never forwarded again.
///
/// A request is served when this node owns its key in its own view, when this node is terminating (it hands off what
/// was sent with a stale view), or when the sender marked it as its last candidate. Otherwise the answer is 421 with
/// `x-ringside-not-owner`, before the backend is touched, and the sender tries its next candidate.
public struct ForwardedRouter: ProxyRouter {
    /// The node whose view decides.
    public let node: ClusterNode

    /// A router over `node`'s view.
    public init(node: ClusterNode) { self.node = node }

    public func routes(for request: RoutingRequest) -> Result<[ProxyRoute], ProxyRefusal> {
        guard request.isForwarded else {
            return .failure(
                ProxyRefusal(status: .forbidden, message: "this port serves only requests forwarded by Ringside nodes")
            )
        }
        guard let key = request.key, !request.isFinalCandidate else { return .success([.local]) }
        // The lock-free view first; the node's own state (behind the membership lock) only for a key it does not own.
        if let owner = try? node.sharder.owner(of: key, op: .readWrite), owner.isSelf {
            return .success([.local])
        }
        if node.state == .terminating { return .success([.local]) }
        var headers = HTTPHeaders()
        headers.add(name: HeaderHygiene.notOwnerHeader, value: node.configuration.nodeName)
        return .failure(
            ProxyRefusal(
                status: .misdirectedRequest,
                message: "\(node.configuration.nodeName) does not own this key in its view; try the next owner",
                headers: headers
            )
        )
    }
}
