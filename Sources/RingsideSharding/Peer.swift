/// A member of the cluster as the sharding layer sees it.
///
/// The `name` is the identity: it is what the sharders hash, so a peer that restarts on another address keeps its
/// keys. Two peers in one set never share a name.
public struct Peer: Hashable, Sendable, CustomStringConvertible {
    /// The unique name of the peer; the only input to the hash.
    public var name: String
    /// Where other peers reach it (`host:port` of its cluster listener).
    public var address: String
    /// Its state, which decides whether and for which operations it owns keys.
    public var state: PeerState
    /// Whether this peer is the local node.
    public var isSelf: Bool

    /// Creates a peer.
    public init(name: String, address: String, state: PeerState, isSelf: Bool = false) {
        self.name = name
        self.address = address
        self.state = state
        self.isSelf = isSelf
    }

    public var description: String { "\(name)@\(address) (\(state)\(isSelf ? ", self" : ""))" }
}
