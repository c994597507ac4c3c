/// Rendezvous, or highest-random-weight, hashing (Thaler and Ravishankar, 1996).
///
/// Every owner scores every key, `avalanche(keyHash ^ xxHash64(name))`; the highest score owns the key, the next
/// highest is the second replica, and so on. Balance and movement are as good as the key hash allows and there is no
/// table to build, but a lookup costs one score per owner, so it suits clusters of tens of peers rather than
/// thousands.
public struct RendezvousHasher: Sharder {
    let table: PeerTable
    /// `xxHash64(name)` of each owner, in the order of `table.owners`.
    let nameHashes: [UInt64]

    /// Builds the hasher for `peers`. Fails when two peers share a name.
    public init(peers: [Peer]) throws(ShardingError) {
        table = try PeerTable(peers)
        nameHashes = table.owners.map { XXHash64.hash($0.name) }
    }

    public var peers: [Peer] { table.all }
    public var checksum: UInt64 { table.checksum }
    public func eligibleCount(for op: ShardingOperation) -> Int { table.eligibleCount(for: op) }

    public func owner(forKeyHash keyHash: UInt64, op: ShardingOperation) throws(ShardingError) -> Peer {
        try table.checkEnoughOwners(replicas: 1, op: op)
        var best = -1
        var bestScore: UInt64 = 0
        for (index, nameHash) in nameHashes.enumerated() where table.owners[index].state.owns(for: op) {
            let score = Self.score(keyHash, nameHash)
            // Ties (a 2^-64 event) go to the owner earlier in name order, so every process agrees.
            if best < 0 || score > bestScore {
                best = index
                bestScore = score
            }
        }
        return table.owners[best]
    }

    public func owners(forKeyHash keyHash: UInt64, replicas: Int, op: ShardingOperation) throws(ShardingError) -> [Peer]
    {
        try table.checkEnoughOwners(replicas: replicas, op: op)
        // The top `replicas` scores, best first, kept by insertion: replica counts are small.
        var top: [(score: UInt64, index: Int)] = []
        top.reserveCapacity(replicas + 1)
        for (index, nameHash) in nameHashes.enumerated() where table.owners[index].state.owns(for: op) {
            let score = Self.score(keyHash, nameHash)
            if top.count == replicas, let last = top.last, score <= last.score { continue }
            var slot = top.count
            while slot > 0 && top[slot - 1].score < score { slot -= 1 }
            top.insert((score, index), at: slot)
            if top.count > replicas { top.removeLast() }
        }
        return top.map { table.owners[$0.index] }
    }

    @inline(__always)
    static func score(_ keyHash: UInt64, _ nameHash: UInt64) -> UInt64 {
        XXHash64.avalanche(keyHash ^ nameHash)
    }
}
