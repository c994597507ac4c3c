import NIOCore

/// Guards a client connection at the byte level, in front of the HTTP decoder.
///
/// - A request head (request line and headers) larger than `maxHeaderBytes` is answered 431 and the connection closed,
///   before the decoder has buffered it.
/// - A head that does not arrive whole within `headerTimeout` of its first byte (a slow-loris client) is answered 408
///   and the connection closed.
/// - A keep-alive connection idle for `idleTimeout` between requests is closed.
///
/// It finds the end of a head by its blank line, and learns that a request is over from ``RequestCompleted``, which the
/// proxy sends down the pipeline.
final class ConnectionGuard: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Sent by the proxy when it has answered a request, so that the next head is measured from its first byte.
    struct RequestCompleted: Sendable {}

    private enum State {
        /// Between requests or inside a head: `bytes` of the head so far, and its last three bytes.
        case awaitingHead(bytes: Int, tail: [UInt8])
        /// The head is complete; the request's body and response are under way.
        case inRequest
        case closing
    }

    private let maxHeaderBytes: Int
    private let headerTimeout: TimeAmount
    private let idleTimeout: TimeAmount
    private var state = State.awaitingHead(bytes: 0, tail: [])
    private var timer: Scheduled<Void>?
    private var context: ChannelHandlerContext?

    init(maxHeaderBytes: Int, headerTimeout: Duration, idleTimeout: Duration) {
        self.maxHeaderBytes = maxHeaderBytes
        self.headerTimeout = TimeAmount(headerTimeout)
        self.idleTimeout = TimeAmount(idleTimeout)
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelActive(context: ChannelHandlerContext) {
        arm(idleTimeout, context: context, answer: nil)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .awaitingHead(let bytes, let tail) = state else {
            if case .inRequest = state { context.fireChannelRead(data) }
            return
        }
        let buffer = unwrapInboundIn(data)
        if bytes == 0 && buffer.readableBytes > 0 {
            arm(headerTimeout, context: context, answer: "408 Request Timeout")
        }
        let view = buffer.readableBytesView
        let window = tail + view.prefix(3)
        var headLength: Int?
        if let index = Self.blankLine(in: window) {
            headLength = index + 4 - tail.count
        } else if let index = Self.blankLine(in: view) {
            headLength = index + 4
        }
        if let headLength {
            guard bytes + headLength <= maxHeaderBytes else {
                return refuse("431 Request Header Fields Too Large", context)
            }
            timer?.cancel()
            state = .inRequest
        } else {
            let total = bytes + view.count
            guard total <= maxHeaderBytes else { return refuse("431 Request Header Fields Too Large", context) }
            state = .awaitingHead(bytes: total, tail: Array((tail + view).suffix(3)))
        }
        context.fireChannelRead(data)
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        if event is RequestCompleted {
            if case .inRequest = state {
                state = .awaitingHead(bytes: 0, tail: [])
                arm(idleTimeout, context: context, answer: nil)
            }
            promise?.succeed()
        } else {
            context.triggerUserOutboundEvent(event, promise: promise)
        }
    }

    private func arm(_ delay: TimeAmount, context: ChannelHandlerContext, answer: String?) {
        timer?.cancel()
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: delay) { [weak self] in
            guard let self, let context = self.context else { return }
            if let answer, case .awaitingHead = self.state {
                self.refuse(answer, context)
            } else if case .awaitingHead(0, _) = self.state {
                context.close(promise: nil)
            }
        }
    }

    /// Answers with a bare HTTP/1.1 response written from here (below the HTTP encoder) and closes.
    private func refuse(_ status: String, _ context: ChannelHandlerContext) {
        guard !Self.isClosing(state) else { return }
        state = .closing
        timer?.cancel()
        let body = status + "\n"
        let response =
            "HTTP/1.1 \(status)\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: \(body.utf8.count)\r\n"
            + "connection: close\r\n\r\n\(body)"
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: response))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    private static func isClosing(_ state: State) -> Bool {
        if case .closing = state { true } else { false }
    }

    /// The index of the first `\r\n\r\n` in `bytes`.
    static func blankLine<Bytes: Collection<UInt8>>(in bytes: Bytes) -> Int? where Bytes.Index == Int {
        guard bytes.count >= 4 else { return nil }
        var index = bytes.startIndex
        while index + 3 < bytes.endIndex {
            if bytes[index] == 13, bytes[index + 1] == 10, bytes[index + 2] == 13, bytes[index + 3] == 10 {
                return index - bytes.startIndex
            }
            index += 1
        }
        return nil
    }
}
