import NIOCore

/// Guards a client connection at the byte level, in front of the HTTP decoder.
///
/// - A request head (request line and headers) larger than `maxHeaderBytes` is answered 431 and the connection closed,
///   before the decoder has buffered it.
/// - A head that does not arrive whole within `headerTimeout` of its first byte (a slow-loris client) is answered 408
///   and the connection closed.
/// - A keep-alive connection idle for `idleTimeout` between requests is closed.
///
/// It finds the end of a head by its blank line, and learns that a request is over from the proxy handler of the same
/// connection, which calls ``requestCompleted()``.
final class ConnectionGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum State {
        /// Between requests (`bytes == 0`) or inside a head: `bytes` of the head so far, and its last three bytes.
        case awaitingHead(bytes: Int, tail: [UInt8])
        /// The head is complete; the request's body and response are under way.
        case inRequest
        case closing
    }

    private let maxHeaderBytes: Int
    private let headerTimeout: TimeAmount
    private let idleTimeout: TimeAmount
    private var state = State.awaitingHead(bytes: 0, tail: [])
    /// When the current wait began: for a head, its first byte; between requests, the end of the last one. Checked
    /// by one timer a connection, so that a request costs a clock read, not a timer.
    private var waitingSince = NIODeadline.now()
    private var check: RepeatedTask?
    private var context: ChannelHandlerContext?

    init(maxHeaderBytes: Int, headerTimeout: Duration, idleTimeout: Duration) {
        self.maxHeaderBytes = maxHeaderBytes
        self.headerTimeout = TimeAmount(headerTimeout)
        self.idleTimeout = TimeAmount(idleTimeout)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // Added once the first bytes have told HTTP/1.1 from HTTP/2: the channel is usually active already.
        if context.channel.isActive { startChecking(context: context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        check?.cancel()
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        startChecking(context: context)
        context.fireChannelActive()
    }

    private func startChecking(context: ChannelHandlerContext) {
        guard check == nil else { return }
        waitingSince = .now()
        let interval = TimeAmount.nanoseconds(min(headerTimeout, idleTimeout).nanoseconds / 4)
        // The task is cancelled when the connection closes, which ends the cycle it forms with this handler.
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        check = context.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            bound.value.checkDeadlines()
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        check?.cancel()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .awaitingHead(let bytes, let tail) = state else {
            if case .inRequest = state { context.fireChannelRead(data) }
            return
        }
        let buffer = unwrapInboundIn(data)
        if bytes == 0 && buffer.readableBytes > 0 { waitingSince = .now() }
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
            state = .inRequest
        } else {
            let total = bytes + view.count
            guard total <= maxHeaderBytes else { return refuse("431 Request Header Fields Too Large", context) }
            state = .awaitingHead(bytes: total, tail: Array((tail + view).suffix(3)))
        }
        context.fireChannelRead(data)
    }

    /// The proxy has answered a request: the next head is measured from its first byte.
    func requestCompleted() {
        guard case .inRequest = state else { return }
        state = .awaitingHead(bytes: 0, tail: [])
        waitingSince = .now()
    }

    private func checkDeadlines() {
        guard let context, case .awaitingHead(let bytes, _) = state else { return }
        let waited = NIODeadline.now() - waitingSince
        if bytes > 0 && waited >= headerTimeout {
            refuse("408 Request Timeout", context)
        } else if bytes == 0 && waited >= idleTimeout {
            context.close(promise: nil)
        }
    }

    /// Answers with a bare HTTP/1.1 response written from here (below the HTTP encoder) and closes.
    private func refuse(_ status: String, _ context: ChannelHandlerContext) {
        if case .closing = state { return }
        state = .closing
        check?.cancel()
        let body = status + "\n"
        let response =
            "HTTP/1.1 \(status)\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: \(body.utf8.count)\r\n"
            + "connection: close\r\n\r\n\(body)"
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: response))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
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
