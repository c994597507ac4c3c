import Logging
import NIOCore
import NIOHTTP2
import RingsideMembership
import RingsideSharding
import RingsideTestSupport
import Testing

@testable import RingsideCluster

#if canImport(Glibc)
import Glibc
#endif

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
func eventually(timeout: Duration = .seconds(15), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return condition()
}

/// Runs `body` with `count` real nodes on 127.0.0.1, each on a free port, `node-0` the seed of the others; stops
/// them all afterwards.
func withCluster(
    _ count: Int,
    configure: (Int, inout ClusterConfiguration) -> Void = { _, _ in },
    _ body: ([ClusterNode]) async throws -> Void
) async throws {
    func makeNode(_ index: Int, seeds: [String]) -> ClusterNode {
        var configuration = ClusterConfiguration(nodeName: "node-\(index)")
        configuration.listenAddress = "127.0.0.1:0"
        configuration.seeds = seeds
        configure(index, &configuration)
        return ClusterNode(configuration: configuration, logger: Logger(label: "test"))
    }
    try await withThrowingTaskGroup(of: Void.self) { group in
        let seed = makeNode(0, seeds: [])
        group.addTask { try await seed.run() }
        let seedAddress = try await seed.waitUntilRunning()
        var nodes = [seed]
        for index in 1..<count {
            let node = makeNode(index, seeds: [seedAddress])
            nodes.append(node)
            group.addTask { try await node.run() }
        }
        for node in nodes { _ = try await node.waitUntilRunning() }
        let outcome: Result<Void, any Error>
        do {
            try await body(nodes)
            outcome = .success(())
        } catch {
            outcome = .failure(error)
        }
        for node in nodes { await node.stop() }
        try await group.waitForAll()
        try outcome.get()
    }
}

/// A participant, alive at incarnation 1, as another node would gossip it.
func aliveMember(_ name: String, at address: String) -> Member {
    Member(name: name, address: address, incarnation: 1, status: .alive, state: .participant)
}

/// A gossip frame of `node`'s cluster, sent by `sender` from `address`.
func gossipFrame(to node: ClusterNode, from sender: String, at address: String, _ messages: [GossipMessage]) -> [UInt8]
{
    GossipCodec.encode(
        GossipEnvelope(
            clusterName: node.configuration.clusterName,
            senderName: sender,
            senderAddress: address,
            messages: messages
        )
    )
}

/// Whether every node in `observers` sees the member `name` and `check` holds for it.
func everyone(_ observers: [ClusterNode], sees name: String, _ check: (Member) -> Bool) -> Bool {
    observers.allSatisfy { node in node.members.first { $0.name == name }.map(check) ?? false }
}

@Suite("Cluster nodes on loopback", .serialized)
struct ClusterNodeTests {
    @Test func fiveNodesJoinThroughOneSeed() async throws {
        try await withCluster(5) { nodes in
            let joined = await eventually { nodes.allSatisfy { $0.peers.count == 5 } }
            #expect(joined)
            // Every node computes the same owner for every key.
            let owners = Set(nodes.map { try? $0.lookup("customer-42").first?.name })
            #expect(owners.count == 1)
        }
    }

    @Test func aStateChangeIsSeenByAll() async throws {
        try await withCluster(5) { nodes in
            #expect(await eventually { nodes.allSatisfy { $0.peers.count == 5 } })
            try await nodes[2].changeState(to: .terminating)
            #expect(await eventually { everyone(nodes, sees: "node-2") { $0.state == .terminating } })
            // New keys avoid a terminating peer everywhere; reads still reach it.
            for node in nodes {
                let writers = Set((0..<200).compactMap { try? node.lookup("key-\($0)").first?.name })
                #expect(!writers.contains("node-2"))
            }
            await #expect(throws: ShardingError.self) { try await nodes[2].changeState(to: .participant) }
        }
    }

    @Test func idleConnectionsToTheClusterPortAreClosedAndGossipGoesOn() async throws {
        let shortIdle: (Int, inout ClusterConfiguration) -> Void = { $1.idleConnectionTimeout = .milliseconds(100) }
        try await withCluster(3, configure: shortIdle) { nodes in
            #expect(await eventually { nodes.allSatisfy { $0.peers.count == 3 } })
            // A connection that only ever sent the preface: a GOAWAY naming no stream, then the close.
            let address = try #require(HostAndPort(try await nodes[0].waitUntilRunning()))
            let quiet = rawExchange(port: address.port, RawHTTP2.preface, untilClosed: true)
            #expect(quiet.closed)
            #expect(RawHTTP2.goAways(quiet.bytes).contains { $0.lastStream == 0 && $0.code == 0 })
            // The nodes' own connections close between probes (one a second) and open again when next needed.
            try await nodes[1].changeState(to: .terminating)
            #expect(await eventually { everyone(nodes, sees: "node-1") { $0.state == .terminating } })
            #expect(nodes.allSatisfy { node in node.members.allSatisfy { $0.status == .alive } })
        }
    }

    @Test func anHTTP2ConnectionErrorEndsTheConnectionAfterOneGoAway() async throws {
        try await withCluster(1) { nodes in
            let address = try #require(HostAndPort(try await nodes[0].waitUntilRunning()))
            let raw = rawExchange(port: address.port, RawHTTP2.connectionErrorThenJunk, untilClosed: true)
            #expect(raw.closed)
            #expect(RawHTTP2.goAways(raw.bytes).count == 1)
            #expect(RawHTTP2.goAways(raw.bytes).allSatisfy { $0.code != 0 })
        }
    }

    @Test func aNodeThatStopsWithoutLeavingIsDetected() async throws {
        try await withCluster(5) { nodes in
            #expect(await eventually { nodes.allSatisfy { $0.peers.count == 5 } })
            await nodes[3].halt()
            let survivors = nodes.filter { $0.configuration.nodeName != "node-3" }
            #expect(await eventually { everyone(survivors, sees: "node-3") { !$0.status.isActive } })
            #expect(await eventually { survivors.allSatisfy { $0.peers.count == 4 } })
        }
    }

    @Test func aLeavingNodeIsGoneAtOnce() async throws {
        try await withCluster(5) { nodes in
            #expect(await eventually { nodes.allSatisfy { $0.peers.count == 5 } })
            let start = ContinuousClock.now
            await nodes[4].stop()
            let others = Array(nodes.prefix(4))
            #expect(await eventually { everyone(others, sees: "node-4") { $0.status == .left && $0.state == .gone } })
            // The departure is announced, not detected: well inside one probe period.
            #expect(ContinuousClock.now - start < .seconds(2))
        }
    }

    @Test func metadataPropagates() async throws {
        try await withCluster(5) { nodes in
            #expect(await eventually { nodes.allSatisfy { $0.peers.count == 5 } })
            try nodes[1].setMetadata("zone", to: "eu-west-1a")
            #expect(await eventually { everyone(nodes, sees: "node-1") { $0.metadataValues["zone"] == "eu-west-1a" } })
            try nodes[1].deleteMetadata("zone")
            #expect(await eventually { everyone(nodes, sees: "node-1") { $0.metadataValues["zone"] == nil } })
        }
    }

    @Test func aNodeOfAnotherClusterIsRefused() async throws {
        func intruderInStaging(_ index: Int, _ configuration: inout ClusterConfiguration) {
            if index == 3 { configuration.clusterName = "staging" }
        }
        try await withCluster(4, configure: intruderInStaging) { nodes in
            let ringside = Array(nodes.prefix(3))
            #expect(await eventually { ringside.allSatisfy { $0.peers.count == 3 } })
            // Give the intruder's joins time to arrive; it must stay alone, and nobody may learn of it.
            try await Task.sleep(for: .seconds(2))
            #expect(ringside.allSatisfy { node in !node.members.contains { $0.name == "node-3" } })
            #expect(nodes[3].peers.map(\.name) == ["node-3"])
        }
    }

    @Test func updatesCarryTheViewThatIncludesTheEvent() async throws {
        try await withCluster(3) { nodes in
            #expect(await eventually { nodes.allSatisfy { $0.peers.count == 3 } })
            let updates = nodes[0].updates()
            try await nodes[1].changeState(to: .terminating)
            for await update in updates {
                guard case .stateChanged(let member, let from)? = update.event, member.name == "node-1" else {
                    continue
                }
                #expect(from == .participant)
                // The sharder was rebuilt before the event was delivered.
                #expect(update.sharder.peers.first { $0.name == "node-1" }?.state == .terminating)
                break
            }
        }
    }

    @Test func gossipIsTakenOnlyWithinItsConnectionsInflateBudgetAndUnderItsCertificatesName() async throws {
        try await withCluster(1) { nodes in
            let node = nodes[0]
            _ = try await node.waitUntilRunning()
            let members = (0..<500).map { aliveMember("stranger-\($0)", at: "10.0.1.\($0 % 256):7401") }
            let frame = gossipFrame(
                to: node,
                from: "stranger-0",
                at: "10.0.1.0:7401",
                [.pushPull(isResponse: true, isJoin: false, members: members)]
            )
            #expect(frame[1] == 1, "the frame is compressed")
            let poor = InflateBudget(bytesPerWindow: 1000)
            #expect(!node.receive(frame, from: GossipSource(identity: nil, budget: poor)))
            // Under mutual TLS, a certificate for another name cannot speak as stranger-0.
            let budget = InflateBudget()
            let impostor = GossipSource(identity: PeerIdentity(names: ["mallory"]), budget: budget)
            #expect(!node.receive(frame, from: impostor))
            #expect(!node.members.contains { $0.name.hasPrefix("stranger") })
            let honest = GossipSource(identity: PeerIdentity(names: ["stranger-0"]), budget: budget)
            let before = budget.remaining()
            #expect(node.receive(frame, from: honest))
            #expect(budget.remaining() < before - 10_000, "what the frame inflated to is spent")
            // The window comes round again.
            #expect(budget.remaining(now: .now + .seconds(11)) == budget.bytesPerWindow)
        }
    }

    @Test func underMutualTLSAMemberCannotIntroduceOthersOrMoveThem() async throws {
        let ca = try TestCA(directory: TestCA.temporaryDirectory())
        let bundle = try ca.writeBundle()
        let planes = try (0..<2).map { index in
            let files = try ca.issue(["node-\(index)"], file: "node-\(index)")
            return try PlaneTLS.cluster(
                certificate: files.certificate,
                key: files.key,
                ca: bundle,
                logger: Logger(label: "test")
            )
        }
        try await withCluster(2) { index, configuration in
            configuration.tls = planes[index]
        } _: { nodes in
            // The two meet over mutual TLS, each hearing of the other from the other.
            #expect(await eventually { nodes.allSatisfy { $0.peers.count == 2 } })
            let node = nodes[0]
            let honest = try #require(node.members.first { $0.name == "node-1" })
            var moved = honest
            moved.address = "127.0.0.1:1"
            moved.incarnation += 1
            let frame = gossipFrame(
                to: node,
                from: "evil",
                at: "127.0.0.1:3",
                [
                    .alive(aliveMember("ghost", at: "127.0.0.1:2")),
                    .pushPull(isResponse: true, isJoin: false, members: [moved]),
                ]
            )
            // A certificate of the cluster's CA named evil: its own word is taken, its word about others is not.
            let evil = GossipSource(identity: PeerIdentity(names: ["evil"]), budget: InflateBudget())
            #expect(node.receive(frame, from: evil))
            #expect(!node.members.contains { $0.name == "ghost" })
            #expect(node.members.first { $0.name == "node-1" }?.address == honest.address)
        }
    }

    @Test func corruptFramesAreRefusedCountedAndHarmless() async throws {
        try await withCluster(2) { nodes in
            #expect(await eventually { nodes.allSatisfy { $0.peers.count == 2 } })
            let address = try await nodes[0].waitUntilRunning()
            let client = GossipClient(
                group: nodes[0].group,
                connectTimeout: .seconds(1),
                tls: nil,
                logger: Logger(label: "test")
            )
            let (failures, failed) = AsyncStream<Bool>.makeStream()
            for garbage in [[UInt8](), [1, 0, 0xFF], Array(repeating: 0xAB, count: 4096)] {
                client.send(ByteBuffer(bytes: garbage), to: address) { refused in failed.yield(refused) }
            }
            var refusals: [Bool] = []
            for await refused in failures {
                refusals.append(refused)
                if refusals.count == 3 { break }
            }
            await client.shutdown()
            // Answered (400), not refused: the listener is up, the frames were bad.
            #expect(refusals == [false, false, false])
            #expect(nodes[0].statistics.framesDropped == 3)
            try await nodes[1].changeState(to: .terminating)
            #expect(await eventually { everyone(nodes, sees: "node-1") { $0.state == .terminating } })
        }
    }

    @Test func aNodeAloneOwnsEveryKey() async throws {
        try await withCluster(1) { nodes in
            let owners = try nodes[0].lookup("anything").map(\.name)
            #expect(owners == ["node-0"])
        }
    }
}

@Suite("Addresses and DNS answers")
struct AddressTests {
    @Test func hostAndPortParse() {
        #expect(HostAndPort("10.0.0.1:7401") == HostAndPort(host: "10.0.0.1", port: 7401))
        #expect(HostAndPort("[::1]:7401") == HostAndPort(host: "::1", port: 7401))
        #expect(HostAndPort("ringside-0.ringside:0")?.port == 0)
        #expect(HostAndPort("::1:7401") == nil)
        #expect(HostAndPort("host") == nil)
        #expect(HostAndPort("host:70000") == nil)
        #expect(HostAndPort(":7401") == nil)
        #expect(HostAndPort(host: "::1", port: 1).description == "[::1]:1")
    }

    @Test func aWildcardListenerAdvertisesAnAddressOtherMachinesCanDial() throws {
        func addresses(_ texts: [String]) throws -> [SocketAddress] {
            try texts.map { try SocketAddress(ipAddress: $0, port: 0) }
        }
        // Loopback, link-local and the like are passed over; a private IPv4 address wins over a public one.
        let machine = try addresses([
            "127.0.0.1", "::1", "169.254.3.4", "fe80::1", "203.0.113.7", "fd00::2", "10.1.2.3",
        ])
        #expect(AdvertisedHost.choose(among: machine, ipv6: false) == "10.1.2.3")
        #expect(AdvertisedHost.choose(among: machine, ipv6: true) == "10.1.2.3")
        #expect(
            AdvertisedHost.choose(among: try addresses(["172.20.0.5", "192.168.1.9"]), ipv6: false) == "172.20.0.5"
        )
        #expect(
            AdvertisedHost.choose(among: try addresses(["127.0.0.1", "203.0.113.7"]), ipv6: false) == "203.0.113.7"
        )
        #expect(AdvertisedHost.choose(among: try addresses(["2001:db8::5", "fd00::2"]), ipv6: true) == "fd00::2")
        // A listener on 0.0.0.0 cannot be dialled on an IPv6 address.
        #expect(AdvertisedHost.choose(among: try addresses(["::1", "fd00::2"]), ipv6: false) == nil)
        #expect(AdvertisedHost.choose(among: try addresses(["127.0.0.1", "::1", "fe80::1"]), ipv6: true) == nil)
        // A named or specific listener advertises itself.
        #expect(AdvertisedHost.forListener(on: "10.9.8.7") == "10.9.8.7")
        #expect(AdvertisedHost.forListener(on: "ringside-0.ringside") == "ringside-0.ringside")
        #expect(!AdvertisedHost.isWildcard(AdvertisedHost.forListener(on: "0.0.0.0")))
    }

    @Test func aSendThatMeetsAGoAwayIsTriedAgainOnANewConnection() {
        #expect(GossipClient.isConnectionLost(NIOHTTP2Errors.createdStreamAfterGoaway()))
        #expect(GossipClient.isConnectionLost(NIOHTTP2Errors.streamClosed(streamID: 3, errorCode: .refusedStream)))
        #expect(GossipClient.isConnectionLost(ChannelError.eof))
        #expect(!GossipClient.isConnectionLost(IOError(errnoCode: ECONNREFUSED, reason: "connect")))
        #expect(!GossipClient.isConnectionLost(GossipRejectedError(status: nil)))
    }

    @Test func aNodeRefusesToAdvertiseAWildcard() async throws {
        var configuration = ClusterConfiguration(nodeName: "n")
        configuration.listenAddress = "127.0.0.1:0"
        configuration.advertiseAddress = "0.0.0.0:7401"
        let node = ClusterNode(configuration: configuration, logger: Logger(label: "test"))
        let error = await #expect(throws: ClusterError.self) { try await node.run() }
        #expect(error?.code == .invalidAddress)
    }

    /// An SRV answer as a DNS server sends it, with the targets compressed against the question.
    static let srvAnswer: [UInt8] = {
        func name(_ labels: [String]) -> [UInt8] { labels.flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) } + [0] }
        var message: [UInt8] = [0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0]
        message += name(["_gossip", "_tcp", "ringside", "svc"]) + [0, 33, 0, 1]
        for (index, port) in [(0, 7401), (1, 7402)] {
            // "a." (or "b."), then a pointer to "ringside.svc" in the question.
            let target: [UInt8] = [1, UInt8(ascii: "a") + UInt8(index)] + [0xC0, 25]
            message += [0xC0, 12, 0, 33, 0, 1, 0, 0, 0, 30, 0, UInt8(6 + target.count)]
            message += [0, 10, 0, 5, UInt8(port >> 8), UInt8(port & 0xFF)] + target
        }
        return message
    }()

    @Test func srvRecordsAreRead() {
        let records = DNSMessage.srvRecords(in: Self.srvAnswer)
        #expect(records.map(\.target) == ["a.ringside.svc", "b.ringside.svc"])
        #expect(records.map(\.port) == [7401, 7402])
        #expect(records.first?.priority == 10)
    }

    @Test func malformedDNSAnswersGiveNothingAndNeverCrash() {
        var random = SplitMix64(seed: 53)
        for length in 0..<Self.srvAnswer.count {
            _ = DNSMessage.srvRecords(in: Array(Self.srvAnswer.prefix(length)))
        }
        for _ in 0..<5000 {
            var message = Self.srvAnswer
            message[Int(random.next() % UInt64(message.count))] = UInt8(truncatingIfNeeded: random.next())
            _ = DNSMessage.srvRecords(in: message)
        }
        // A compression pointer to itself must not loop.
        #expect(DNSMessage.name(in: [0xC0, 0], at: 0) == nil)
    }

    @Test func namesResolveToEveryAddress() async {
        let resolver = SeedResolver()
        #expect(await resolver.resolve(["127.0.0.1:7401", "localhost:7402", "bad entry"]).contains("127.0.0.1:7401"))
        #expect(await resolver.resolve(["localhost:7402"]).contains { $0.hasSuffix(":7402") })
    }
}
