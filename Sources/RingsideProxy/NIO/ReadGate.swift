import NIOCore

/// Backpressure for a handler: holds the channel's `read()` while closed, and releases the one it held when opened.
///
/// It only decides; the handler issues `context.read()` itself, after the mutation has ended. (Reading can deliver data
/// at once, and the handler may close the gate from inside that delivery.) ``ReadGated`` does this for a handler.
struct ReadGate {
    private var closed = false
    private var readPending = false

    /// Whether to pass a read on now; a read asked for while closed is held.
    mutating func allowsRead() -> Bool {
        if closed {
            readPending = true
            return false
        }
        return true
    }

    /// Holds reads from now on.
    mutating func close() { closed = true }

    /// Lets reads through again; true when a held read should be issued now.
    mutating func open() -> Bool {
        guard closed else { return false }
        closed = false
        defer { readPending = false }
        return readPending
    }
}

/// A channel handler whose reads a ``ReadGate`` holds back. It keeps the gate and its context, and implements
/// `read(context:)` as `gatedRead(context:)`; it gets ``pauseReads()`` and ``resumeReads()``.
protocol ReadGated: AnyObject {
    var gate: ReadGate { get set }
    /// The handler's context while it is in a pipeline.
    var context: ChannelHandlerContext? { get }
}

extension ReadGated {
    /// For `read(context:)`: passes the read on unless the gate holds it.
    func gatedRead(context: ChannelHandlerContext) {
        if gate.allowsRead() { context.read() }
    }

    /// Holds reads from now on.
    func pauseReads() { gate.close() }

    /// Lets reads through again, and issues the one held back (after the gate's mutation has ended).
    func resumeReads() {
        if gate.open(), let context { context.read() }
    }
}
