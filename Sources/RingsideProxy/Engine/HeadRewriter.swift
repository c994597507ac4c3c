import NIOCore
import NIOHTTP1
import RingsideSharding

/// What a request head asks of the engine, read by ``HeadRewriter``.
enum RequestDecision {
    /// Answered here, without an upstream; `closing` closes the connection after the answer.
    case refuse(status: Int, message: String, headers: [(String, String)], closing: Bool)
    /// Proxied as planned.
    case forward(RequestPlan)
}

/// How a request's body is framed (RFC 9112 §6).
enum RequestBody: Equatable {
    /// `Content-Length`: this many bytes (0 without one).
    case length(Int)
    /// `Transfer-Encoding: chunked`, passed on as it came.
    case chunked
}

/// A request on its way to an upstream.
struct RequestPlan {
    /// The owners to try, best first.
    var routes: [ProxyRoute]
    /// The upstream head without the route's headers (``RelaySettings/routeLines(_:isLast:deadline:now:into:)``) and
    /// the final blank line.
    var head: ByteBuffer
    var idempotent: Bool
    /// False for HEAD: the response has no body whatever its fields say.
    var expectsBody: Bool
    /// The client's connection may carry another request after this one.
    var clientKeepAlive: Bool
    var body: RequestBody
    /// The client waits for `100 Continue` before it sends the body; the engine says it, the upstream never hears
    /// of it.
    var expectsContinue: Bool
    /// The request asks to switch protocols (`Connection: upgrade`): a 101 turns the connection into a tunnel.
    var upgrade: Bool
    /// The upstream's connection cannot carry another request after this one (an HTTP/1.0 request).
    var upstreamKeepAlive: Bool
    /// The client may be sent 1xx responses: not an HTTP/1.0 client (RFC 9110 §15.2).
    var takesInterimResponses: Bool
    /// The time the request may take: this node's limit, or less if the node that forwarded it has less left.
    var budget: TimeAmount
    /// What the access log says of the request; nil when there is no access log.
    var access: AccessFacts?
}

/// The engine's work on heads, for one client connection and apart from how its bytes travel: reads a request head,
/// decides what it is (refused, or routed), and writes the upstream's head in one pass; rewrites response heads.
///
/// Every rule about what a request may say lives here, once. Refused, with the connection closed after the answer:
/// a malformed request line, a `Connection` that names a framing field (`Content-Length`, `Transfer-Encoding`,
/// `Host`), `Content-Length` with `Transfer-Encoding`, a transfer coding other than `chunked` alone (501), HTTP/1.0
/// with a transfer coding, an HTTP/1.1 request without exactly one `Host`, two key headers, `CONNECT` (501), an
/// expectation other than `100-continue` (417), an upgrade with a body. (Bare LF, obs-fold and control characters are
/// refused by ``HTTP1Parsing/parseHead(_:fields:key:)``.)
///
/// Kept lines are copied as they came (``LineRuns``); hop-by-hop and internal fields stay behind, and this proxy's
/// own are added: `Via`, `X-Forwarded-For`, `X-Forwarded-Proto` (set by the proxy on the app plane, whatever the
/// client said; a peer's is kept), `X-Request-Id` towards the upstream (and `Host`, from an absolute-form target or
/// for an HTTP/1.0 request without one), `Via` and `X-Ringside-Node` towards the client.
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
    /// The address the client reached, the `Host` of a request that came without one (formatted only then).
    private let local: SocketAddress?
    private let allocator: ByteBufferAllocator

    init(settings: RelaySettings, client: SocketAddress?, local: SocketAddress?, allocator: ByteBufferAllocator) {
        self.settings = settings
        let connectionTag = String(UInt32.random(in: 0 ... .max), radix: 36)
        requestIDPrefix = settings.requestIDPrefix + Array(connectionTag.utf8) + [UInt8(ascii: "-")]
        clientAddress = Array((client?.ipAddress ?? "").utf8)
        forwardedForLine =
            clientAddress.isEmpty
            ? [] : Array("x-forwarded-for: ".utf8) + clientAddress + [HTTP1Parsing.cr, HTTP1Parsing.lf]
        self.local = local
        self.allocator = allocator
    }

    /// Parses the request head at the start of `bytes` into ``fields``.
    mutating func parseRequest(_ bytes: UnsafeRawBufferPointer) -> HeadParse {
        HTTP1Parsing.parseHead(bytes, fields: &fields, key: settings.keyName)
    }

    private static func refusal(_ status: Int, _ message: String) -> RequestDecision {
        .refuse(status: status, message: message, headers: [], closing: true)
    }

    /// Reads the request head at the start of `bytes` (parsed by ``parseRequest(_:)``), routes it, and writes the
    /// upstream's head.
    mutating func request(_ bytes: UnsafeRawBufferPointer, startLineEnd: Int, length: Int) -> RequestDecision {
        // Request line: method SP target SP HTTP/1.x
        var index = 0
        while index < startLineEnd && HTTP1Parsing.isToken(bytes[index]) { index += 1 }
        let methodEnd = index
        guard methodEnd > 0, index < startLineEnd, bytes[index] == 32 else {
            return Self.refusal(400, "malformed request line")
        }
        index += 1
        let targetStart = index
        // A target is ASCII (RFC 9112 §3.2, RFC 3986): visible characters only.
        while index < startLineEnd && bytes[index] > 32 && bytes[index] < 127 { index += 1 }
        guard index > targetStart, index + 9 == startLineEnd, bytes[index] == 32,
            HTTP1Parsing.has(bytes, at: index + 1, "HTTP/1.")
        else {
            return Self.refusal(400, "malformed request line")
        }
        let targetRange = targetStart..<index
        // A later HTTP/1.x is served as HTTP/1.1 (RFC 9112 §2.3).
        let laterMinorVersion: Bool
        let http10: Bool
        switch bytes[startLineEnd - 1] {
        case UInt8(ascii: "1"): (laterMinorVersion, http10) = (false, false)
        case UInt8(ascii: "0"): (laterMinorVersion, http10) = (false, true)
        case UInt8(ascii: "2")...UInt8(ascii: "9"): (laterMinorVersion, http10) = (true, false)
        default: return Self.refusal(400, "malformed request line")
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
                return Self.refusal(400, RequestTarget.asteriskRefusal)
            }
        case .absolute(let authority, let path):
            absolute = (authority, path)
        case .invalid(let reason):
            return Self.refusal(400, reason)
        }

        // The fields that decide what happens.
        var key: Range<Int>?
        var keys = 0
        var contentLength: Int?
        var transferEncodings = 0
        var chunkedAlone = true
        var upgradeField = false
        var expectContinue = false
        var otherExpectation = false
        var close = false
        var upgradeListed = false
        var forwarded = false
        var final = false
        var deadlineMilliseconds: Int?
        var hosts = 0
        var hasProto = false
        var hasRequestID = false
        var requestIDField: Range<Int>?
        var keepsTrailers = false
        var forwardedFor = false
        var listsNames = false
        var connectionSeen = false
        for field in fields {
            switch field.kind {
            case .key:
                keys += 1
                if !field.value.isEmpty { key = field.value }
            case .contentLength:
                guard contentLength == nil else { return Self.refusal(400, "more than one Content-Length") }
                guard let length = HTTP1Parsing.decimal(bytes, field.value) else {
                    return Self.refusal(400, "an invalid Content-Length")
                }
                contentLength = length
            case .transferEncoding:
                transferEncodings += 1
                if !HTTP1Parsing.equals(bytes, field.value, "chunked") { chunkedAlone = false }
            case .upgrade: upgradeField = true
            case .expect:
                if HTTP1Parsing.equals(bytes, field.value, "100-continue") {
                    expectContinue = true
                } else {
                    otherExpectation = true
                }
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
                    } else if HTTP1Parsing.equals(bytes, member, "keep-alive") {
                        continue
                    } else if HTTP1Parsing.equals(bytes, member, "upgrade") {
                        upgradeListed = true
                    } else {
                        // A field named here is dropped on the way; one that frames the message cannot be, or the
                        // upstream would read the body as the next request (RFC 9110 §7.6.1).
                        switch HTTP1Parsing.kind(of: bytes, name: member, key: []) {
                        case .contentLength, .transferEncoding, .host:
                            return Self.refusal(400, "a Connection header that names a framing field")
                        default:
                            listsNames = true
                        }
                    }
                }
            case .te:
                if HTTP1Parsing.listContains(bytes, field.value, "trailers") { keepsTrailers = true }
            case .hop: forwarded = true
            case .final: final = true
            case .deadline: deadlineMilliseconds = HTTP1Parsing.decimal(bytes, field.value)
            case .host: hosts += 1
            case .xForwardedProto: hasProto = true
            case .xRequestID:
                hasRequestID = true
                requestIDField = field.value
            case .xForwardedFor: forwardedFor = true
            default: break
            }
        }
        if hosts > 1 { return Self.refusal(400, RequestTarget.moreThanOneHost) }
        if hosts == 0 && !http10 { return Self.refusal(400, RequestTarget.noHost) }
        if keys > 1 { return Self.refusal(400, "more than one \(settings.configuration.keyHeader) header") }
        if contentLength != nil && transferEncodings > 0 {
            return Self.refusal(400, "a request may not carry both Content-Length and Transfer-Encoding")
        }
        if transferEncodings > 0 {
            // RFC 9112 §6.1: HTTP/1.0 has no transfer codings, so the framing cannot be trusted.
            if http10 { return Self.refusal(400, "an HTTP/1.0 request may not carry Transfer-Encoding") }
            guard transferEncodings == 1, chunkedAlone else {
                return Self.refusal(501, "the only transfer coding this proxy passes on is chunked")
            }
        }
        if otherExpectation && !http10 { return Self.refusal(417, "the only expectation served is 100-continue") }
        let body: RequestBody = transferEncodings > 0 ? .chunked : .length(contentLength ?? 0)
        // An upgrade is HTTP/1.1's (RFC 9110 §7.8), asked for by both fields, and switches before any body.
        let upgrade = !http10 && upgradeField && upgradeListed
        if upgrade && body != .length(0) { return Self.refusal(400, "an upgrade request with a body") }
        if case .length(let bodyLength) = body, bodyLength > settings.configuration.maxBodyBytes {
            return Self.refusal(413, "the request body is larger than \(settings.configuration.maxBodyBytes) bytes")
        }
        let clientKeepAlive = http10 ? false : !close

        // Routing.
        let request = RoutingRequest(
            key: key.map { String(decoding: UnsafeRawBufferPointer(rebasing: bytes[$0]), as: UTF8.self) },
            isForwarded: forwarded,
            isFinalCandidate: final
        )
        let routes: [ProxyRoute]
        // A refusal here is an answer to a well-framed request: the connection goes on unless a body would have to
        // be read past first.
        let closesAfterRefusal = body != .length(0) || !clientKeepAlive || upgrade
        switch settings.router.routes(for: request) {
        case .success(let found) where !found.isEmpty:
            routes = found
        case .success:
            return .refuse(status: 503, message: "no node owns this key", headers: [], closing: closesAfterRefusal)
        case .failure(let refusal):
            return .refuse(
                status: Int(refusal.status.code),
                message: refusal.message,
                headers: refusal.headers.map { ($0.name, $0.value) },
                closing: closesAfterRefusal
            )
        }

        // The upstream's head: the request line and the fields that cross, then this proxy's.
        var head = allocator.buffer(capacity: length + 256)
        var lines = LineRuns(0, startLineEnd + 2)
        if laterMinorVersion || absolute != nil {
            // A request line of the upstream's own: origin form, HTTP/1.1 (or 1.0 as it came).
            head.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[0..<targetStart]))
            if let absolute {
                RequestTarget.writePath(bytes, absolute.path, into: &head)
            } else {
                head.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[targetRange]))
            }
            if http10 { head.writeStaticString(" HTTP/1.0\r\n") } else { head.writeStaticString(" HTTP/1.1\r\n") }
            lines = LineRuns(startLineEnd + 2, startLineEnd + 2)
        }
        let trustsProto = settings.plane == .cluster
        var previousForwardedFor: [Range<Int>] = []
        for field in fields {
            switch field.kind {
            case .transferEncoding:
                // Checked to be `chunked` alone: the body crosses as it came, so its framing does too.
                break
            case .upgrade where upgrade:
                break
            case let kind where kind.isHopByHop || kind.isInternal:
                continue
            case .node, .notOwner:
                // Said by this proxy to its clients and peers, never taken from a client.
                continue
            case .xForwardedFor:
                previousForwardedFor.append(field.value)
                continue
            case .xForwardedProto where !trustsProto:
                continue
            case .expect where expectContinue:
                continue
            case .host where absolute != nil:
                continue
            default:
                if listsNames, members.contains(where: { HTTP1Parsing.sameName(bytes, $0, field.name) }) { continue }
            }
            lines.keep(field, from: bytes, into: &head)
        }
        lines.write(bytes, into: &head)
        if upgrade { head.writeStaticString("connection: upgrade\r\n") }
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
        head.writeBytes(trustsProto && hasProto ? settings.viaLine : settings.protoAndViaLines)
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
        } else if hosts == 0 {
            head.writeString("host: \(HeaderHygiene.authority(of: local))\r\n")
        }

        // The request's time: this node's limit, or less if the node that forwarded it has less left.
        var budget = settings.requestTimeout
        if let remaining = deadlineMilliseconds { budget = min(budget, .milliseconds(Int64(remaining))) }
        let method = UnsafeRawBufferPointer(rebasing: bytes[0..<methodEnd])
        let isHead = methodEnd == 4 && HTTP1Parsing.has(bytes, at: 0, "HEAD")
        var access: AccessFacts?
        if settings.configuration.accessLog != nil {
            func text(_ range: Range<Int>) -> String {
                String(decoding: UnsafeRawBufferPointer(rebasing: bytes[range]), as: UTF8.self)
            }
            access = AccessFacts(
                method: text(0..<methodEnd),
                path: text(targetRange.lowerBound..<min(targetRange.upperBound, targetRange.lowerBound + 512)),
                keyHash: key.map { ShardKey.hash(UnsafeRawBufferPointer(rebasing: bytes[$0])) },
                // The client's own, or the one this proxy added (the prefix's value, after `x-request-id: `).
                requestID: requestIDField.map(text)
                    ?? String(decoding: requestIDPrefix.drop { $0 != UInt8(ascii: " ") }.dropFirst(), as: UTF8.self)
                    + String(requestNumber)
            )
        }
        return .forward(
            RequestPlan(
                routes: routes,
                head: head,
                idempotent: HTTP1Parsing.isIdempotent(method),
                expectsBody: !isHead,
                clientKeepAlive: clientKeepAlive,
                body: body,
                expectsContinue: expectContinue && !http10,
                upgrade: upgrade,
                upstreamKeepAlive: !http10,
                takesInterimResponses: !http10,
                budget: budget,
                access: access
            )
        )
    }

    /// The client's response head for an upstream's `head` (its fields in `fields`): `servedHere` adds
    /// `X-Ringside-Node`, `closing` adds `Connection: close`, `upgraded` keeps `Upgrade` and says
    /// `Connection: upgrade` (a 101 that switches protocols); room is left for `bodyBytes` more.
    mutating func response(
        _ head: ByteBuffer,
        facts: ResponseFacts,
        fields: [HeaderField],
        servedHere: Bool,
        closing: Bool,
        upgraded: Bool = false,
        fromBackend: Bool = false,
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
                case .upgrade where upgraded:
                    break
                case let kind where kind.isHopByHop:
                    continue
                case .node where !settings.configuration.addsNodeHeader:
                    continue
                case .notOwner where servedHere || fromBackend:
                    // Only a peer's engine says it; a backend's would send the client's request to another owner.
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
        if upgraded {
            out.writeStaticString("connection: upgrade\r\n")
        } else if closing {
            out.writeStaticString("connection: close\r\n")
        }
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
        closing: Bool,
        upgraded: Bool = false
    ) -> (head: ByteBuffer, body: ByteBuffer?) {
        let servedHere: Bool =
            if case .local = route { settings.configuration.addsNodeHeader && !facts.hasNodeHeader } else { false }
        var out = response(
            head,
            facts: facts,
            fields: fields,
            servedHere: servedHere,
            closing: closing,
            upgraded: upgraded,
            fromBackend: route == .local,
            bodyBytes: min(body?.readableBytes ?? 0, 4096)
        )
        guard var body, body.readableBytes <= 4096 else { return (out, body) }
        out.writeBuffer(&body)
        return (out, nil)
    }
}
