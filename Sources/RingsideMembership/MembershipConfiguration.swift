import RingsideSharding

/// Everything that tunes one node's membership protocol. The defaults are hashicorp/memberlist's LAN profile.
public struct MembershipConfiguration: Sendable {
    /// The cluster's label. Every exchange carries it; a node with another label is refused, never merged.
    public var clusterName: String
    /// This node's unique name: its identity in the cluster and on the ring.
    public var nodeName: String
    /// The `host:port` at which other nodes reach this node's cluster listener.
    public var advertiseAddress: String
    /// The peer state this node starts in.
    public var initialState: PeerState
    /// The incarnation this node starts at. A driver that starts it from the wall clock (milliseconds since the epoch)
    /// lets a restarted node supersede its previous self at once instead of after the first refutation.
    public var initialIncarnation: UInt64
    /// Application metadata this node starts with.
    public var initialMetadata: [String: String]

    /// How often this node probes one other member (scaled up by the local health multiplier).
    public var probeInterval: Duration = .seconds(1)
    /// How long a direct probe waits for its ack before asking others (scaled like `probeInterval`).
    public var probeTimeout: Duration = .milliseconds(500)
    /// How many members are asked to probe a target that did not answer directly.
    public var indirectChecks = 3
    /// How often pending updates are sent to random members.
    public var gossipInterval: Duration = .milliseconds(200)
    /// How many random members each gossip round goes to.
    public var gossipNodes = 3
    /// Each update is sent `retransmitMultiplier × ⌈log10(n + 1)⌉` times.
    public var retransmitMultiplier = 4
    /// The least suspicion timeout is `suspicionMultiplier × max(1, log10 n) × probeInterval`.
    public var suspicionMultiplier = 4
    /// A suspicion with no independent confirmation lasts this many times the least timeout.
    public var suspicionMaxTimeoutMultiplier = 6
    /// How often this node exchanges its full state with one random member; scaled up above 32 members.
    public var pushPullInterval: Duration = .seconds(30)
    /// The local health multiplier's ceiling (Lifeguard's "awareness").
    public var awarenessMaxMultiplier = 8
    /// How long dead members are still gossiped to, so that a wrongly declared node hears it and refutes, before
    /// they are forgotten.
    public var gossipToTheDeadTime: Duration = .seconds(30)
    /// How long a deleted metadata entry is kept as a tombstone.
    public var metadataTombstoneTTL: Duration = .seconds(60)
    /// The most bytes of updates piggybacked on one probe, ack or gossip message.
    public var maxPiggybackBytes = 1400
    /// Whether a member enters this node's view only on its own word: an `alive` relayed by another member that
    /// would add a member, move it to another address or bring it back from dead or left is not applied; the member
    /// is asked at the claimed address for its full state instead, and its answer (sent under its own name) is.
    /// Meaningful only where the transport proves who sent an envelope (mutual TLS with names bound to
    /// certificates): one member cannot then invent others, or send a member's traffic elsewhere.
    public var membersIntroduceThemselves = false

    /// A configuration with the LAN profile's timings.
    public init(
        clusterName: String = "ringside",
        nodeName: String,
        advertiseAddress: String,
        initialState: PeerState = .participant,
        initialIncarnation: UInt64 = 0,
        initialMetadata: [String: String] = [:]
    ) {
        self.clusterName = clusterName
        self.nodeName = nodeName
        self.advertiseAddress = advertiseAddress
        self.initialState = initialState
        self.initialIncarnation = initialIncarnation
        self.initialMetadata = initialMetadata
    }
}
