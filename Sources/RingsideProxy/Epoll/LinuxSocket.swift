#if os(Linux)
import CEpoll
import Glibc
import NIOCore

/// The few socket calls the relay loops make themselves, on non-blocking, close-on-exec descriptors.
enum LinuxSocket {
    /// What a read or a write came to.
    enum IOResult {
        /// This many bytes moved.
        case bytes(Int)
        /// Nothing can move until the descriptor is ready again.
        case wouldBlock
        /// The peer closed its side (reads only).
        case closed
        /// The call failed with this `errno`.
        case failed(CInt)
    }

    /// A failed socket call, with what it was for.
    struct Failure: Error, CustomStringConvertible {
        var call: String
        var code: CInt
        var description: String { "\(call) failed: \(String(cString: strerror(code))) (errno \(code))" }
    }

    private static let streamFlags =
        Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue)
        | Int32(SOCK_CLOEXEC.rawValue)

    /// A listening socket bound to `address`.
    static func listen(on address: SocketAddress, backlog: CInt) throws -> CInt {
        let fd = socket(CInt(address.protocol.rawValue), streamFlags, 0)
        guard fd >= 0 else { throw Failure(call: "socket", code: errno) }
        do {
            try setOption(fd, SOL_SOCKET, SO_REUSEADDR, 1)
            let bound = address.withSockAddr { bind(fd, $0, socklen_t($1)) }
            guard bound == 0 else { throw Failure(call: "bind to \(address)", code: errno) }
            guard Glibc.listen(fd, backlog) == 0 else { throw Failure(call: "listen", code: errno) }
        } catch {
            Glibc.close(fd)
            throw error
        }
        return fd
    }

    /// What accepting a connection came to.
    enum Accepted {
        /// A connection, with `TCP_NODELAY` set.
        case connection(CInt, peer: SocketAddress?)
        /// None waiting (or one that went away before it was accepted).
        case none
        /// The process or the system is out of descriptors or memory: the listener stays ready and accepting fails
        /// until some are freed.
        case exhausted
    }

    /// Accepts a waiting connection.
    static func accept(_ listener: CInt) -> Accepted {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let fd = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { ringside_accept(listener, $0, &length) }
        }
        guard fd >= 0 else {
            let code = errno
            return code == EMFILE || code == ENFILE || code == ENOBUFS || code == ENOMEM ? .exhausted : .none
        }
        try? setOption(fd, CInt(IPPROTO_TCP), TCP_NODELAY, 1)
        return .connection(fd, peer: address(storage))
    }

    /// Starts connecting to `address`: the descriptor, and whether the connection is made already (loopback can be
    /// that quick); a failure that is known at once throws.
    static func connect(to address: SocketAddress) throws -> (fd: CInt, connected: Bool) {
        let fd = socket(CInt(address.protocol.rawValue), streamFlags, 0)
        guard fd >= 0 else { throw Failure(call: "socket", code: errno) }
        try? setOption(fd, CInt(IPPROTO_TCP), TCP_NODELAY, 1)
        let result = address.withSockAddr { Glibc.connect(fd, $0, socklen_t($1)) }
        if result == 0 { return (fd, true) }
        let code = errno
        guard code == EINPROGRESS else {
            Glibc.close(fd)
            throw Failure(call: "connect to \(address)", code: code)
        }
        return (fd, false)
    }

    /// The error a non-blocking connect ended with, 0 when it succeeded.
    static func pendingError(_ fd: CInt) -> CInt {
        var code: CInt = 0
        var length = socklen_t(MemoryLayout<CInt>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &code, &length) == 0 else { return errno }
        return code
    }

    /// The address `fd` is bound to.
    static func localAddress(_ fd: CInt) -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return result == 0 ? address(storage) : nil
    }

    /// Reads what is waiting into `buffer`'s writable space.
    static func read(_ fd: CInt, into buffer: inout ByteBuffer) -> IOResult {
        var result = 0
        var code: CInt = 0
        repeat {
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 1) { space in
                result = Glibc.read(fd, space.baseAddress, space.count)
                code = result < 0 ? errno : 0
                return max(result, 0)
            }
        } while code == EINTR
        if result < 0 { return code == EAGAIN || code == EWOULDBLOCK ? .wouldBlock : .failed(code) }
        return result == 0 ? .closed : .bytes(result)
    }

    /// Writes as much of `buffers` as the socket takes, in one call.
    static func write(
        _ fd: CInt,
        _ buffers: ArraySlice<ByteBuffer>,
        vectors: UnsafeMutableBufferPointer<iovec>
    ) -> IOResult {
        let count: Int
        if buffers.count == 1 {
            count = buffers.first!.withUnsafeReadableBytes { send(fd, $0.baseAddress, $0.count, CInt(MSG_NOSIGNAL)) }
        } else {
            var used = 0
            for buffer in buffers.prefix(vectors.count) {
                // The pointer outlives the closure, but not the storage: `buffers` holds every buffer, unchanged,
                // until `sendmsg` returns.
                buffer.withUnsafeReadableBytes {
                    vectors[used] = iovec(
                        iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress),
                        iov_len: $0.count
                    )
                }
                used += 1
            }
            var message = msghdr()
            message.msg_iov = vectors.baseAddress
            message.msg_iovlen = used
            count = sendmsg(fd, &message, CInt(MSG_NOSIGNAL))
        }
        guard count >= 0 else {
            let code = errno
            if code == EINTR { return .bytes(0) }
            return code == EAGAIN || code == EWOULDBLOCK ? .wouldBlock : .failed(code)
        }
        return .bytes(count)
    }

    private static func setOption(_ fd: CInt, _ level: CInt, _ name: CInt, _ value: CInt) throws {
        var value = value
        guard setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<CInt>.size)) == 0 else {
            throw Failure(call: "setsockopt", code: errno)
        }
    }

    private static func address(_ storage: sockaddr_storage) -> SocketAddress? {
        var storage = storage
        switch CInt(storage.ss_family) {
        case AF_INET:
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { SocketAddress($0.pointee) }
            }
        case AF_INET6:
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { SocketAddress($0.pointee) }
            }
        default:
            return nil
        }
    }
}
#endif
