import NIOCore
import NIOSSL
import NIOTLS

/// Who the other end of an authenticated connection is: the DNS names its certificate carries (subject alternative
/// names). A peer speaks only under a name its certificate carries.
public struct PeerIdentity: Sendable, Hashable {
    public var names: [String]

    public init(names: [String]) { self.names = names }

    /// Whether the certificate carries `name`, exactly (no wildcards: a node name is not a host pattern).
    public func carries(_ name: String) -> Bool { names.contains(name) }
}

/// The server's certificate does not carry the name of the peer the connection was opened for.
public struct PeerNameMismatch: Error, CustomStringConvertible {
    public var expected: String
    public var presented: [String]

    public var description: String {
        "the certificate names \(presented.isEmpty ? "nothing" : presented.joined(separator: ", ")), not \(expected)"
    }
}

extension PlaneTLS {
    /// Puts TLS in front of a server connection. Once the handshake is done, `ready` sets the pipeline up for the
    /// application protocol negotiated (nil when the client offered none) and the client's identity (when `role`
    /// verifies clients); a handshake that fails or does not end within `timeout` closes the connection, counted and
    /// logged.
    public func accept(
        _ channel: any Channel,
        role: TLSRole,
        timeout: TimeAmount,
        ready: @escaping (any Channel, String?, PeerIdentity?) throws -> Void
    ) throws {
        let check = CertificateCheck()
        let tls = try Self.serverHandler(context(role), check)
        try channel.pipeline.syncOperations.addHandler(tls)
        try channel.pipeline.syncOperations.addHandler(
            TLSHandshakeHandler(
                handshakes: handshakes,
                check: check,
                timeout: timeout,
                outcome: .server(identifiesPeer: role.verifiesPeer, ready: ready)
            )
        )
    }

    /// Puts TLS on a client connection, in front of its handlers. The future succeeds once the handshake is done and, given an `expectedName`,
    /// the server's certificate carries it exactly; it fails (and the connection closes) otherwise, or after `timeout`.
    /// `serverHostname` is sent as SNI and, for a role without an `expectedName`, checked by the usual host-name rules.
    public func connect(
        _ channel: any Channel,
        role: TLSRole,
        serverHostname: String?,
        expectedName: String? = nil,
        timeout: TimeAmount
    ) -> EventLoopFuture<Void> {
        let check = CertificateCheck()
        let promise = channel.eventLoop.makePromise(of: Void.self)
        do {
            let tls = try Self.clientHandler(context(role), serverHostname: serverHostname, check)
            // In front of whatever the connection was set up with.
            try channel.pipeline.syncOperations.addHandler(
                TLSHandshakeHandler(
                    handshakes: handshakes,
                    check: check,
                    timeout: timeout,
                    outcome: .client(expectedName: expectedName, promise: promise)
                ),
                position: .first
            )
            try channel.pipeline.syncOperations.addHandler(tls, position: .first)
        } catch {
            promise.fail(error)
        }
        return promise.futureResult
    }

    // BoringSSL checks the chain; the per-certificate callback only watches its verdicts, to tell an expired
    // certificate from an untrusted one in the log. swift-nio-ssl marks that callback deprecated in favour of one that
    // replaces BoringSSL's check altogether, which is not wanted here: it is reached through ``DeprecatedTLSHandlers``.
    private static func serverHandler(
        _ context: NIOSSLContext,
        _ check: CertificateCheck
    ) throws
        -> NIOSSLServerHandler
    {
        try (Self.self as any DeprecatedTLSHandlers.Type).server(context, check)
    }

    private static func clientHandler(
        _ context: NIOSSLContext,
        serverHostname: String?,
        _ check: CertificateCheck
    ) throws -> NIOSSLClientHandler {
        try (Self.self as any DeprecatedTLSHandlers.Type).client(context, serverHostname, check)
    }
}

/// Reaches the deprecated per-certificate callback through a protocol, so that its one use is declared once (above)
/// rather than warned about at every call.
private protocol DeprecatedTLSHandlers {
    static func server(_ context: NIOSSLContext, _ check: CertificateCheck) throws -> NIOSSLServerHandler
    static func client(
        _ context: NIOSSLContext,
        _ serverHostname: String?,
        _ check: CertificateCheck
    ) throws -> NIOSSLClientHandler
}

extension PlaneTLS: DeprecatedTLSHandlers {
    @available(*, deprecated, message: "watches BoringSSL's verdicts with the per-certificate callback")
    fileprivate static func server(_ context: NIOSSLContext, _ check: CertificateCheck) throws -> NIOSSLServerHandler {
        try NIOSSLServerHandler(context: context, verificationCallback: { check.observe($0, $1) })
    }

    @available(*, deprecated, message: "watches BoringSSL's verdicts with the per-certificate callback")
    fileprivate static func client(
        _ context: NIOSSLContext,
        _ serverHostname: String?,
        _ check: CertificateCheck
    ) throws -> NIOSSLClientHandler {
        try NIOSSLClientHandler(
            context: context,
            serverHostname: serverHostname,
            verificationCallback: { check.observe($0, $1) }
        )
    }
}

/// Waits for a connection's TLS handshake, counts how it ended, and then sets the server side up for its protocol or
/// completes the client side's promise, and steps aside.
final class TLSHandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    enum Outcome {
        case server(identifiesPeer: Bool, ready: (any Channel, String?, PeerIdentity?) throws -> Void)
        case client(expectedName: String?, promise: EventLoopPromise<Void>)
    }

    private let handshakes: TLSHandshakes
    private let check: CertificateCheck
    private let timeout: TimeAmount
    private let outcome: Outcome
    private var deadline: Scheduled<Void>?
    private var finished = false

    init(handshakes: TLSHandshakes, check: CertificateCheck, timeout: TimeAmount, outcome: Outcome) {
        self.handshakes = handshakes
        self.check = check
        self.timeout = timeout
        self.outcome = outcome
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { startClock(context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        startClock(context)
        context.fireChannelActive()
    }

    private func startClock(_ context: ChannelHandlerContext) {
        guard deadline == nil else { return }
        let channel = context.channel
        deadline = context.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard !finished, let event = event as? TLSUserEvent, case .handshakeCompleted(let negotiated) = event else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        finished = true
        deadline?.cancel()
        let certificate = try? context.pipeline.syncOperations.handler(type: NIOSSLHandler.self).peerCertificate
        let identity = certificate.map(PeerIdentity.init(certificate:))
        switch outcome {
        case .server(let identifiesPeer, let ready):
            handshakes.record(.ok, peer: context.channel.remoteAddress)
            do {
                try ready(context.channel, negotiated, identifiesPeer ? identity ?? PeerIdentity(names: []) : nil)
            } catch {
                context.close(promise: nil)
                return
            }
        case .client(let expectedName, let promise):
            if let expectedName, !(identity?.carries(expectedName) ?? false) {
                let mismatch = PeerNameMismatch(expected: expectedName, presented: identity?.names ?? [])
                handshakes.record(.nameMismatch, peer: context.channel.remoteAddress, detail: mismatch.description)
                promise.fail(mismatch)
                context.close(promise: nil)
                return
            }
            handshakes.record(.ok, peer: context.channel.remoteAddress)
            promise.succeed()
        }
        context.fireUserInboundEventTriggered(event)
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard !finished else {
            context.fireErrorCaught(error)
            return
        }
        finished = true
        let result = TLSHandshakes.classify(error, certificate: check)
        handshakes.record(result, peer: context.channel.remoteAddress, detail: "\(error)")
        if case .client(_, let promise) = outcome { promise.fail(error) }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !finished {
            finished = true
            handshakes.record(.failed, peer: context.channel.remoteAddress)
            if case .client(_, let promise) = outcome { promise.fail(ChannelError.eof) }
        }
        context.fireChannelInactive()
    }
}
