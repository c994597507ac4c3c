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
    private let timeout: TimeAmount?
    private var buffered: ByteBuffer?
    private var deadline: Scheduled<Void>?

    /// A sniffer that calls `http1` or `http2` (on the channel's event loop) to set the pipeline up. With a `timeout`,
    /// a connection that has not told which it speaks by then (it sent nothing, or part of the preface) is closed.
    public init(
        timeout: TimeAmount? = nil,
        http1: @escaping (any Channel) throws -> Void,
        http2: @escaping (any Channel) throws -> Void
    ) {
        self.timeout = timeout
        self.http1 = http1
        self.http2 = http2
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { startClock(context) }
    }

    public func channelActive(context: ChannelHandlerContext) {
        startClock(context)
        context.fireChannelActive()
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
    }

    private func startClock(_ context: ChannelHandlerContext) {
        guard let timeout, deadline == nil else { return }
        let channel = context.channel
        deadline = context.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
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
    /// that `makeHandler` makes for it. A connection error ends the connection once its GOAWAY is out
    /// (``GoAwayWatcher``). With an `idleTimeout`, a connection with no open stream for that long is sent a GOAWAY and
    /// closed (see ``HTTP2IdleTimer``). `maxHeaderListSize` is the largest header block a client may send
    /// (advertised in SETTINGS; NIO's default is 16 KiB). A `ChannelShouldQuiesceEvent` (a drain) is handled by
    /// swift-nio-http2's `NIOHTTP2ServerConnectionManagementHandler`: a GOAWAY, a PING, the GOAWAY that names the last
    /// stream taken, and the close once the streams under way are done.
    public static func configureHTTP2Streams(
        _ channel: any Channel,
        idleTimeout: TimeAmount? = nil,
        maxHeaderListSize: Int? = nil,
        handler makeHandler: @escaping @Sendable () -> any ChannelHandler
    ) throws {
        let timer = idleTimeout.map { HTTP2IdleTimer(channel: channel, timeout: $0) }
        try channel.pipeline.syncOperations.addHandler(GoAwayWatcher())
        var connection = NIOHTTP2Handler.ConnectionConfiguration()
        if let maxHeaderListSize {
            connection.initialSettings.removeAll { $0.parameter == .maxHeaderListSize }
            connection.initialSettings.append(HTTP2Setting(parameter: .maxHeaderListSize, value: maxHeaderListSize))
        }
        // The manager learns of streams through the handler's stream delegate (an inline multiplexer keeps stream
        // events to itself).
        let manager = NIOHTTP2ServerConnectionManagementHandler(
            eventLoop: channel.eventLoop,
            configuration: .init(maxIdleTime: nil, maxAge: nil, maxGraceTime: nil, keepalive: nil)
        )
        let handler = NIOHTTP2Handler(
            mode: .server,
            eventLoop: channel.eventLoop,
            connectionConfiguration: connection,
            streamConfiguration: .init(),
            streamDelegate: manager.http2StreamDelegate,
            inboundStreamInitializer: { stream in
                stream.eventLoop.makeCompletedFuture {
                    timer?.opened(stream)
                    try stream.pipeline.syncOperations.addHandlers([
                        HTTP2FramePayloadToHTTP1ServerCodec(), makeHandler(),
                    ])
                }
            }
        )
        try channel.pipeline.syncOperations.addHandler(handler)
        try channel.pipeline.syncOperations.addHandler(manager)
        timer?.arm()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        buffered = nil
        context.fireChannelInactive()
    }
}

/// Closes an HTTP/2 connection once it has had no open stream for a while, as an idle HTTP/1.1 keep-alive connection is
/// closed: a GOAWAY naming the last stream it took (so a client that was opening another knows to retry it
/// elsewhere), then the close. Without it, a client that opened a connection and went quiet held it for good, and so
/// did one whose headers broke a connection rule: NIO answers that with a GOAWAY but leaves the connection open.
///
/// Everything here runs on the connection's event loop.
final class HTTP2IdleTimer: @unchecked Sendable {
    private let channel: any Channel
    private let timeout: TimeAmount
    private var open = 0
    private var lastStream = HTTP2StreamID(0)
    private var expiry: Scheduled<Void>?

    init(channel: any Channel, timeout: TimeAmount) {
        self.channel = channel
        self.timeout = timeout
        channel.closeFuture.whenComplete { _ in self.disarm() }
    }

    /// A stream opened: the connection is not idle until it and any others have closed.
    func opened(_ stream: any Channel) {
        channel.eventLoop.preconditionInEventLoop()
        open += 1
        if let id = try? stream.syncOptions?.getOption(HTTP2StreamChannelOptions.streamID), id > lastStream {
            lastStream = id
        }
        disarm()
        stream.closeFuture.whenComplete { _ in
            self.open -= 1
            if self.open == 0 { self.arm() }
        }
    }

    /// Starts the wait for the idle connection's end.
    func arm() {
        channel.eventLoop.preconditionInEventLoop()
        disarm()
        guard channel.isActive else { return }
        expiry = channel.eventLoop.scheduleTask(in: timeout) { self.expire() }
    }

    private func disarm() {
        expiry?.cancel()
        expiry = nil
    }

    private func expire() {
        expiry = nil
        guard open == 0, channel.isActive else { return }
        let goAway = HTTP2Frame(
            streamID: .rootStream,
            payload: .goAway(lastStreamID: lastStream, errorCode: .noError, opaqueData: nil)
        )
        let channel = self.channel
        channel.writeAndFlush(goAway).whenComplete { _ in channel.close(promise: nil) }
    }
}
