import NIOCore

/// A client connection on NIO channels: the cluster port's forwarded requests, and the app plane where the epoll
/// driver does not run (`app-io: nio`, other platforms). The engine (``HTTP1Connection``) decides everything; this
/// driver feeds it what the channel reads, performs its actions on the channel and one pooled upstream connection
/// (``ByteUpstream``), and holds reads while the other side cannot take more.
final class HTTP1Relay: ChannelDuplexHandler, RemovableChannelHandler, ReadGated {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var engine: HTTP1Connection
    private let upstreams: any UpstreamProvider
    private(set) var context: ChannelHandlerContext?
    var gate = ReadGate()
    private var timer: RepeatedTask?
    /// The upstream connection the engine holds, if any.
    private var upstream: (lease: UpstreamLease, handler: ByteUpstream)?
    /// The connection asked for last; a lease that arrives for an older one is given back.
    private var connectGeneration = 0
    private var connectOutstanding = false
    /// Whether bytes were written to the client since the last flush.
    private var clientUnflushed = false
    private var upstreamWritable = true
    private var closing = false

    /// A relay for `channel`, whose first bytes have told it is HTTP/1.1.
    init(settings: RelaySettings, upstreams: any UpstreamProvider, channel: any Channel) {
        engine = HTTP1Connection(
            settings: settings,
            client: channel.remoteAddress,
            local: channel.localAddress,
            sniffsHTTP2: false,
            allocator: channel.allocator,
            now: .now()
        )
        self.upstreams = upstreams
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // Added once the first bytes have told HTTP/1.1 from HTTP/2: the channel is usually active already.
        if context.channel.isActive { startTimer(context: context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        startTimer(context: context)
        context.fireChannelActive()
    }

    private func startTimer(context: ChannelHandlerContext) {
        guard timer == nil else { return }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let interval = engine.settings.checkInterval
        // Cancelled when the connection closes, which ends the cycle with this handler.
        timer = context.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            bound.value.tick()
        }
    }

    // MARK: Client events

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        engine.clientBytes(unwrapInboundIn(data), now: .now())
        perform()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushClient()
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            upstream?.handler.resumeReads()
        } else {
            upstream?.handler.pauseReads()
        }
        context.fireChannelWritabilityChanged()
    }

    /// A drain (``ConnectionTracker/quiesce()``): the engine closes after the response under way, or now when idle;
    /// when the listener closes, a connection not used yet closes too.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case is ChannelShouldQuiesceEvent:
            engine.drain(now: .now())
        case is ListenerClosingEvent:
            engine.drain(now: .now(), closingUnused: true)
        default:
            context.fireUserInboundEventTriggered(event)
            return
        }
        perform()
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        engine.clientClosed(now: .now())
        perform()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    private func tick() {
        engine.tick(now: .now())
        perform()
    }

    // MARK: The engine's actions

    /// Performs what the engine asked for, then flushes both ways and sets the client's reads.
    private func perform() {
        guard let context else { return }
        while let action = engine.nextAction() {
            switch action {
            case .writeClient(let bytes):
                context.write(wrapOutboundOut(bytes), promise: nil)
                clientUnflushed = true
            case .connect(let route, let fresh):
                connect(route, fresh: fresh, on: context.eventLoop)
            case .writeUpstream(let bytes):
                upstream?.handler.write(bytes)
            case .releaseUpstream(let reusable):
                releaseUpstream(reusable: reusable)
            case .closeClient:
                close(context)
            case .handOffHTTP2:
                // The sniffer in front has told HTTP/2 apart already.
                close(context)
            }
        }
        upstream?.handler.flush()
        flushClient()
        if engine.readsClient && upstreamWritable && !closing { resumeReads() } else { pauseReads() }
    }

    private func connect(_ route: ProxyRoute, fresh: Bool, on eventLoop: any EventLoop) {
        connectGeneration += 1
        let generation = connectGeneration
        connectOutstanding = true
        // The callback holds the relay strongly (until the lease or the connect timeout), never weakly: a weak
        // reference would move the relay's reference count to a side table and slow every retain of it.
        upstreams.leaseBytes(route, on: eventLoop, fresh: fresh).hop(to: eventLoop).assumeIsolated()
            .whenComplete { result in
                guard self.connectOutstanding, self.connectGeneration == generation else {
                    // Not used: it goes back (to a request waiting for one, when the upstream is at its bound).
                    if case .success(let lease) = result { lease.release(true) }
                    return
                }
                self.connectOutstanding = false
                switch result {
                case .success(let lease):
                    guard let handler = try? lease.channel.pipeline.syncOperations.handler(type: ByteUpstream.self)
                    else {
                        lease.release(false)
                        self.engine.upstreamConnectFailed(ChannelError.ioOnClosedChannel, now: .now())
                        break
                    }
                    handler.bind(self)
                    self.upstream = (lease, handler)
                    self.upstreamWritable = handler.isWritable
                    self.engine.upstreamConnected(reused: lease.reused, now: .now())
                case .failure(let error):
                    self.engine.upstreamConnectFailed(error, now: .now())
                }
                self.perform()
            }
    }

    private func releaseUpstream(reusable: Bool) {
        connectOutstanding = false
        upstreamWritable = true
        guard let upstream else { return }
        self.upstream = nil
        upstream.handler.detach()
        upstream.lease.release(reusable)
    }

    private func close(_ context: ChannelHandlerContext) {
        guard !closing else { return }
        closing = true
        timer?.cancel()
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0))).assumeIsolated()
            .whenComplete { _ in context.close(promise: nil) }
    }

    private func flushClient() {
        guard clientUnflushed, let context else { return }
        clientUnflushed = false
        context.flush()
    }

    // MARK: Upstream events (from ByteUpstream, on this event loop)

    func upstreamBytes(_ bytes: ByteBuffer) {
        engine.upstreamBytes(bytes, now: .now())
        perform()
    }

    func upstreamReadComplete() { flushClient() }

    func upstreamWritabilityChanged(isWritable: Bool) {
        upstreamWritable = isWritable
        if isWritable, engine.readsClient, !closing { resumeReads() } else if !isWritable { pauseReads() }
    }

    func upstreamClosed() {
        if let upstream {
            self.upstream = nil
            upstream.lease.release(false)
        }
        upstreamWritable = true
        engine.upstreamClosed(now: .now())
        perform()
    }

    // MARK: Backpressure

    func read(context: ChannelHandlerContext) { gatedRead(context: context) }
}
