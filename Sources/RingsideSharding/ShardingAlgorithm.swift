/// The sharders Ringside offers, with their parameters; a configuration names one of these.
public enum ShardingAlgorithm: Hashable, Sendable, CustomStringConvertible {
    /// A ring of tokens looked up from several probes; see ``HashRing``.
    case ring(tokensPerPeer: Int = HashRing.defaultTokensPerPeer, probes: Int = HashRing.defaultProbes)
    /// Rendezvous (highest random weight) hashing; see ``RendezvousHasher``.
    case rendezvous
    /// Maglev with a prime table size; see ``MaglevHasher``.
    case maglev(tableSize: Int = MaglevHasher.defaultTableSize)

    /// The multi-probe ring, 512 tokens and 4 probes: minimal movement, shares within 5 % of even up to 100 peers and
    /// lookups of tens of nanoseconds. Rendezvous costs a score per peer on each lookup; Maglev moves keys between
    /// peers that stayed. The README's sharding table has the figures.
    public static let `default`: ShardingAlgorithm = .ring()

    /// Builds a sharder of this kind for `peers`.
    public func makeSharder(peers: [Peer]) throws(ShardingError) -> any Sharder {
        switch self {
        case .ring(let tokensPerPeer, let probes):
            try HashRing(peers: peers, tokensPerPeer: tokensPerPeer, probes: probes)
        case .rendezvous: try RendezvousHasher(peers: peers)
        case .maglev(let tableSize): try MaglevHasher(peers: peers, tableSize: tableSize)
        }
    }

    /// The configuration name: `ring`, `rendezvous` or `maglev`.
    public var name: String {
        switch self {
        case .ring: "ring"
        case .rendezvous: "rendezvous"
        case .maglev: "maglev"
        }
    }

    public var description: String {
        switch self {
        case .ring(let tokensPerPeer, let probes): "ring(tokens: \(tokensPerPeer), probes: \(probes))"
        case .rendezvous: "rendezvous"
        case .maglev(let tableSize): "maglev(table: \(tableSize))"
        }
    }
}
