import Testing

@testable import RingsideSharding

@Suite("Hash ring")
struct HashRingTests {
    /// The ring's definition, computed the slow way: for every probe of the key, every token of every owner, the
    /// owner whose token lies nearest clockwise.
    static func bruteForceOwner(_ keyHash: UInt64, peers: [Peer], tokensPerPeer: Int, probes: Int) -> String {
        let owners = peers.filter { $0.state == .participant }
            .sorted { $0.name.utf8.lexicographicallyPrecedes($1.name.utf8) }
        var best: (distance: UInt64, token: UInt64, name: String)?
        for probe in 0..<probes {
            let point = HashRing.probePoint(keyHash, probe) & HashRing.positionMask
            for (index, owner) in owners.enumerated() {
                for seed in 0..<tokensPerPeer {
                    let position = XXHash64.hash(owner.name, seed: UInt64(seed)) & HashRing.positionMask
                    let distance = position &- point
                    let token = position | UInt64(index)
                    // Equal distances fall to the smaller token (earlier owner in name order), then the earlier probe.
                    if best == nil || distance < best!.distance || (distance == best!.distance && token < best!.token) {
                        best = (distance, token, owner.name)
                    }
                }
            }
        }
        return best!.name
    }

    @Test(arguments: [1, 3])
    func indexedLookupMatchesTheDefinition(probes: Int) throws {
        let peers = makePeers(6)
        let ring = try HashRing(peers: peers, tokensPerPeer: 16, probes: probes)
        var hashes = keyHashes(3000) + [0, 1, .max, .max - 1, 1 << 63]
        // Keys that land exactly on a token, and just after one.
        let positions = ring.tokens.dropLast().prefix(20).map { $0 & HashRing.positionMask }
        hashes += positions + positions.map { $0 &+ 0x1_0000 }
        for hash in hashes {
            let expected = Self.bruteForceOwner(hash, peers: peers, tokensPerPeer: 16, probes: probes)
            #expect(try ring.owner(forKeyHash: hash, op: .readWrite).name == expected)
        }
    }

    @Test func tokensAreSortedWithTheSentinelLast() throws {
        let ring = try HashRing(peers: makePeers(40), tokensPerPeer: 100)
        #expect(ring.tokenCount == 4000)
        #expect(ring.tokens.last == .max)
        #expect(zip(ring.tokens, ring.tokens.dropFirst()).allSatisfy { $0 < $1 })
    }

    @Test func radixSortMatchesTheStandardSort() {
        var state: UInt64 = 99
        var values = (0..<5000).map { _ -> UInt64 in
            state = state &* 6_364_136_223_846_793_005 &+ 1
            return state ^ (state >> 29)
        }
        values += [0, .max, 0, 42, 42]
        var sorted = values
        HashRing.radixSort(&sorted)
        #expect(sorted == values.sorted())
    }

    @Test func parametersOutOfRangeAreRejected() {
        #expect(throws: ShardingError.self) { try HashRing(peers: makePeers(2), tokensPerPeer: 0) }
        #expect(throws: ShardingError.self) { try HashRing(peers: makePeers(2), probes: 0) }
        #expect(throws: ShardingError.self) { try MaglevHasher(peers: makePeers(2), tableSize: 4096) }
        #expect(throws: ShardingError.self) { try MaglevHasher(peers: makePeers(12), tableSize: 11) }
    }
}
