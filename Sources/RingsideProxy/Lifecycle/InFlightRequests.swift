import Atomics
import NIOCore

/// Requests under way on this node, by where they came in: what a drain waits for.
///
/// An engine request counts from its head until its response is over or given up (a tunnel after a 101 is not a
/// request any more); an HTTP/2 stream's request likewise. Each counter is touched twice a request.
public final class InFlightRequests: Sendable {
    /// Where a request came in.
    public enum Entry: Int, Sendable, CaseIterable {
        /// The app plane, HTTP/1.1.
        case appHTTP1
        /// The app plane, an HTTP/2 stream.
        case appHTTP2
        /// The cluster port: requests other nodes forwarded.
        case cluster

        /// The name a drain report gives it.
        public var name: String {
            switch self {
            case .appHTTP1: "app_http1"
            case .appHTTP2: "app_http2"
            case .cluster: "cluster"
            }
        }
    }

    private let counts = (0..<Entry.allCases.count).map { _ in ManagedAtomic<Int>(0) }
    private let ends = ManagedAtomic<Int>(0)
    private let openTunnels = ManagedAtomic<Int>(0)

    public init() {}

    func began(_ entry: Entry) { counts[entry.rawValue].wrappingIncrement(ordering: .relaxed) }

    func ended(_ entry: Entry) {
        counts[entry.rawValue].wrappingDecrement(ordering: .relaxed)
        ends.wrappingIncrement(ordering: .relaxed)
    }

    func tunnelOpened() { openTunnels.wrappingIncrement(ordering: .relaxed) }

    func tunnelClosed() { openTunnels.wrappingDecrement(ordering: .relaxed) }

    /// Upgraded connections (WebSocket tunnels) open on the app plane and the cluster port: not requests, so a drain
    /// does not wait for them; the listeners' close ends them.
    public var tunnels: Int { openTunnels.load(ordering: .relaxed) }

    /// Requests over (answered, refused after routing, or given up) since the node started.
    public var finished: Int { ends.load(ordering: .relaxed) }

    /// Requests under way that came in at `entry`.
    public subscript(_ entry: Entry) -> Int { counts[entry.rawValue].load(ordering: .relaxed) }

    /// Requests under way in all.
    public var total: Int { counts.reduce(0) { $0 + $1.load(ordering: .relaxed) } }

    /// Requests under way that came in at any of `entries`.
    public func count(of entries: [Entry]) -> Int { entries.reduce(0) { $0 + self[$1] } }

    /// Waits until no request that came in at `entries` is under way, or `deadline`.
    public func waitUntilNone(of entries: [Entry], deadline: NIODeadline) async {
        while count(of: entries) > 0, NIODeadline.now() < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
    }
}
