import NIOCore
import NIOHTTP1
import NIOHTTP2

/// Tells an HTTP/2 connection with prior knowledge (it opens with the 24-byte preface, RFC 9113 §3.4) from an HTTP/1.1
/// one by its first bytes, sets the pipeline up for it, and steps aside. Both the app plane and the cluster port use it.
public final class ProtocolSniffer: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer

    static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    private let http1: (any Channel) throws -> Void
    private let http2: (any Channel) throws -> Void
    private var buffered: ByteBuffer?

    /// A sniffer that calls `http1` or `http2` (on the channel's event loop) to set the pipeline up.
    public init(http1: @escaping (any Channel) throws -> Void, http2: @escaping (any Channel) throws -> Void) {
        self.http1 = http1
        self.http2 = http2
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if var buffered {
            buffered.writeBuffer(&incoming)
            self.buffered = buffered
        } else {
            buffered = incoming
        }
        guard let bytes = buffered else { return }
        let seen = Array(bytes.readableBytesView.prefix(Self.preface.count))
        // Wait for more only while what came so far could still be the start of the preface.
        if seen.count < Self.preface.count && Self.preface.starts(with: seen) { return }
        let isHTTP2 = seen == Self.preface
        do {
            if isHTTP2 { try http2(context.channel) } else { try http1(context.channel) }
        } catch {
            context.close(promise: nil)
            return
        }
        self.buffered = nil
        context.fireChannelRead(wrapInboundOut(bytes))
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    /// Sets `channel` up as an HTTP/2 server connection (h2c) whose every stream speaks HTTP/1-style parts to a handler
    /// that `makeHandler` makes for it.
    public static func configureHTTP2Streams(
        _ channel: any Channel,
        handler makeHandler: @escaping @Sendable () -> any ChannelHandler
    ) throws {
        _ = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
            mode: .server,
            connectionConfiguration: .init(),
            streamConfiguration: .init(),
            inboundStreamInitializer: { stream in
                stream.eventLoop.makeCompletedFuture {
                    try stream.pipeline.syncOperations.addHandlers([
                        HTTP2FramePayloadToHTTP1ServerCodec(), makeHandler(),
                    ])
                }
            }
        )
    }

    public func channelInactive(context: ChannelHandlerContext) {
        buffered = nil
        context.fireChannelInactive()
    }
}
