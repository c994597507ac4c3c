import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Why a connection failed, in the words of the system ("Connection refused", "cannot resolve HOST") rather than the
/// names of NIO's error types: for answers, logs and the admin commands.
public enum ConnectionFailureText {
    public static func reason(_ error: any Error) -> String {
        if let failure = error as? NIOConnectionError {
            if let first = failure.connectionErrors.first?.error { return reason(first) }
            if failure.dnsAError != nil || failure.dnsAAAAError != nil { return "cannot resolve \(failure.host)" }
        }
        if let failure = error as? IOError { return String(cString: strerror(failure.errnoCode)) }
        if case ChannelError.connectTimeout(let timeout) = error {
            return "no connection within \(timeout.nanoseconds / 1_000_000) ms"
        }
        if let failure = error as? SocketAddressError.UnknownHost { return "cannot resolve \(failure.host)" }
        return "\(error)"
    }
}
