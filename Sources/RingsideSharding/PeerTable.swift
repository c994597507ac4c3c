/// The validated peer set that every sharder starts from: all peers in name order, the ones that can own keys, and
/// the checks that every lookup makes.
struct PeerTable: Sendable {
    /// Every peer, sorted by the bytes of its name.
    let all: [Peer]
    /// The peers that own keys for reads (participant and terminating), in name order. Sharders refer to owners by
    /// their index here.
    let owners: [Peer]
    /// How many of `owners` are participants, and so own keys for read-write.
    let participantCount: Int
    /// The view's identity: xxHash64 of every name and state in order.
    let checksum: UInt64

    init(_ peers: [Peer]) throws(ShardingError) {
        let sorted = peers.sorted { $0.name.utf8.lexicographicallyPrecedes($1.name.utf8) }
        var checksumInput: [UInt8] = []
        for (index, peer) in sorted.enumerated() {
            if index > 0, sorted[index - 1].name.utf8.elementsEqual(peer.name.utf8) {
                throw ShardingError(
                    code: .duplicatePeerName,
                    message: "two peers are named \"\(peer.name)\": peer names must be unique within a cluster"
                )
            }
            checksumInput.append(contentsOf: peer.name.utf8)
            checksumInput.append(0)
            checksumInput.append(peer.state.rawValue)
        }
        self.all = sorted
        self.owners = sorted.filter { $0.state.owns(for: .read) }
        self.participantCount = owners.count(where: { $0.state == .participant })
        self.checksum = XXHash64.hash(checksumInput)
    }

    /// Whether some owner owns keys for reads only, so that read and read-write lookups can differ.
    var hasTerminating: Bool { participantCount < owners.count }

    /// How many peers own keys for `op`.
    func eligibleCount(for op: ShardingOperation) -> Int {
        op == .read ? owners.count : participantCount
    }

    /// Fails unless `replicas` is positive and at most the number of peers that own keys for `op`.
    func checkEnoughOwners(replicas: Int, op: ShardingOperation) throws(ShardingError) {
        guard replicas >= 1 else {
            throw .invalidArgument("a lookup needs at least one replica, not \(replicas)")
        }
        let have = eligibleCount(for: op)
        guard replicas <= have else {
            throw .notEnoughPeers(needed: replicas, have: have, op: op)
        }
    }
}

/// Collects the first `replicas` distinct owner indices offered to it, in the order offered.
struct DistinctOwners {
    private(set) var picked: [Int] = []
    private let replicas: Int
    /// A bitmap of owners seen, only for large replica counts; a handful of picks is checked by scanning.
    private var seen: [Bool]

    init(replicas: Int, ownerCount: Int) {
        self.replicas = replicas
        picked.reserveCapacity(replicas)
        seen = replicas > 8 ? [Bool](repeating: false, count: ownerCount) : []
    }

    /// Offers an owner; returns true once `replicas` distinct owners have been picked.
    mutating func offer(_ owner: Int) -> Bool {
        if seen.isEmpty {
            if !picked.contains(owner) { picked.append(owner) }
        } else if !seen[owner] {
            seen[owner] = true
            picked.append(owner)
        }
        return picked.count == replicas
    }
}
