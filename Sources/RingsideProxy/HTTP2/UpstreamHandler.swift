import NIOCore
import NIOHTTP1

/// The upstream side of an exchange, on a pooled backend connection or an HTTP/2 stream to a peer: hands the response
/// to the ``ProxyHandler`` it is bound to and holds its reads while the client cannot take more. It stays on a pooled
/// connection between exchanges, unbound, so that a request does not change the connection's pipeline.
final class UpstreamHandler: ChannelDuplexHandler, RemovableChannelHandler, ReadGated {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    private var proxy: NIOLoopBound<ProxyHandler>?
    private(set) var context: ChannelHandlerContext?
    var gate = ReadGate()

    init() {}

    /// Starts an exchange for `proxy`.
    func bind(_ proxy: NIOLoopBound<ProxyHandler>) {
        self.proxy = proxy
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        proxy?.value.upstreamRead(unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        proxy?.value.upstreamReadComplete()
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        proxy?.value.upstreamWritabilityChanged(isWritable: context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        let proxy = self.proxy
        self.proxy = nil
        proxy?.value.upstreamFailed(nil)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let proxy = self.proxy
        self.proxy = nil
        proxy?.value.upstreamFailed(error)
        context.close(promise: nil)
    }

    func read(context: ChannelHandlerContext) { gatedRead(context: context) }

    /// Ends this handler's part in the exchange: it stops reporting to the proxy, and reads flow again, so that a
    /// reusable connection goes back to its pool ready for the next.
    func detach(reusable: Bool) {
        proxy = nil
        resumeReads()
    }
}
