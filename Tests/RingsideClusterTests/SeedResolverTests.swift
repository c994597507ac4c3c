import NIOCore
import NIOPosix
import Testing

@testable import RingsideCluster

/// A DNS server for one test: answers every query with the SRV records it was given, targets `localhost`.
final class FakeDNSServer: ChannelInboundHandler, Sendable {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    let ports: [Int]

    init(ports: [Int]) { self.ports = ports }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
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
        let server = try await DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(FakeDNSServer(ports: [7401, 7402]))
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        let resolver = SeedResolver(nameserver: server.localAddress)
        let addresses = await resolver.resolve(["dnssrv+_gossip._tcp.ringside.test", "10.1.2.3:7401"])
        try await server.close()
        #expect(addresses.contains { $0.hasSuffix(":7401") && $0 != "10.1.2.3:7401" })
        #expect(addresses.contains { $0.hasSuffix(":7402") })
        #expect(addresses.last == "10.1.2.3:7401")
    }

    @Test func seedsThatDoNotResolveAreSkipped() async {
        let resolver = SeedResolver()
        let addresses = await resolver.resolve(["no-such-host.invalid:7401", "127.0.0.1:7401", "not an address"])
        #expect(addresses == ["127.0.0.1:7401"])
    }
}
