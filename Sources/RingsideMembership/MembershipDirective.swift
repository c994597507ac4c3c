import RingsideSharding

/// Something that happened to a member, as observers see it.
public enum MembershipEvent: Hashable, Sendable {
    /// A member joined (or came back after being dead or gone).
    case joined(Member)
    /// A member left on purpose. It can follow ``died(_:)`` for the same member: a member that stops listening as soon
    /// as its departure has gone out may be declared dead by one that probed it before the news arrived, and the
    /// departure, at a later incarnation, corrects that.
    case left(Member)
    /// A member's peer state changed.
    case stateChanged(Member, from: PeerState)
    /// A member's metadata changed.
    case metadataChanged(Member)
    /// A member failed a probe and is suspected.
    case suspected(Member)
    /// A suspected member proved it is alive.
    case alive(Member)
    /// A member was declared dead.
    case died(Member)
}

/// What the protocol core asks its driver to do. The driver performs them in order.
public enum MembershipDirective: Hashable, Sendable {
    /// Send these messages, in one envelope, to the node at `address`.
    case send(to: String, messages: [GossipMessage])
    /// Tell observers.
    case event(MembershipEvent)
    /// An envelope was refused; the driver logs it.
    case rejected(EnvelopeRejection)
}

/// Why an envelope was refused.
public struct EnvelopeRejection: Hashable, Sendable, CustomStringConvertible {
    /// The sender's name as it claimed.
    public var senderName: String
    /// The sender's address as it claimed.
    public var senderAddress: String
    /// What is wrong.
    public var reason: String

    public var description: String { "refused gossip from \(senderName) at \(senderAddress): \(reason)" }
}

/// Running totals of the protocol's work, for metrics.
public struct MembershipCounters: Hashable, Sendable {
    /// Direct probes started.
    public var probes = 0
    /// Probes run on another member's behalf.
    public var indirectProbes = 0
    /// Suspicions this node raised.
    public var suspicions = 0
    /// Times this node refuted a suspicion or death about itself.
    public var refutations = 0
    /// Full-state exchanges this node started or answered.
    public var pushPulls = 0
    /// Envelopes refused (wrong cluster, a clashing name).
    public var rejectedEnvelopes = 0

    /// All zero.
    public init() {}
}
