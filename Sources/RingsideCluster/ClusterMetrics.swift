import Metrics
import RingsideMembership
import RingsideSharding

/// The cluster node's metrics (swift-metrics), created once. Names follow Prometheus conventions: `_total` counters,
/// base units, bounded label values.
struct ClusterMetrics: Sendable {
    let probes = Counter(label: "ringside_gossip_probes_total")
    let indirectProbes = Counter(label: "ringside_gossip_indirect_probes_total")
    let suspicions = Counter(label: "ringside_gossip_suspicions_total")
    let refutations = Counter(label: "ringside_gossip_refutations_total")
    let pushPulls = Counter(label: "ringside_gossip_push_pulls_total")
    let rejected = Counter(label: "ringside_gossip_rejected_envelopes_total")
    let framesDropped = Counter(label: "ringside_gossip_frames_dropped_total")
    /// Envelopes refused under mutual TLS because the sender's certificate does not carry the name it claims.
    let impersonations = Counter(label: "ringside_gossip_impersonations_total")
    let bytesIn = Counter(label: "ringside_gossip_bytes_total", dimensions: [("direction", "in")])
    let bytesOut = Counter(label: "ringside_gossip_bytes_total", dimensions: [("direction", "out")])
    let healthScore = Gauge(label: "ringside_gossip_health_score")
    let membersByState: [PeerState: Gauge] = Dictionary(
        uniqueKeysWithValues: PeerState.allCases.map {
            ($0, Gauge(label: "ringside_cluster_members", dimensions: [("state", $0.description)]))
        }
    )
    let suspects = Gauge(label: "ringside_cluster_suspect_members")

    /// Brings the metrics up to date with `instance`, whose counters were `previous` at the last call.
    func record(_ instance: SWIMInstance, since previous: MembershipCounters) {
        let now = instance.counters
        probes.increment(by: Int64(now.probes - previous.probes))
        indirectProbes.increment(by: Int64(now.indirectProbes - previous.indirectProbes))
        suspicions.increment(by: Int64(now.suspicions - previous.suspicions))
        refutations.increment(by: Int64(now.refutations - previous.refutations))
        pushPulls.increment(by: Int64(now.pushPulls - previous.pushPulls))
        rejected.increment(by: Int64(now.rejectedEnvelopes - previous.rejectedEnvelopes))
        healthScore.record(instance.awareness)
    }

    /// Records how many active members are in each state.
    func record(members: [Member]) {
        var counts: [PeerState: Int] = [:]
        var suspectCount = 0
        for member in members where member.status.isActive {
            counts[member.state, default: 0] += 1
            if member.status == .suspect { suspectCount += 1 }
        }
        for (state, gauge) in membersByState { gauge.record(counts[state] ?? 0) }
        suspects.record(suspectCount)
    }
}
