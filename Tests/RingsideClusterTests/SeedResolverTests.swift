import Logging
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import RingsideCluster

/// A DNS server for one test: answers every query with SRV records for `ports` (which the test may change), targets
/// `localhost`.
final class FakeDNSServer: ChannelInboundHandler, Sendable {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    let portsNow: Mutex<[Int]>
    /// How many queries it has answered.
    let queries = Atomic(0)

    init(ports: [Int]) { self.portsNow = Mutex(ports) }

    /// Starts a server on a free port of 127.0.0.1.
    static func start(ports: [Int]) async throws -> (server: FakeDNSServer, channel: any Channel) {
        let server = FakeDNSServer(ports: ports)
        let channel = try await DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(server) }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        return (server, channel)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        let ports = portsNow.withLock { $0 }
        queries.add(1, ordering: .relaxed)
        let query = Array(envelope.data.readableBytesView)
        guard query.count > 12, let (_, end) = DNSMessage.name(in: query, at: 12), end + 4 <= query.count else {
            return
        }
        var answer: [UInt8] = [query[0], query[1], 0x81, 0x80, 0, 1, 0, UInt8(ports.count), 0, 0, 0, 0]
        answer += query[12..<(end + 4)]
        for port in ports {
            let target: [UInt8] = [9] + Array("localhost".utf8) + [0]
            answer += [0xC0, 12, 0, 33, 0, 1, 0, 0, 0, 30, 0, UInt8(6 + target.count)]
            answer += [0, 1, 0, 1, UInt8(port >> 8), UInt8(port & 0xFF)] + target
        }
        let reply = AddressedEnvelope(remoteAddress: envelope.remoteAddress, data: ByteBuffer(bytes: answer))
        context.writeAndFlush(wrapOutboundOut(reply), promise: nil)
    }
}

@Suite("Seed resolution")
struct SeedResolverTests {
    @Test func srvSeedsResolveThroughTheNameserver() async throws {
        let (_, server) = try await FakeDNSServer.start(ports: [7401, 7402])
        let resolver = SeedResolver(nameserver: server.localAddress)
        let addresses = await resolver.resolve(["dnssrv+_gossip._tcp.ringside.test", "10.1.2.3:7401"])
        try await server.close()
        #expect(addresses.contains { $0.hasSuffix(":7401") && $0 != "10.1.2.3:7401" })
        #expect(addresses.contains { $0.hasSuffix(":7402") })
        #expect(addresses.last == "10.1.2.3:7401")
    }

    @Test func aNodeWhoseSeedsResolveToNothingYetTriesAgainWithinSeconds() async throws {
        let (dns, dnsChannel) = try await FakeDNSServer.start(ports: [])
        try await withCluster(1) { nodes in
            let seedPort = try #require(HostAndPort(try await nodes[0].waitUntilRunning())).port
            var configuration = ClusterConfiguration(nodeName: "late")
            configuration.listenAddress = "127.0.0.1:0"
            configuration.seeds = ["dnssrv+_gossip._tcp.ringside.test"]
            let late = ClusterNode(
                configuration: configuration,
                group: MultiThreadedEventLoopGroup.singleton,
                logger: Logger(label: "test"),
                resolver: SeedResolver(nameserver: dnsChannel.localAddress)
            )
            async let running: Void = late.run()
            _ = try await late.waitUntilRunning()
            // The DNS lists nobody at first (a new cluster whose nodes all start at once), then the seed.
            #expect(await eventually { dns.queries.load(ordering: .relaxed) > 0 })
            dns.portsNow.withLock { $0 = [seedPort] }
            // Well before the 30 s rejoin interval.
            #expect(await eventually(timeout: .seconds(10)) { late.members.count == 2 && nodes[0].members.count == 2 })
            await late.stop()
            try await running
        }
        try await dnsChannel.close()
    }

    @Test func seedsThatDoNotResolveAreSkipped() async {
        let resolver = SeedResolver()
        let addresses = await resolver.resolve(["no-such-host.invalid:7401", "127.0.0.1:7401", "not an address"])
        #expect(addresses == ["127.0.0.1:7401"])
    }
}
