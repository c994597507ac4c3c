/// Consistent hashing on a ring of tokens, looked up from several probes (multi-probe consistent hashing, Appleton and
/// O'Reilly, 2015). With one probe it is the classic ring of ketama, Envoy's ring hash and grafana/ckit.
///
/// Each owner places `tokensPerPeer` tokens on a 64-bit ring at `xxHash64(name, seed: i)` for `i` in
/// `0..<tokensPerPeer`. A key is hashed to `probes` points on the ring (the key hash itself, then
/// `avalanche(keyHash &+ j·φ)`), and owners are ranked by the distance clockwise from any probe to their nearest
/// token: the first owner is the one whose token follows some probe most closely, the second replica the next
/// distinct owner in that order, and so on.
///
/// - Movement is minimal: a joining peer only adds tokens, so a key changes owner only when one of the new tokens is
///   now nearest, and then it moves to the new peer. When a peer leaves, its keys go to the owner that was already
///   second for them.
/// - Balance: a peer's share is the sum of the arcs its tokens win, whose spread falls with tokens × probes. Probes
///   buy balance without memory: 512 tokens and 4 probes balance better than 1024 tokens and one probe, in half the
///   table (README, "Choosing the sharder").
/// - Read-write lookups skip the tokens of terminating peers. That gives exactly the ring built from participants
///   alone, because a token's place depends only on its owner's name.
///
/// Finding the token after a probe is O(1): a table indexed by the top bits of the hash points at the few tokens
/// that can follow it.
public struct HashRing: Sharder {
    /// The largest number of peers that can own keys on one ring (the owner index lives in 16 bits of a token).
    public static let maximumOwners = 0xFFFF
    /// Tokens per peer when none is given.
    public static let defaultTokensPerPeer = 512
    /// Probes per key when none is given.
    public static let defaultProbes = 4

    let table: PeerTable
    /// How many tokens each owner has on the ring.
    public let tokensPerPeer: Int
    /// How many points on the ring each key is looked up from.
    public let probes: Int
    /// Sorted tokens: the top 48 bits are the position on the ring, the low 16 bits the owner's index. One sentinel,
    /// `UInt64.max`, follows the last token (see `firstToken`); `tokenCount` excludes it.
    let tokens: [UInt64]
    /// The number of tokens on the ring.
    var tokenCount: Int { tokens.count - 1 }
    /// `bucketStart[b]` is the index of the first token whose top bits (the bucket) are at least `b`.
    let bucketStart: [UInt32]
    /// How far to shift a hash right to get its bucket.
    let bucketShift: UInt64

    /// Builds the ring for `peers`.
    ///
    /// Fails when two peers share a name, `tokensPerPeer` is outside `1...65536`, `probes` is outside `1...64`, or more
    /// than ``maximumOwners`` peers own keys.
    public init(
        peers: [Peer],
        tokensPerPeer: Int = HashRing.defaultTokensPerPeer,
        probes: Int = HashRing.defaultProbes
    ) throws(ShardingError) {
        guard (1...65_536).contains(tokensPerPeer) else {
            throw .invalidArgument("a ring needs between 1 and 65536 tokens per peer, not \(tokensPerPeer)")
        }
        guard (1...64).contains(probes) else {
            throw .invalidArgument("a ring lookup takes between 1 and 64 probes, not \(probes)")
        }
        let table = try PeerTable(peers)
        guard table.owners.count <= Self.maximumOwners else {
            throw .invalidArgument(
                "a ring holds at most \(Self.maximumOwners) key-owning peers, not \(table.owners.count)"
            )
        }
        self.table = table
        self.tokensPerPeer = tokensPerPeer
        self.probes = probes
        self.tokens = Self.sortedTokens(owners: table.owners, tokensPerPeer: tokensPerPeer)
        (self.bucketStart, self.bucketShift) = Self.bucketIndex(tokens: tokens)
    }

    public var peers: [Peer] { table.all }
    public var checksum: UInt64 { table.checksum }
    public func eligibleCount(for op: ShardingOperation) -> Int { table.eligibleCount(for: op) }

    public func owner(forKeyHash keyHash: UInt64, op: ShardingOperation) throws(ShardingError) -> Peer {
        try table.checkEnoughOwners(replicas: 1, op: op)
        let skipTerminating = op == .readWrite && table.hasTerminating
        let owner = tokens.withUnsafeBufferPointer { tokens in
            bucketStart.withUnsafeBufferPointer { starts in
                var bestOwner = 0
                var bestDistance = UInt64.max
                for probe in 0..<probes {
                    let point = Self.probePoint(keyHash, probe)
                    var position = Self.firstToken(atOrAfter: point, tokens: tokens, starts: starts, shift: bucketShift)
                    if skipTerminating {
                        while table.owners[Self.owner(of: tokens[position])].state != .participant {
                            position = position + 1 == tokens.count - 1 ? 0 : position + 1
                        }
                    }
                    let distance = Self.distance(from: point, to: tokens[position])
                    if distance < bestDistance {
                        bestDistance = distance
                        bestOwner = Self.owner(of: tokens[position])
                    }
                }
                return bestOwner
            }
        }
        return table.owners[owner]
    }

    public func owners(forKeyHash keyHash: UInt64, replicas: Int, op: ShardingOperation) throws(ShardingError) -> [Peer]
    {
        try table.checkEnoughOwners(replicas: replicas, op: op)
        // Merge the clockwise walks from every probe by distance; an owner's first appearance is its rank.
        var picker = DistinctOwners(replicas: replicas, ownerCount: table.owners.count)
        withUnsafeTemporaryAllocation(of: (point: UInt64, position: Int, steps: Int).self, capacity: probes) { walks in
            for probe in 0..<probes {
                let point = Self.probePoint(keyHash, probe)
                walks.initializeElement(at: probe, to: (point, firstToken(atOrAfter: point), 0))
            }
            while true {
                var nearest = -1
                var nearestDistance = UInt64.max
                for probe in 0..<probes where walks[probe].steps < tokenCount {
                    let distance = Self.distance(from: walks[probe].point, to: tokens[walks[probe].position])
                    if nearest < 0 || distance < nearestDistance {
                        nearest = probe
                        nearestDistance = distance
                    }
                }
                // Every owner has a token, so a full turn from any probe meets all of them; `nearest` is never -1
                // before enough owners are picked. The check keeps the loop finite regardless.
                guard nearest >= 0 else { return }
                let owner = Self.owner(of: tokens[walks[nearest].position])
                if table.owners[owner].state.owns(for: op), picker.offer(owner) { return }
                walks[nearest].position = walks[nearest].position + 1 == tokenCount ? 0 : walks[nearest].position + 1
                walks[nearest].steps += 1
            }
        }
        return picker.picked.map { table.owners[$0] }
    }

    /// The index of the first token at or after `point`, wrapping to 0.
    func firstToken(atOrAfter point: UInt64) -> Int {
        tokens.withUnsafeBufferPointer { tokens in
            bucketStart.withUnsafeBufferPointer { starts in
                Self.firstToken(atOrAfter: point, tokens: tokens, starts: starts, shift: bucketShift)
            }
        }
    }

    @inline(__always)
    static func firstToken(
        atOrAfter point: UInt64,
        tokens: UnsafeBufferPointer<UInt64>,
        starts: UnsafeBufferPointer<UInt32>,
        shift: UInt64
    ) -> Int {
        // Tokens compare by position first; clearing the point's low 16 bits makes a token at the same position
        // compare as "at or after", whatever its owner bits.
        let floor = point & positionMask
        let bucket = Int(truncatingIfNeeded: point &>> shift)
        var index = Int(starts[bucket])
        let end = Int(starts[bucket &+ 1])
        if end &- index <= 2 {
            // Most buckets hold at most two tokens: step over them without branches, which the CPU cannot predict
            // here. The sentinel after the last token keeps `tokens[index]` readable when `index == end`.
            index &+= (index < end ? 1 : 0) & (tokens[index] < floor ? 1 : 0)
            index &+= (index < end ? 1 : 0) & (tokens[index] < floor ? 1 : 0)
        } else {
            while index < end && tokens[index] < floor { index &+= 1 }
        }
        return index == tokens.count &- 1 ? 0 : index
    }

    /// The point of probe `probe` for a key: the key hash itself for the first, well-mixed offsets of it after that.
    @inline(__always)
    static func probePoint(_ keyHash: UInt64, _ probe: Int) -> UInt64 {
        probe == 0 ? keyHash : XXHash64.avalanche(keyHash &+ UInt64(truncatingIfNeeded: probe) &* 0x9E37_79B9_7F4A_7C15)
    }

    /// How far clockwise `token` lies from `point`, in positions of the ring.
    @inline(__always)
    static func distance(from point: UInt64, to token: UInt64) -> UInt64 {
        (token & positionMask) &- (point & positionMask)
    }

    @inline(__always)
    static func owner(of token: UInt64) -> Int { Int(truncatingIfNeeded: token & 0xFFFF) }

    static let positionMask: UInt64 = ~0xFFFF
}
