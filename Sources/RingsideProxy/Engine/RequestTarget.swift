import NIOCore
import NIOHTTP1

/// The forms of a request's target (RFC 9112 §3.2) a reverse proxy serves, read from its bytes.
///
/// An upstream is sent origin form only: an absolute-form target (`GET http://host/path`, which clients send to a
/// proxy) becomes its path, and its authority the request's `Host`, as RFC 9112 §3.2.2 tells a server to take it. A
/// backend that honoured the `Host` line the client also sent would otherwise answer for another host than this
/// proxy routed and logged.
enum RequestTarget: Equatable {
    /// `/path?query`, passed on as it came.
    case origin
    /// `*`, for OPTIONS only.
    case asterisk
    /// `http://authority/path?query` (or `https://`): the upstream gets `path` (`/` before it when it is empty or
    /// starts with `?`) and `Host: authority`.
    case absolute(authority: Range<Int>, path: Range<Int>)
    /// None of these: the reason, for a 400.
    case invalid(String)

    /// Reads the target `bytes[range]`.
    static func parse(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> RequestTarget {
        guard let first = range.first else { return .invalid("an empty request target") }
        if bytes[first] == UInt8(ascii: "/") { return .origin }
        if range.count == 1 && bytes[first] == UInt8(ascii: "*") { return .asterisk }
        var authorityStart = first
        if HTTP1Parsing.equals(bytes, first..<min(first + 7, range.upperBound), "http://") {
            authorityStart = first + 7
        } else if HTTP1Parsing.equals(bytes, first..<min(first + 8, range.upperBound), "https://") {
            authorityStart = first + 8
        } else {
            return .invalid("a request target that is neither a path nor an http or https URL")
        }
        var authorityEnd = authorityStart
        while authorityEnd < range.upperBound, bytes[authorityEnd] != UInt8(ascii: "/"),
            bytes[authorityEnd] != UInt8(ascii: "?")
        {
            let byte = bytes[authorityEnd]
            // userinfo (RFC 9110 §4.2.4) and fragments have no place in a request.
            guard byte != UInt8(ascii: "@"), byte != UInt8(ascii: "#") else {
                return .invalid("a request target URL with user information or a fragment")
            }
            authorityEnd += 1
        }
        guard authorityEnd > authorityStart else { return .invalid("a request target URL without a host") }
        return .absolute(authority: authorityStart..<authorityEnd, path: authorityEnd..<range.upperBound)
    }

    /// Writes the origin-form path of an absolute target: `bytes[path]`, after a `/` when it needs one.
    static func writePath(_ bytes: UnsafeRawBufferPointer, _ path: Range<Int>, into out: inout ByteBuffer) {
        if path.isEmpty || bytes[path.lowerBound] != UInt8(ascii: "/") { out.writeStaticString("/") }
        out.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[path]))
    }

    /// Checks a decoded request head's method, target and `Host` (RFC 9112 §3.2) and puts an absolute-form target
    /// in origin form with its authority as the only `Host`. Returns why the request is refused, or nil.
    ///
    /// The relay's byte-level path applies the same rules in ``HeadRewriter``.
    static func check(_ head: inout HTTPRequestHead) -> (status: HTTPResponseStatus, message: String)? {
        if head.method == .CONNECT { return (.notImplemented, connectRefusal) }
        let hosts = head.headers["host"].count
        if hosts > 1 { return (.badRequest, moreThanOneHost) }
        if hosts == 0 && head.version == .http1_1 { return (.badRequest, noHost) }
        // Origin form, the common case, without copying the target.
        if head.uri.utf8.first == UInt8(ascii: "/") { return nil }
        let uri = Array(head.uri.utf8)
        let target = uri.withUnsafeBytes { parse($0, 0..<$0.count) }
        switch target {
        case .origin:
            return nil
        case .asterisk:
            return head.method == .OPTIONS ? nil : (.badRequest, asteriskRefusal)
        case .invalid(let reason):
            return (.badRequest, reason)
        case .absolute(let authority, let path):
            uri.withUnsafeBytes { bytes in
                var origin = ByteBuffer()
                writePath(bytes, path, into: &origin)
                head.uri = String(buffer: origin)
                head.headers.replaceOrAdd(
                    name: "host",
                    value: String(decoding: UnsafeRawBufferPointer(rebasing: bytes[authority]), as: UTF8.self)
                )
            }
            return nil
        }
    }

    static let connectRefusal = "CONNECT is not served: Ringside is a reverse proxy, not a tunnel"
    static let moreThanOneHost = "a request with more than one Host"
    static let noHost = "an HTTP/1.1 request without Host"
    static let asteriskRefusal = "the request target * is for OPTIONS only"
}
