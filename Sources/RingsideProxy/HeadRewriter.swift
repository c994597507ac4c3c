import NIOCore
import NIOHTTP1

/// What a request head asks of the relay, read by ``HeadRewriter``.
enum RequestDecision {
    /// The general pipeline serves it: HTTP/1.0, a chunked or `Expect` body, a protocol upgrade.
    case handOff
    /// Answered here, without an upstream; `closing` closes the connection after the answer.
    case refuse(status: Int, message: String, headers: [(String, String)], closing: Bool)
    /// Proxied as planned.
    case forward(RequestPlan)
}

/// A request on its way to an upstream.
struct RequestPlan {
    /// The owners to try, best first.
    var routes: [ProxyRoute]
    /// The upstream head without the route's headers (``HeadRewriter/routeLines(_:into:)``) and the final blank line.
    var head: ByteBuffer
    var idempotent: Bool
    /// False for HEAD: the response has no body whatever its fields say.
    var expectsBody: Bool
    var clientKeepAlive: Bool
    /// The `Content-Length` of the request body (0 without one).
    var bodyLength: Int
    /// The time the request may take: this node's limit, or less if the node that forwarded it has less left.
    var budget: TimeAmount
}

/// The relay's work on heads, for one client connection and apart from how its bytes travel: reads a request head,
/// routes it and writes the upstream's head in one pass; rewrites response heads; words the relay's own answers.
///
/// Kept lines are copied as they came (``LineRuns``); hop-by-hop and internal fields stay behind, and this proxy's
/// own are added: `Via`, `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Request-Id` towards the upstream (and `Host`, from
/// an absolute-form target), `Via` and `X-Ringside-Node` towards the client.
struct HeadRewriter {
    let settings: RelaySettings
    /// The fields of the head parsed last.
    private(set) var fields: [HeaderField] = []
    private var members: [Range<Int>] = []
    private var requestNumber: UInt64 = 0
    /// `x-request-id: NODE-CONNECTION-`, to which each request adds its number.
    private let requestIDPrefix: [UInt8]
    /// The client's address, and `x-forwarded-for` with only that address.
    private let clientAddress: [UInt8]
    private let forwardedForLine: [UInt8]
    private let allocator: ByteBufferAllocator

    init(settings: RelaySettings, client: SocketAddress?, allocator: ByteBufferAllocator) {
        self.settings = settings
        let connectionTag = String(UInt32.random(in: 0 ... .max), radix: 36)
        requestIDPrefix = settings.requestIDPrefix + Array(connectionTag.utf8) + [UInt8(ascii: "-")]
        clientAddress = Array((client?.ipAddress ?? "").utf8)
        forwardedForLine =
            clientAddress.isEmpty
            ? [] : Array("x-forwarded-for: ".utf8) + clientAddress + [HTTP1Parsing.cr, HTTP1Parsing.lf]
        self.allocator = allocator
    }

    /// Parses the request head at the start of `bytes` into ``fields``.
    mutating func parseRequest(_ bytes: UnsafeRawBufferPointer) -> HeadParse {
        HTTP1Parsing.parseHead(bytes, fields: &fields, key: settings.keyName)
    }

    /// Reads the request head at the start of `bytes` (parsed by ``parseRequest(_:)``), routes it, and writes the
    /// upstream's head.
    mutating func request(_ bytes: UnsafeRawBufferPointer, startLineEnd: Int, length: Int) -> RequestDecision {
        // Request line: method SP target SP HTTP/1.1
        var index = 0
        while index < startLineEnd && HTTP1Parsing.isToken(bytes[index]) { index += 1 }
        let methodEnd = index
        guard methodEnd > 0, index < startLineEnd, bytes[index] == 32 else {
            return .refuse(status: 400, message: "malformed request line", headers: [], closing: true)
        }
        index += 1
        let targetStart = index
        while index < startLineEnd && bytes[index] > 32 && bytes[index] != 127 { index += 1 }
        guard index > targetStart, index + 9 == startLineEnd, bytes[index] == 32,
            HTTP1Parsing.has(bytes, at: index + 1, "HTTP/1.")
        else {
            return .refuse(status: 400, message: "malformed request line", headers: [], closing: true)
        }
        let targetRange = targetStart..<index
        // A later HTTP/1.x is served as HTTP/1.1 (RFC 9112 §2.3).
        let laterMinorVersion: Bool
        switch bytes[startLineEnd - 1] {
        case UInt8(ascii: "1"): laterMinorVersion = false
        case UInt8(ascii: "0"): return .handOff  // HTTP/1.0 takes the general path.
        case UInt8(ascii: "2")...UInt8(ascii: "9"): laterMinorVersion = true
        default: return .refuse(status: 400, message: "malformed request line", headers: [], closing: true)
        }
        if methodEnd == 7 && HTTP1Parsing.has(bytes, at: 0, "CONNECT") {
            return .refuse(status: 501, message: RequestTarget.connectRefusal, headers: [], closing: true)
        }
        var absolute: (authority: Range<Int>, path: Range<Int>)?
        switch RequestTarget.parse(bytes, targetRange) {
        case .origin:
            break
        case .asterisk:
            guard methodEnd == 7 && HTTP1Parsing.has(bytes, at: 0, "OPTIONS") else {
                return .refuse(status: 400, message: RequestTarget.asteriskRefusal, headers: [], closing: true)
            }
        case .absolute(let authority, let path):
            absolute = (authority, path)
        case .invalid(let reason):
            return .refuse(status: 400, message: reason, headers: [], closing: true)
        }

        // The fields that decide what happens.
        var key: Range<Int>?
        var contentLength: Int?
        var transferEncoding = false
        var upgrade = false
        var expect = false
        var close = false
        var forwarded = false
        var final = false
        var deadlineMilliseconds: Int?
        var hosts = 0
        var hasProto = false
        var hasRequestID = false
        var keepsTrailers = false
        var forwardedFor = false
        var listsNames = false
        var connectionSeen = false
        for field in fields {
            switch field.kind {
            case .key: if key == nil { key = field.value }
            case .contentLength:
                guard contentLength == nil else {
                    return .refuse(status: 400, message: "more than one Content-Length", headers: [], closing: true)
                }
                guard let length = HTTP1Parsing.decimal(bytes, field.value) else {
                    return .refuse(status: 400, message: "an invalid Content-Length", headers: [], closing: true)
                }
                contentLength = length
            case .transferEncoding: transferEncoding = true
            case .upgrade: upgrade = true
            case .expect: expect = true
            case .connection:
                if !connectionSeen {
                    connectionSeen = true
                    members.removeAll(keepingCapacity: true)
                }
                let before = members.count
                HTTP1Parsing.listMembers(bytes, field.value, into: &members)
                for member in members[before...] {
                    if HTTP1Parsing.equals(bytes, member, "close") {
                        close = true
                    } else if HTTP1Parsing.equals(bytes, member, "upgrade") {
                        upgrade = true
                    } else if !HTTP1Parsing.equals(bytes, member, "keep-alive") {
                        listsNames = true
                    }
                }
            case .te:
                if HTTP1Parsing.listContains(bytes, field.value, "trailers") { keepsTrailers = true }
            case .hop: forwarded = true
            case .final: final = true
            case .deadline: deadlineMilliseconds = HTTP1Parsing.decimal(bytes, field.value)
            case .host: hosts += 1
            case .xForwardedProto: hasProto = true
            case .xRequestID: hasRequestID = true
            case .xForwardedFor: forwardedFor = true
            default: break
            }
        }
        guard hosts == 1 else {
            let message = hosts == 0 ? RequestTarget.noHost : RequestTarget.moreThanOneHost
            return .refuse(status: 400, message: message, headers: [], closing: true)
        }
        if contentLength != nil && transferEncoding {
            return .refuse(
                status: 400,
                message: "a request may not carry both Content-Length and Transfer-Encoding",
                headers: [],
                closing: true
            )
        }
        if transferEncoding || upgrade || expect {
            // The general path reads HTTP/1.1 and HTTP/1.0 only.
            guard !laterMinorVersion else {
                return .refuse(
                    status: 505,
                    message: "a chunked body, Expect or Upgrade is served with HTTP/1.1 only",
                    headers: [],
                    closing: true
                )
            }
            return .handOff
        }
        let bodyLength = contentLength ?? 0
        if bodyLength > settings.configuration.maxBodyBytes {
            return .refuse(
                status: 413,
                message: "the request body is larger than \(settings.configuration.maxBodyBytes) bytes",
                headers: [],
                closing: true
            )
        }

        // Routing.
        let request = RoutingRequest(
            key: key.map { String(decoding: UnsafeRawBufferPointer(rebasing: bytes[$0]), as: UTF8.self) },
            isForwarded: forwarded,
            isFinalCandidate: final
        )
        let routes: [ProxyRoute]
        switch settings.router.routes(for: request) {
        case .success(let found) where !found.isEmpty:
            routes = found
        case .success:
            return .refuse(
                status: 503,
                message: "no node owns this key",
                headers: [],
                closing: bodyLength > 0 || close
            )
        case .failure(let refusal):
            return .refuse(
                status: Int(refusal.status.code),
                message: refusal.message,
                headers: refusal.headers.map { ($0.name, $0.value) },
                closing: bodyLength > 0 || close
            )
        }

        // The upstream's head: the request line and the fields that cross, then this proxy's.
        var head = allocator.buffer(capacity: length + 256)
        var lines = LineRuns(0, startLineEnd + 2)
        if laterMinorVersion || absolute != nil {
            // A request line of the upstream's own: origin form, HTTP/1.1.
            head.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[0..<targetStart]))
            if let absolute {
                RequestTarget.writePath(bytes, absolute.path, into: &head)
            } else {
                head.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[targetRange]))
            }
            head.writeStaticString(" HTTP/1.1\r\n")
            lines = LineRuns(startLineEnd + 2, startLineEnd + 2)
        }
        var previousForwardedFor: [Range<Int>] = []
        for field in fields {
            switch field.kind {
            case let kind where kind.isHopByHop || kind.isInternal:
                continue
            case .xForwardedFor:
                previousForwardedFor.append(field.value)
                continue
            case .host where absolute != nil:
                continue
            default:
                if listsNames, members.contains(where: { HTTP1Parsing.sameName(bytes, $0, field.name) }) { continue }
                lines.keep(field, from: bytes, into: &head)
            }
        }
        lines.write(bytes, into: &head)
        if keepsTrailers { head.writeStaticString("te: trailers\r\n") }
        let address = clientAddress
        if !forwardedFor {
            head.writeBytes(forwardedForLine)
        } else {
            head.writeStaticString("x-forwarded-for: ")
            for (offset, value) in previousForwardedFor.enumerated() {
                if offset > 0 { head.writeStaticString(", ") }
                head.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[value]))
            }
            if !address.isEmpty {
                if !previousForwardedFor.isEmpty { head.writeStaticString(", ") }
                head.writeBytes(address)
            }
            head.writeStaticString("\r\n")
        }
        head.writeBytes(hasProto ? settings.viaLine : settings.protoAndViaLines)
        requestNumber += 1
        if !hasRequestID {
            head.writeBytes(requestIDPrefix)
            HTTP1Parsing.writeDecimal(requestNumber, into: &head)
            head.writeStaticString("\r\n")
        }
        if let absolute {
            head.writeStaticString("host: ")
            head.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[absolute.authority]))
            head.writeStaticString("\r\n")
        }

        // The request's time: this node's limit, or less if the node that forwarded it has less left.
        var budget = settings.requestTimeout
        if let remaining = deadlineMilliseconds { budget = min(budget, .milliseconds(Int64(remaining))) }
        let method = UnsafeRawBufferPointer(rebasing: bytes[0..<methodEnd])
        let isHead = methodEnd == 4 && HTTP1Parsing.has(bytes, at: 0, "HEAD")
        return .forward(
            RequestPlan(
                routes: routes,
                head: head,
                idempotent: ProxyHandler.isIdempotent(method),
                expectsBody: !isHead,
                clientKeepAlive: !close,
                bodyLength: bodyLength,
                budget: budget
            )
        )
    }

    /// The client's response head for an upstream's `head` (its fields in `fields`): `servedHere` adds
    /// `X-Ringside-Node`, `closing` adds `Connection: close`; room is left for `bodyBytes` more.
    mutating func response(
        _ head: ByteBuffer,
        facts: ResponseFacts,
        fields: [HeaderField],
        servedHere: Bool,
        closing: Bool,
        bodyBytes: Int
    ) -> ByteBuffer {
        var out = allocator.buffer(capacity: head.readableBytes + 128 + bodyBytes)
        head.withUnsafeReadableBytes { bytes in
            var lines: LineRuns
            if HTTP1Parsing.has(bytes, at: 0, "HTTP/1.1") {
                lines = LineRuns(0, facts.startLineEnd + 2)
            } else {
                out.writeStaticString("HTTP/1.1")
                lines = LineRuns(8, facts.startLineEnd + 2)
            }
            var listsNames = false
            if facts.listsConnectionOptions {
                members.removeAll(keepingCapacity: true)
                for field in fields where field.kind == .connection {
                    HTTP1Parsing.listMembers(bytes, field.value, into: &members)
                    listsNames = true
                }
            }
            for field in fields {
                switch field.kind {
                case .contentLength where facts.contentLength == nil:
                    // Dropped by the facts for a Transfer-Encoding beside it, which frames the body: RFC 9112 §6.3
                    // has an intermediary remove the length before it passes such a message on.
                    continue
                case let kind where kind.describesFraming:
                    // The body passes through in the framing these describe.
                    break
                case let kind where kind.isHopByHop:
                    continue
                case .node where !settings.configuration.addsNodeHeader:
                    continue
                default:
                    if listsNames, members.contains(where: { HTTP1Parsing.sameName(bytes, $0, field.name) }) {
                        continue
                    }
                }
                lines.keep(field, from: bytes, into: &out)
            }
            lines.write(bytes, into: &out)
        }
        out.writeBytes(servedHere && !facts.isInterim ? settings.viaAndNodeLines : settings.viaLine)
        if closing { out.writeStaticString("connection: close\r\n") }
        out.writeStaticString("\r\n")
        return out
    }
}

extension HeadRewriter {
    /// The client's response head for an upstream's `head` on `route`, and the body bytes that came with it: a small
    /// body goes out in the same buffer as the head (one write), a larger one after it.
    mutating func clientResponse(
        _ head: ByteBuffer,
        facts: ResponseFacts,
        fields: [HeaderField],
        body: ByteBuffer?,
        route: ProxyRoute,
        closing: Bool
    ) -> (head: ByteBuffer, body: ByteBuffer?) {
        let servedHere: Bool =
            if case .local = route { settings.configuration.addsNodeHeader && !facts.hasNodeHeader } else { false }
        var out = response(
            head,
            facts: facts,
            fields: fields,
            servedHere: servedHere,
            closing: closing,
            bodyBytes: min(body?.readableBytes ?? 0, 4096)
        )
        guard var body, body.readableBytes <= 4096 else { return (out, body) }
        out.writeBuffer(&body)
        return (out, nil)
    }
}
