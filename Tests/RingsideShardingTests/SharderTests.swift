import RingsideSharding
import Testing

/// Peers named like a StatefulSet's pods, all participants unless told otherwise.
func makePeers(_ count: Int, state: PeerState = .participant) -> [Peer] {
    (0..<count).map { Peer(name: "ringside-\($0)", address: "10.0.0.\($0):7401", state: state) }
}

/// The hashes of `count` distinct keys, the same every run.
func keyHashes(_ count: Int) -> [UInt64] {
    (0..<count).map { ShardKey.hash("key-\($0)") }
}

/// A shuffle driven by a seed, so a failing order can be replayed.
func shuffled<T>(_ values: [T], seed: UInt64) -> [T] {
    var state = seed
    var result = values
    for index in result.indices.reversed() where index > 0 {
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        result.swapAt(index, Int((state >> 33) % UInt64(index + 1)))
    }
    return result
}

@Suite("Every sharder")
struct SharderTests {
    static let algorithms: [ShardingAlgorithm] = [
        .default,
        .ring(tokensPerPeer: 64, probes: 1),
        .rendezvous,
        .maglev(tableSize: 4099),
    ]

    /// The sharders whose second owner takes over exactly when the first leaves.
    static let promoting: [ShardingAlgorithm] = [.default, .ring(tokensPerPeer: 64, probes: 1), .rendezvous]

    @Test(arguments: algorithms)
    func sameAnswerWhateverTheInsertionOrder(_ algorithm: ShardingAlgorithm) throws {
        let peers = makePeers(12)
        let reference = try algorithm.makeSharder(peers: peers)
        for seed in 1...3 as ClosedRange<UInt64> {
            let other = try algorithm.makeSharder(peers: shuffled(peers, seed: seed))
            #expect(other.checksum == reference.checksum)
            #expect(other.peers == reference.peers)
            for hash in keyHashes(2000) {
                let expected = try reference.owners(forKeyHash: hash, replicas: 3, op: .readWrite)
                #expect(try other.owners(forKeyHash: hash, replicas: 3, op: .readWrite) == expected)
            }
        }
    }

    @Test(arguments: algorithms)
    func duplicateNamesAreRejected(_ algorithm: ShardingAlgorithm) {
        var peers = makePeers(3)
        peers.append(Peer(name: "ringside-1", address: "10.0.0.9:7401", state: .viewer))
        let error = #expect(throws: ShardingError.self) { try algorithm.makeSharder(peers: peers) }
        #expect(error?.code == .duplicatePeerName)
        #expect(error?.message.contains("ringside-1") == true)
    }

    @Test(arguments: algorithms)
    func onlyEligibleStatesOwnKeys(_ algorithm: ShardingAlgorithm) throws {
        let peers = [
            Peer(name: "viewer", address: "a:1", state: .viewer),
            Peer(name: "participant-a", address: "b:1", state: .participant),
            Peer(name: "participant-b", address: "c:1", state: .participant),
            Peer(name: "terminating", address: "d:1", state: .terminating),
            Peer(name: "gone", address: "e:1", state: .gone),
        ]
        let sharder = try algorithm.makeSharder(peers: peers)
        var readOwners: Set<String> = []
        for hash in keyHashes(3000) {
            let writeOwner = try sharder.owner(forKeyHash: hash, op: .readWrite)
            #expect(writeOwner.state == .participant)
            let readOwner = try sharder.owner(forKeyHash: hash, op: .read)
            #expect(readOwner.state == .participant || readOwner.state == .terminating)
            readOwners.insert(readOwner.name)
            #expect(
                Set(try sharder.owners(forKeyHash: hash, replicas: 3, op: .read).map(\.state)).isSubset(of: [
                    .participant, .terminating,
                ])
            )
        }
        // A terminating peer still owns its share for reads.
        #expect(readOwners == ["participant-a", "participant-b", "terminating"])

        let error = #expect(throws: ShardingError.self) { try sharder.lookup("k", replicas: 3, op: .readWrite) }
        #expect(error?.code == .notEnoughPeers)
        #expect(error?.message.contains("need at least 3, have 2") == true)
        #expect(try sharder.lookup("k", replicas: 3, op: .read).count == 3)
    }

    @Test(arguments: algorithms)
    func readWriteIgnoresTerminatingPeersExactly(_ algorithm: ShardingAlgorithm) throws {
        var peers = makePeers(8)
        peers[3].state = .terminating
        peers[5].state = .terminating
        let withTerminating = try algorithm.makeSharder(peers: peers)
        let participantsOnly = try algorithm.makeSharder(peers: peers.filter { $0.state == .participant })
        for hash in keyHashes(3000) {
            #expect(
                try withTerminating.owner(forKeyHash: hash, op: .readWrite).name
                    == participantsOnly.owner(forKeyHash: hash, op: .readWrite).name
            )
            #expect(
                try withTerminating.owners(forKeyHash: hash, replicas: 3, op: .readWrite).map(\.name)
                    == participantsOnly.owners(forKeyHash: hash, replicas: 3, op: .readWrite).map(\.name)
            )
        }
    }

    @Test(arguments: algorithms)
    func edgeCases(_ algorithm: ShardingAlgorithm) throws {
        let empty = try algorithm.makeSharder(peers: [])
        let noPeers = #expect(throws: ShardingError.self) { try empty.owner(of: "k") }
        #expect(noPeers?.code == .notEnoughPeers)
        #expect(noPeers?.message.contains("need at least 1, have 0") == true)

        let viewersOnly = try algorithm.makeSharder(peers: makePeers(3, state: .viewer))
        #expect(throws: ShardingError.self) { try viewersOnly.owner(of: "k", op: .read) }

        let single = try algorithm.makeSharder(peers: makePeers(1))
        for hash in keyHashes(500) {
            #expect(try single.owner(forKeyHash: hash, op: .readWrite).name == "ringside-0")
        }

        let three = try algorithm.makeSharder(peers: makePeers(3))
        let tooMany = #expect(throws: ShardingError.self) { try three.lookup("k", replicas: 4) }
        #expect(tooMany?.message.contains("need at least 4, have 3") == true)
        let zero = #expect(throws: ShardingError.self) { try three.lookup("k", replicas: 0) }
        #expect(zero?.code == .invalidArgument)
        #expect(Set(try three.lookup("k", replicas: 3).map(\.name)).count == 3)
    }

    @Test(arguments: algorithms)
    func ownersAreDistinctAndStartWithTheFirstOwner(_ algorithm: ShardingAlgorithm) throws {
        let sharder = try algorithm.makeSharder(peers: makePeers(20))
        for hash in keyHashes(1000) {
            let all = try sharder.owners(forKeyHash: hash, replicas: 20, op: .readWrite)
            #expect(Set(all.map(\.name)).count == 20)
            #expect(try sharder.owner(forKeyHash: hash, op: .readWrite) == all[0])
            #expect(try sharder.owners(forKeyHash: hash, replicas: 3, op: .readWrite) == Array(all.prefix(3)))
        }
    }

    @Test(arguments: promoting)
    func removingTheFirstOwnerPromotesTheSecond(_ algorithm: ShardingAlgorithm) throws {
        let peers = makePeers(10)
        let sharder = try algorithm.makeSharder(peers: peers)
        for hash in keyHashes(1000) {
            let before = try sharder.owners(forKeyHash: hash, replicas: 3, op: .readWrite).map(\.name)
            let without = try algorithm.makeSharder(peers: peers.filter { $0.name != before[0] })
            #expect(
                try without.owners(forKeyHash: hash, replicas: 2, op: .readWrite).map(\.name)
                    == Array(before.dropFirst())
            )
        }
    }

    @Test(arguments: algorithms)
    func sharesAreRoughlyEven(_ algorithm: ShardingAlgorithm) throws {
        let sharder = try algorithm.makeSharder(peers: makePeers(10))
        var counts: [String: Int] = [:]
        let hashes = keyHashes(100_000)
        for hash in hashes { counts[try sharder.owner(forKeyHash: hash, op: .readWrite).name, default: 0] += 1 }
        #expect(counts.count == 10)
        // Loose on purpose: the benchmark reports the real figure (1.03 for the default); this catches a broken
        // sharder, not an unlucky one.
        let peakToMean = Double(counts.values.max()!) / (Double(hashes.count) / 10)
        #expect(peakToMean < 1.3)
    }

    @Test(arguments: algorithms)
    func aJoiningPeerTakesAboutItsShare(_ algorithm: ShardingAlgorithm) throws {
        let peers = makePeers(10)
        let before = try algorithm.makeSharder(peers: peers)
        let after = try algorithm.makeSharder(peers: makePeers(11))
        var moved = 0
        var movedElsewhere = 0
        let hashes = keyHashes(50_000)
        for hash in hashes {
            let old = try before.owner(forKeyHash: hash, op: .readWrite).name
            let new = try after.owner(forKeyHash: hash, op: .readWrite).name
            if old != new {
                moved += 1
                if new != "ringside-10" { movedElsewhere += 1 }
            }
        }
        let optimal = Double(hashes.count) / 11
        #expect(Double(moved) > 0.5 * optimal && Double(moved) < 2 * optimal)
        if Self.promoting.contains(algorithm) {
            // Minimal movement: every key that moves, moves to the newcomer.
            #expect(movedElsewhere == 0)
        }
    }
}
