import NIOCore

/// The upstream side of a connection on NIO channels: a pooled HTTP/1.1 connection to the backend or to a peer's
/// cluster port that writes the bytes its ``HTTP1Relay`` gives it and hands back what it reads. It stays on the
/// connection between requests; bytes that arrive then close the connection, which cannot be trusted with another.
final class ByteUpstream: ChannelDuplexHandler, RemovableChannelHandler, ReadGated {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var relay: HTTP1Relay?
    private(set) var context: ChannelHandlerContext?
    var gate = ReadGate()
    private var unflushed = false

    init() {}

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    /// Serves `relay` from now on.
    func bind(_ relay: HTTP1Relay) { self.relay = relay }

    /// Ends the relay's part (it gave the connection up); reads flow again for the pool to notice a close.
    func detach() {
        relay = nil
        resumeReads()
    }

    var isWritable: Bool { context?.channel.isWritable ?? false }

    func write(_ buffer: ByteBuffer) {
        context?.write(wrapOutboundOut(buffer), promise: nil)
        unflushed = true
    }

    /// Flushes what was written since the last flush, if anything.
    func flush() {
        guard unflushed else { return }
        unflushed = false
        context?.flush()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let relay else {
            context.close(promise: nil)
            return
        }
        relay.upstreamBytes(unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        relay?.upstreamReadComplete()
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        relay?.upstreamWritabilityChanged(isWritable: context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        let relay = self.relay
        self.relay = nil
        relay?.upstreamClosed()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func read(context: ChannelHandlerContext) { gatedRead(context: context) }
}
