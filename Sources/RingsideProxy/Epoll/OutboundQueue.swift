#if os(Linux)
import CEpoll
import NIOCore

/// Bytes waiting to be written to one socket of a relay loop, in the order they were queued: what the socket did not
/// take goes out when it is writable again.
struct OutboundQueue {
    /// How many buffers one write gathers.
    static let gather = 16

    private var buffers: [ByteBuffer] = []
    /// The first buffer not fully written (earlier ones are done and wait to be dropped).
    private var first = 0
    /// Bytes queued and not written yet.
    private(set) var bytes = 0

    var isEmpty: Bool { bytes == 0 }

    mutating func append(_ buffer: ByteBuffer) {
        guard buffer.readableBytes > 0 else { return }
        bytes += buffer.readableBytes
        buffers.append(buffer)
    }

    /// What writing to `fd` came to.
    enum Flush {
        /// Everything queued is written.
        case done
        /// The socket took what it could; the rest waits for it to be writable.
        case wouldBlock
        /// The write failed with this `errno`: the connection is broken.
        case failed(CInt)
    }

    /// Writes what is queued to `fd` until it is all written or the socket takes no more.
    mutating func flush(to fd: CInt, vectors: UnsafeMutableBufferPointer<iovec>) -> Flush {
        while bytes > 0 {
            switch LinuxSocket.write(fd, buffers[first...], vectors: vectors) {
            case .bytes(var written):
                bytes -= written
                while written > 0 {
                    let head = buffers[first].readableBytes
                    if written >= head {
                        written -= head
                        first += 1
                    } else {
                        buffers[first].moveReaderIndex(forwardBy: written)
                        written = 0
                    }
                }
            case .wouldBlock, .closed:
                compact()
                return .wouldBlock
            case .failed(let code):
                return .failed(code)
            }
        }
        buffers.removeAll(keepingCapacity: true)
        first = 0
        return .done
    }

    /// Drops everything queued.
    mutating func removeAll() {
        buffers.removeAll()
        first = 0
        bytes = 0
    }

    private mutating func compact() {
        guard first > 0 else { return }
        buffers.removeFirst(first)
        first = 0
    }
}
#endif
