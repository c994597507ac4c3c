import RingsideMembership
import RingsideSharding

/// How one cluster node is set up: who it is, where it listens, whom it joins, and its protocol timings.
public struct ClusterConfiguration: Sendable {
    /// The node's unique name: its identity in the cluster and on the ring.
    public var nodeName: String
    /// The cluster's label; nodes of other clusters are refused.
    public var clusterName = "ringside"
    /// Where the cluster listener binds (`host:port`; port 0 picks a free one).
    public var listenAddress = "0.0.0.0:7401"
    /// The `host:port` other nodes use to reach this one. When nil, the bound address, with a wildcard host replaced
    /// by an address of this machine's interfaces (see ``AdvertisedHost``). A wildcard or port 0 is refused.
    public var advertiseAddress: String?
    /// Seeds: `host:port` (a name resolves to every A and AAAA record) or `dnssrv+_service._proto.name` (SRV).
    public var seeds: [String] = []
    /// How often the seeds are resolved and joined again even when the view looks healthy: this is what heals a
    /// partition once each side has declared the other dead.
    public var rejoinInterval: Duration = .seconds(30)
    /// The state the node starts in.
    public var initialState: PeerState = .participant
    /// Metadata the node starts with.
    public var initialMetadata: [String: String] = [:]
    /// How the sharder is built from the peers.
    public var sharding: ShardingAlgorithm = .default
    /// How long ``ClusterNode/changeState(to:)`` and a graceful leave wait for the news to reach other members.
    public var disseminationTimeout: Duration = .seconds(5)
    /// How long an HTTP/2 connection to the cluster port may go without an open stream before it is sent a GOAWAY and
    /// closed. Nodes open connections again when they next need one; the bound is for connections left behind (a peer
    /// that went quiet, or a client that only ever sent the preface).
    public var idleConnectionTimeout: Duration = .seconds(300)
    /// The protocol's timings; `nodeName`, `clusterName`, `advertiseAddress`, the initial state and metadata are taken
    /// from this configuration instead.
    public var timings = MembershipConfiguration(nodeName: "", advertiseAddress: "")
    /// Mutual TLS on the cluster plane (roles ``TLSRole/clusterServer``, ``TLSRole/gossipClient`` and
    /// ``TLSRole/forwardClient``): every connection, both ways, presents a certificate of the cluster's CA, and gossip
    /// is taken only under a name the sender's certificate carries. Nil: plaintext, and anyone who reaches the port
    /// can join.
    public var tls: PlaneTLS?

    /// A configuration for the node named `nodeName`, with defaults for everything else.
    public init(nodeName: String) { self.nodeName = nodeName }
}
