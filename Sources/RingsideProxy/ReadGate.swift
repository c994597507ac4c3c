/// Backpressure for a handler: holds the channel's `read()` while closed, and releases the one it held when opened.
///
/// It only decides; the handler issues `context.read()` itself, after the mutation has ended. (Reading can deliver data
/// at once, and the handler may close the gate from inside that delivery.)
///
/// ```swift
/// func read(context: ChannelHandlerContext) { if gate.allowsRead() { context.read() } }
/// func resumeReads() { if gate.open(), let context { context.read() } }
/// ```
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
