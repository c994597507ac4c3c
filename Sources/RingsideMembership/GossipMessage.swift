/// One protocol message. Several travel together in one envelope: a probe carries pending updates with it.
public enum GossipMessage: Hashable, Sendable {
    /// "Are you there?" addressed to the member named `target` (so that a new process on a reused address stays
    /// silent).
    case ping(sequence: UInt32, target: String)
    /// The answer to a ping, sent to the prober or relayed through the member that probed on its behalf.
    case ack(sequence: UInt32)
    /// From a member probing on someone's behalf: "I got no answer" (Lifeguard), or with `refused`, "nothing listens
    /// there".
    case nack(sequence: UInt32, refused: Bool)
    /// "Please probe `target` for me" (SWIM's indirect probe).
    case pingRequest(sequence: UInt32, target: String, targetAddress: String)
    /// The current state of a member, as announced by the member itself.
    case alive(Member)
    /// `from` suspects `name` at `incarnation`.
    case suspect(name: String, incarnation: UInt64, from: String)
    /// `from` declares `name` dead at `incarnation`; when `from == name` the member left.
    case dead(name: String, incarnation: UInt64, from: String)
    /// A full-state exchange: the sender's whole view. A request expects a response with the receiver's view.
    case pushPull(isResponse: Bool, isJoin: Bool, members: [Member])

    /// The member an update is about, so that a newer update replaces an older one in the send queue.
    var subject: String? {
        switch self {
        case .alive(let member): member.name
        case .suspect(let name, _, _), .dead(let name, _, _): name
        case .ping, .ack, .nack, .pingRequest, .pushPull: nil
        }
    }
}

/// What travels in one request between two nodes: the cluster label, the sender, and its messages.
public struct GossipEnvelope: Hashable, Sendable {
    /// The sender's cluster label.
    public var clusterName: String
    /// The sender's name.
    public var senderName: String
    /// The sender's cluster address, where answers go.
    public var senderAddress: String
    /// The messages, in order.
    public var messages: [GossipMessage]

    /// Creates an envelope.
    public init(clusterName: String, senderName: String, senderAddress: String, messages: [GossipMessage]) {
        self.clusterName = clusterName
        self.senderName = senderName
        self.senderAddress = senderAddress
        self.messages = messages
    }
}
