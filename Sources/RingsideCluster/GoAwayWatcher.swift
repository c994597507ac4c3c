import NIOCore

/// Ends an HTTP/2 server connection once it has sent a GOAWAY for an error. NIO's HTTP/2 handler answers a connection
/// error (a flood of PINGs, CONTINUATIONs or resets, DATA on an idle stream, a malformed frame) with a GOAWAY but leaves
/// the connection open: every byte the client sent afterwards was kept, and answered with another GOAWAY. Here the
/// first such GOAWAY stops the reading, whatever arrives after it is dropped, and the connection closes once the GOAWAY
/// is written (or after a second at the most). A GOAWAY without an error (an idle connection's, a drain's) is left to
/// whoever sent it.
///
/// It sits between the socket and the HTTP/2 handler and reads the frame headers of what goes out.
final class GoAwayWatcher: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// What is being read of the outbound frames.
    private var header: [UInt8] = []
    private var payloadLeft = 0
    private var goAwayPayload: [UInt8]?
    private var failed = false

    /// How long the GOAWAY has to go out before the connection closes regardless.
    static let grace = TimeAmount.seconds(1)

    init() {}

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard !failed, scan(unwrapOutboundIn(data)) else {
            context.write(data, promise: promise)
            return
        }
        failed = true
        _ = context.channel.setOption(.autoRead, value: false)
        let written = promise ?? context.eventLoop.makePromise()
        context.write(data, promise: written)
        let channel = context.channel
        written.futureResult.whenComplete { _ in channel.close(promise: nil) }
        context.eventLoop.scheduleTask(in: Self.grace) { channel.close(promise: nil) }
    }

    /// Reads the frames in `buffer`; true when one of them is a GOAWAY with an error code.
    private func scan(_ buffer: ByteBuffer) -> Bool {
        var bytes = buffer.readableBytesView[...]
        while !bytes.isEmpty {
            if payloadLeft > 0 {
                let take = min(payloadLeft, bytes.count)
                if var payload = goAwayPayload, payload.count < 8 {
                    payload += bytes.prefix(min(take, 8 - payload.count))
                    goAwayPayload = payload
                    if payload.count == 8 {
                        let code = payload[4...].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
                        if code != 0 { return true }
                    }
                }
                payloadLeft -= take
                bytes = bytes.dropFirst(take)
                continue
            }
            let take = min(9 - header.count, bytes.count)
            header += bytes.prefix(take)
            bytes = bytes.dropFirst(take)
            guard header.count == 9 else { continue }
            payloadLeft = Int(header[0]) << 16 | Int(header[1]) << 8 | Int(header[2])
            goAwayPayload = header[3] == 0x7 ? [] : nil
            header.removeAll(keepingCapacity: true)
        }
        return false
    }
}
