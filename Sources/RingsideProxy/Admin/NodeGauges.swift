import Metrics
import RingsideCluster
import RingsideSharding

/// Gauges of a node's state, set when `/metrics` is read rather than on every change: requests and tunnels under
/// way, this node's share of the key space, the ring's epoch, and the drain.
public final class NodeGauges: Sendable {
    private let inFlight: [String: Gauge]
    private let tunnels = Gauge(label: "ringside_tunnels_open")
    private let keyShare = Gauge(label: "ringside_key_share")
    private let epoch = Gauge(label: "ringside_ring_epoch")
    private let drainPhase = Gauge(label: "ringside_drain_phase")
    private let drainCut = Gauge(label: "ringside_drain_cut_requests")

    /// The gauges, registered with the process's metrics backend.
    public init() {
        inFlight = Dictionary(
            uniqueKeysWithValues: InFlightRequests.Entry.allCases.map {
                ($0.name, Gauge(label: "ringside_requests_in_flight", dimensions: [("entry", $0.name)]))
            }
        )
    }

    /// Sets every gauge from `node` and `drain` as they are now.
    public func update(node: ClusterNode, drain: NodeDrain) {
        let progress = drain.progress
        for (name, gauge) in inFlight { gauge.record(progress.inFlight[name] ?? 0) }
        tunnels.record(progress.tunnels)
        let sharder = node.sharder
        keyShare.record(sharder.keyShares()[node.configuration.nodeName] ?? 0)
        // The low 32 bits: exact in a float, and enough to see that the view changed.
        epoch.record(Int(sharder.checksum & 0xFFFF_FFFF))
        drainPhase.record(Self.phaseNumbers[drain.phase] ?? 0)
        drainCut.record(progress.cut)
    }

    /// `ringside_drain_phase`: 0 running, 1 draining, 2 leaving, 3 stopped.
    static let phaseNumbers: [DrainLifecycle.Phase: Int] = [.running: 0, .draining: 1, .leaving: 2, .stopped: 3]
}
