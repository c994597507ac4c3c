import Logging
import Metrics
import NIOCore
import NIOSSL

#if canImport(Glibc)
import Glibc
#endif

/// How a TLS handshake ended, as `ringside_tls_handshakes_total{plane, result}` counts it.
public enum TLSHandshakeResult: String, Sendable, CaseIterable {
    case ok
    /// No certificate, or one that does not chain to the trusted CA (or the other side said so of ours).
    case untrusted
    /// A certificate that does not carry the name its holder speaks under (a peer's node name).
    case nameMismatch = "name_mismatch"
    /// A certificate past its validity (or not valid yet), either side's.
    case expired
    /// The other side spoke plaintext to a TLS port.
    case plaintext
    /// Anything else: a protocol error, or a connection closed during the handshake.
    case failed

    /// The log line's explanation.
    var explanation: String {
        switch self {
        case .ok: "handshake completed"
        case .untrusted: "the certificate is missing or not signed by a trusted CA"
        case .nameMismatch: "the certificate does not carry the name the peer speaks under"
        case .expired: "the certificate has expired or is not valid yet"
        case .plaintext: "the other side spoke plaintext to a TLS port"
        case .failed: "the handshake failed"
        }
    }
}

/// Counts a plane's handshakes by result and logs the refusals, at most once per peer host and result in ten
/// seconds (an outsider can cause them at will).
final class TLSHandshakes: Sendable {
    let plane: String
    private let counters: [TLSHandshakeResult: Counter]
    private let logger: Logger
    private let limiter = LogRateLimiter(interval: .seconds(10))

    init(plane: String, logger: Logger) {
        self.plane = plane
        self.logger = logger
        var counters: [TLSHandshakeResult: Counter] = [:]
        for result in TLSHandshakeResult.allCases {
            counters[result] = Counter(
                label: "ringside_tls_handshakes_total",
                dimensions: [("plane", plane), ("result", result.rawValue)]
            )
        }
        self.counters = counters
    }

    /// Counts a result without a log line (its caller logs it).
    func count(_ result: TLSHandshakeResult) { counters[result]?.increment() }

    /// Counts a handshake; a refusal is logged (rate-limited) with what the peer was and why.
    func record(_ result: TLSHandshakeResult, peer: SocketAddress?, detail: String? = nil) {
        counters[result]?.increment()
        guard result != .ok else { return }
        let host = peer?.ipAddress ?? "unknown"
        // A connection closed during the handshake is a port scan or a client that gave up: not worth a line.
        guard result != .failed || detail != nil else { return }
        guard let held = limiter.allow("\(result.rawValue) \(host)") else { return }
        var metadata: Logger.Metadata = [
            "ringside.plane": "\(plane)",
            "ringside.peer.address": "\(host)",
            "ringside.reason": "\(result.explanation)",
            "ringside.result": "\(result.rawValue)",
            "ringside.suppressed": "\(held)",
        ]
        if let detail { metadata["ringside.error"] = "\(detail)" }
        logger.warning("refused a TLS connection", metadata: metadata)
    }

    /// What a failed handshake's error says, given what the certificate check saw of the peer's certificate.
    static func classify(_ error: any Error, certificate: CertificateCheck) -> TLSHandshakeResult {
        if let extra = error as? NIOSSLExtraError, extra == .failedToValidateHostname { return .nameMismatch }
        if case .some(.nameMismatch) = certificate.failure { return .nameMismatch }
        let text = String(describing: error)
        if text.contains("HTTP_REQUEST") || text.contains("WRONG_VERSION_NUMBER")
            || text.contains("HTTPS_PROXY_REQUEST")
        {
            return .plaintext
        }
        if text.contains("CERTIFICATE_EXPIRED") { return .expired }
        if text.contains("CERTIFICATE_VERIFY_FAILED") { return certificate.failure ?? .untrusted }
        if text.contains("PEER_DID_NOT_RETURN_A_CERTIFICATE") || text.contains("CERTIFICATE_REQUIRED")
            || text.contains("UNKNOWN_CA") || text.contains("BAD_CERTIFICATE") || text.contains("CERTIFICATE_UNKNOWN")
        {
            return .untrusted
        }
        return .failed
    }
}

/// What BoringSSL's chain check said of the certificates a peer presented, for the log line of a refusal: the first
/// one it failed, and whether that one is outside its validity period.
final class CertificateCheck {
    private(set) var failure: TLSHandshakeResult?

    /// Notes BoringSSL's verdict on one certificate of the chain and leaves it as it is.
    func observe(_ verdict: NIOSSLVerificationResult, _ certificate: NIOSSLCertificate) -> NIOSSLVerificationResult {
        if verdict == .failed, failure == nil {
            let now = time(nil)
            failure = now > certificate.notValidAfter || now < certificate.notValidBefore ? .expired : .untrusted
        }
        return verdict
    }

    /// Marks the peer's certificate as not carrying the name expected of it.
    func nameMismatch() { failure = .nameMismatch }
}

extension PeerIdentity {
    /// The DNS names a certificate carries in its subject alternative names.
    init(certificate: NIOSSLCertificate) {
        var names: [String] = []
        for name in certificate._subjectAlternativeNames() where name.nameType == .dnsName {
            names.append(String(decoding: Array(name.contents), as: UTF8.self))
        }
        self.init(names: names)
    }
}
