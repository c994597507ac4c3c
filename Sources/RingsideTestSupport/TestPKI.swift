import Crypto
import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import SwiftASN1
import X509

/// A certificate authority made in the test, and the certificates it issues, written as PEM files into a directory of
/// its own: tests never carry a key.
public struct TestCA: Sendable {
    public let name: String
    public let directory: URL
    private let key: Certificate.PrivateKey
    private let certificate: Certificate

    /// A new CA named `name` with files under `directory` (created).
    public init(name: String = "ringside test CA", directory: URL) throws {
        self.name = name
        self.directory = directory
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let key = Certificate.PrivateKey(P256.Signing.PrivateKey())
        let subject = try DistinguishedName { CommonName(name) }
        certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: key.publicKey,
            notValidBefore: Date() - 3600,
            notValidAfter: Date() + 86_400 * 30,
            issuer: subject,
            subject: subject,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
            },
            issuerPrivateKey: key
        )
        self.key = key
    }

    /// A fresh temporary directory for a test's files.
    public static func temporaryDirectory() -> URL {
        FileManager.default.temporaryDirectory.appendingPathComponent("ringside-tls-\(UUID().uuidString)")
    }

    /// The CA's certificate as a file (the bundle peers are checked against).
    public var bundle: String { directory.appendingPathComponent("ca-\(fileName).pem").path }

    private var fileName: String { name.replacingOccurrences(of: " ", with: "-") }

    /// Writes the CA's certificate to ``bundle`` (and returns its path).
    @discardableResult
    public func writeBundle() throws -> String {
        try write(try certificate.serializeAsPEM().pemString, to: bundle)
        return bundle
    }

    /// Issues a certificate for `names` (DNS SANs; an IPv4 or IPv6 address becomes an IP SAN) valid from
    /// `notValidBefore` to `notValidAfter`, and writes it and its key to `file`.pem and `file`-key.pem (replacing them
    /// at once, by renaming, as a Secret update does). Returns the two paths.
    @discardableResult
    public func issue(
        _ names: [String],
        file: String,
        notValidBefore: Date = Date() - 3600,
        notValidAfter: Date = Date() + 86_400
    ) throws -> (certificate: String, key: String) {
        let leafKey = Certificate.PrivateKey(P256.Signing.PrivateKey())
        var alternatives: [GeneralName] = []
        for name in names {
            if let address = Self.addressBytes(name) {
                alternatives.append(.ipAddress(ASN1OctetString(contentBytes: ArraySlice(address))))
            } else {
                alternatives.append(.dnsName(name))
            }
        }
        let leaf = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: leafKey.publicKey,
            notValidBefore: notValidBefore,
            notValidAfter: notValidAfter,
            issuer: certificate.subject,
            subject: try DistinguishedName { CommonName(names.first ?? file) },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                SubjectAlternativeNames(alternatives)
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
            },
            issuerPrivateKey: key
        )
        let certificatePath = directory.appendingPathComponent("\(file).pem").path
        let keyPath = directory.appendingPathComponent("\(file)-key.pem").path
        try write(try leafKey.serializeAsPEM().pemString, to: keyPath)
        try write(try leaf.serializeAsPEM().pemString, to: certificatePath)
        return (certificatePath, keyPath)
    }

    /// A TLS server context for a certificate issued to `names` (an `https://` backend, say).
    public func serverContext(_ names: [String], file: String) throws -> NIOSSLContext {
        let files = try issue(names, file: file)
        return try NIOSSLContext(
            configuration: .makeServerConfiguration(
                certificateChain: try NIOSSLCertificate.fromPEMFile(files.certificate).map { .certificate($0) },
                privateKey: .privateKey(try NIOSSLPrivateKey(file: files.key, format: .pem))
            )
        )
    }

    private func write(_ text: String, to path: String) throws {
        let staging = path + ".new"
        try Data(text.utf8).write(to: URL(fileURLWithPath: staging))
        _ = rename(staging, path)
    }

    private static func addressBytes(_ text: String) -> [UInt8]? {
        guard let address = try? SocketAddress(ipAddress: text, port: 0) else { return nil }
        switch address {
        case .v4(let v4): return withUnsafeBytes(of: v4.address.sin_addr) { Array($0) }
        case .v6(let v6): return withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
        case .unixDomainSocket: return nil
        }
    }
}

/// What a TLS client saw of one exchange: the bytes the server sent until it closed (or the timeout), the protocol
/// ALPN settled on, the server certificate's serial number, and the error that ended the handshake, if one did.
public struct TLSExchange: Sendable {
    public var bytes: [UInt8]
    public var negotiatedProtocol: String?
    public var serverSerial: [UInt8]?
    public var handshakeError: String?

    /// The response, when one came.
    public var response: TestResponse? { parseResponse(bytes, closed: true) }
}

/// Connects to 127.0.0.1:`port` over TLS, trusting `ca` (a PEM file; nil trusts anything), presenting `certificate`
/// and `key` when given, offering `protocols`, and sends `request` once the handshake is done (nothing when empty).
/// Reads until the server closes or `timeout`.
public func tlsExchange(
    port: Int,
    _ request: [UInt8],
    ca: String?,
    certificate: String? = nil,
    key: String? = nil,
    serverName: String? = nil,
    protocols: [String] = ["http/1.1"],
    timeout: Duration = .seconds(5)
) async throws -> TLSExchange {
    var configuration = TLSConfiguration.makeClientConfiguration()
    if let ca {
        configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca))
        configuration.certificateVerification = serverName == nil ? .noHostnameVerification : .fullVerification
    } else {
        configuration.certificateVerification = .none
    }
    if let certificate, let key {
        configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) }
        configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
    }
    configuration.applicationProtocols = protocols
    let context = try NIOSSLContext(configuration: configuration)
    let collector = TLSCollector()
    let channel: any Channel
    do {
        channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        NIOSSLClientHandler(context: context, serverHostname: serverName)
                    )
                    try channel.pipeline.syncOperations.addHandler(collector)
                }
            }
            .connect(host: "127.0.0.1", port: port)
            .get()
    } catch {
        // No channel ever carried the collector, so nothing else completes its promise.
        collector.handshake.fail(error)
        throw error
    }
    // A Result, not `try?`: the protocol is nil when none was negotiated, which `try?` would flatten into failure.
    let handshake: Result<String?, any Error>
    do {
        handshake = .success(try await collector.handshake.futureResult.get())
    } catch {
        handshake = .failure(error)
    }
    if case .success = handshake, !request.isEmpty {
        try? await channel.writeAndFlush(ByteBuffer(bytes: request)).get()
    }
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline, channel.isActive {
        if !request.isEmpty, parseResponse(collector.received) != nil { break }
        try await Task.sleep(for: .milliseconds(10))
    }
    try? await channel.close()
    return TLSExchange(
        bytes: collector.received,
        negotiatedProtocol: (try? handshake.get()) ?? nil,
        serverSerial: collector.serial,
        handshakeError: collector.error
    )
}

/// Collects what a TLS client channel reads, and how its handshake went.
private final class TLSCollector: ChannelInboundHandler, @unchecked Sendable {
    // Touched on the channel's event loop, and read by the test once the channel is done with (or through the lock).
    typealias InboundIn = ByteBuffer

    let handshake = MultiThreadedEventLoopGroup.singleton.next().makePromise(of: String?.self)
    private let lock = NSLock()
    private var bytes: [UInt8] = []
    private var serialNumber: [UInt8]?
    private var failure: String?

    var received: [UInt8] { lock.withLock { bytes } }
    var serial: [UInt8]? { lock.withLock { serialNumber } }
    var error: String? { lock.withLock { failure } }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted(let negotiated) = event as? TLSUserEvent {
            let certificate = try? context.pipeline.syncOperations.handler(type: NIOSSLClientHandler.self)
                .peerCertificate
            lock.withLock { serialNumber = certificate?.serialNumber }
            handshake.succeed(negotiated)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        lock.withLock { bytes += buffer.readableBytesView }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        lock.withLock { if failure == nil { failure = "\(error)" } }
        handshake.fail(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        handshake.fail(ChannelError.eof)
        context.fireChannelInactive()
    }
}
