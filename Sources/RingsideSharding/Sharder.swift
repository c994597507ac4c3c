/// Decides which peers own a key.
///
/// A sharder is an immutable snapshot built from one set of peers. Lookups read it without a lock, so a cluster node
/// builds a new sharder off the hot path when membership changes and publishes it whole. The same peers (names and
/// states) give the same answers in every process, whatever order they were listed in.
public protocol Sharder: Sendable {
    /// Every peer the snapshot was built from, sorted by the bytes of their names.
    var peers: [Peer] { get }

    /// Identifies the view the snapshot was built from: equal for equal sets of names and states.
    var checksum: UInt64 { get }

    /// How many peers own keys for `op`: the most replicas a lookup can return.
    func eligibleCount(for op: ShardingOperation) -> Int

    /// The first owner of the key whose hash is `keyHash`. Allocates nothing.
    func owner(forKeyHash keyHash: UInt64, op: ShardingOperation) throws(ShardingError) -> Peer

    /// The first `replicas` distinct owners of the key whose hash is `keyHash`, in order of preference.
    func owners(forKeyHash keyHash: UInt64, replicas: Int, op: ShardingOperation) throws(ShardingError) -> [Peer]
}

extension Sharder {
    /// The first `replicas` distinct owners of `key`, in order of preference.
    ///
    /// Fails with ``ShardingError/Code/notEnoughPeers`` when fewer than `replicas` peers own keys for `op`.
    @inlinable
    public func lookup(
        _ key: String,
        replicas: Int = 1,
        op: ShardingOperation = .readWrite
    ) throws(ShardingError) -> [Peer] {
        try owners(forKeyHash: ShardKey.hash(key), replicas: replicas, op: op)
    }

    /// The first owner of `key`. Allocates nothing.
    @inlinable
    public func owner(of key: String, op: ShardingOperation = .readWrite) throws(ShardingError) -> Peer {
        try owner(forKeyHash: ShardKey.hash(key), op: op)
    }
}

/// How shard keys become positions: xxHash64 with seed 0 over the key's UTF-8 bytes.
public enum ShardKey {
    /// The hash of a shard key, as every sharder uses it.
    @inlinable
    public static func hash(_ key: String) -> UInt64 { XXHash64.hash(key) }

    /// The hash of a shard key given as raw bytes (a header value, say).
    @inlinable
    public static func hash(_ key: UnsafeRawBufferPointer) -> UInt64 { XXHash64.hash(key) }
}

extension Sharder {
    /// Each owner's share of the key space for `op` (0 to 1, summing to 1), measured at `samples` key hashes spread
    /// evenly over the 64-bit hash space: what a status page draws and a gauge exports. Empty when no peer owns keys.
    public func keyShares(samples: Int = 4096, op: ShardingOperation = .readWrite) -> [String: Double] {
        guard samples > 0, eligibleCount(for: op) > 0 else { return [:] }
        var counts: [String: Int] = [:]
        let step = UInt64.max / UInt64(samples)
        for index in 0..<UInt64(samples) {
            // The middle of each slice, so that no sample sits on slice 0's edge.
            guard let owner = try? owner(forKeyHash: index &* step &+ step / 2, op: op) else { continue }
            counts[owner.name, default: 0] += 1
        }
        return counts.mapValues { Double($0) / Double(samples) }
    }
}
