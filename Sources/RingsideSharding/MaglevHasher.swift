/// Maglev hashing (Eisenbud et al., NSDI 2016; Envoy's `MAGLEV` load balancer).
///
/// Each owner walks its own permutation of a prime-sized table, `(offset + j·skip) mod M` with offset and skip from
/// xxHash64 of its name, and the owners take turns claiming the next free slot of their permutation until the table
/// is full. A key belongs to the owner of slot `hash mod M`; further replicas are the next distinct owners in the
/// table. Shares are within `N/M` of even and a lookup is one table read, but a membership change also moves some
/// keys between peers that stayed (more so as `N/M` grows), which the ring and rendezvous never do.
public struct MaglevHasher: Sharder {
    /// The table size when none is given: the prime Envoy uses.
    public static let defaultTableSize = 65_537

    let table: PeerTable
    /// The number of slots, a prime.
    public let tableSize: Int
    /// Owner index per slot, over participants and terminating peers.
    let readSlots: [UInt32]
    /// Owner index per slot, over participants only: the same array as `readSlots` when nobody is terminating.
    let readWriteSlots: [UInt32]

    /// Builds the table for `peers`.
    ///
    /// Fails when two peers share a name, `tableSize` is not a prime, or there are more owners than slots.
    public init(peers: [Peer], tableSize: Int = MaglevHasher.defaultTableSize) throws(ShardingError) {
        guard tableSize >= 2, tableSize <= 1 << 31, Self.isPrime(tableSize) else {
            throw .invalidArgument("a Maglev table size must be a prime between 2 and 2^31, not \(tableSize)")
        }
        let table = try PeerTable(peers)
        guard table.owners.count <= tableSize else {
            throw .invalidArgument(
                "a Maglev table of \(tableSize) slots cannot hold \(table.owners.count) owners: use a larger prime"
            )
        }
        self.table = table
        self.tableSize = tableSize
        let everyOwner = Array(table.owners.indices)
        readSlots = Self.populate(owners: table.owners, indices: everyOwner, tableSize: tableSize)
        if table.hasTerminating {
            let participants = everyOwner.filter { table.owners[$0].state == .participant }
            readWriteSlots = Self.populate(owners: table.owners, indices: participants, tableSize: tableSize)
        } else {
            readWriteSlots = readSlots
        }
    }

    public var peers: [Peer] { table.all }
    public var checksum: UInt64 { table.checksum }
    public func eligibleCount(for op: ShardingOperation) -> Int { table.eligibleCount(for: op) }

    public func owner(forKeyHash keyHash: UInt64, op: ShardingOperation) throws(ShardingError) -> Peer {
        try table.checkEnoughOwners(replicas: 1, op: op)
        let slots = op == .read ? readSlots : readWriteSlots
        return table.owners[Int(slots[slot(of: keyHash)])]
    }

    public func owners(forKeyHash keyHash: UInt64, replicas: Int, op: ShardingOperation) throws(ShardingError) -> [Peer]
    {
        try table.checkEnoughOwners(replicas: replicas, op: op)
        let slots = op == .read ? readSlots : readWriteSlots
        // Further replicas are the next distinct owners in the table; every owner has at least one slot.
        var picker = DistinctOwners(replicas: replicas, ownerCount: table.owners.count)
        var position = slot(of: keyHash)
        while !picker.offer(Int(slots[position])) {
            position = position + 1 == slots.count ? 0 : position + 1
        }
        return picker.picked.map { table.owners[$0] }
    }

    @inline(__always)
    func slot(of keyHash: UInt64) -> Int { Int(truncatingIfNeeded: keyHash % UInt64(tableSize)) }

    /// Fills the table by letting `indices` (owner indices, in name order) claim slots in turn.
    static func populate(owners: [Peer], indices: [Int], tableSize: Int) -> [UInt32] {
        guard !indices.isEmpty else { return [] }
        let size = UInt64(tableSize)
        var offsets: [UInt64] = []
        var skips: [UInt64] = []
        for index in indices {
            offsets.append(XXHash64.hash(owners[index].name, seed: 0x6D61_676C) % size)
            skips.append(XXHash64.hash(owners[index].name, seed: 0x736B_6970) % (size - 1) + 1)
        }
        let empty = UInt32.max
        var slots = [UInt32](repeating: empty, count: tableSize)
        var next = [UInt64](repeating: 0, count: indices.count)
        var filled = 0
        while true {
            for (turn, owner) in indices.enumerated() {
                var candidate = (offsets[turn] &+ next[turn] &* skips[turn]) % size
                while slots[Int(candidate)] != empty {
                    next[turn] &+= 1
                    candidate = (offsets[turn] &+ next[turn] &* skips[turn]) % size
                }
                slots[Int(candidate)] = UInt32(owner)
                next[turn] &+= 1
                filled += 1
                if filled == tableSize { return slots }
            }
        }
    }

    static func isPrime(_ value: Int) -> Bool {
        guard value >= 2 else { return false }
        var divisor = 2
        while divisor * divisor <= value {
            if value % divisor == 0 { return false }
            divisor += 1
        }
        return true
    }
}
