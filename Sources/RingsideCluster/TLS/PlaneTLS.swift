import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL

#if canImport(Glibc)
import Glibc
#endif

/// The PEM files of one plane's TLS: a certificate chain and its key (a server, or a client that authenticates), and
/// the CA bundle the other side's certificate must chain to (several certificates while a CA is rotated).
public struct TLSFiles: Sendable, Hashable {
    public var certificate: String?
    public var key: String?
    public var ca: String?

    public init(certificate: String? = nil, key: String? = nil, ca: String? = nil) {
        self.certificate = certificate
        self.key = key
        self.ca = ca
    }

    var paths: [String] { [certificate, key, ca].compactMap(\.self) }
}

/// One way a plane uses its files: as a server (and whether it asks the client for a certificate), or as a client
/// (and whether it checks the server's certificate against the CA bundle, or the system's roots when there is none);
/// each with the application protocols it offers (ALPN).
public struct TLSRole: Sendable, Hashable {
    public var isServer: Bool
    public var verifiesPeer: Bool
    /// A client that checks the server's host name (RFC 6125: the SNI name, or the address dialled) against its
    /// certificate; a peer's node name is checked exactly instead, by the connection.
    public var checksHostName: Bool
    public var applicationProtocols: [String]

    /// A server; it asks clients for a certificate signed by the CA bundle when `verifiesClients`.
    public static func server(verifiesClients: Bool, protocols: [String]) -> TLSRole {
        TLSRole(isServer: true, verifiesPeer: verifiesClients, checksHostName: false, applicationProtocols: protocols)
    }

    /// A client that checks the server's certificate chain, and its host name when `checksHostName`.
    public static func client(protocols: [String], checksHostName: Bool) -> TLSRole {
        TLSRole(isServer: false, verifiesPeer: true, checksHostName: checksHostName, applicationProtocols: protocols)
    }
}

/// The files of a plane could not be used: which file, and why.
public struct TLSLoadError: Error, CustomStringConvertible {
    /// The file that did not load (or the certificate, when the key does not match it).
    public var file: String
    public var reason: String

    public var description: String { "\(file): \(reason)" }
}

/// The TLS of one plane (app, cluster, backend, admin): the contexts its roles use, made from its files and made again
/// when the files change (``reload(force:)``), so that new connections use the new certificate while the ones open go
/// on with theirs. A set of files that does not load leaves the contexts as they were.
///
/// Every handshake is counted by plane and result (``TLSHandshakeResult``); refusals are logged at most once per peer
/// host and reason in ten seconds.
public final class PlaneTLS: Sendable {
    /// The plane, as logs and metrics name it.
    public let plane: String
    public let files: TLSFiles
    let handshakes: TLSHandshakes
    private let roles: [TLSRole]
    private let state: NIOLockedValueBox<State>

    private struct State {
        var contexts: [TLSRole: NIOSSLContext]
        /// The files as they were last read (whether or not they loaded), so that a bad set is reported once.
        var stamps: [FileStamp]
        /// When this plane's own certificate stops being valid (seconds since 1970), if it has one.
        var notValidAfter: Int?
    }

    /// Loads `files` for `roles`; throws naming the file that does not load.
    public init(plane: String, files: TLSFiles, roles: [TLSRole], logger: Logger) throws(TLSLoadError) {
        self.plane = plane
        self.files = files
        self.roles = roles
        handshakes = TLSHandshakes(plane: plane, logger: logger)
        let stamps = files.paths.map(FileStamp.init(path:))
        let (contexts, notValidAfter) = try Self.load(files, roles: roles)
        state = NIOLockedValueBox(State(contexts: contexts, stamps: stamps, notValidAfter: notValidAfter))
    }

    /// The context for `role` as the files were last loaded.
    public func context(_ role: TLSRole) -> NIOSSLContext {
        state.withLockedValue { $0.contexts[role]! }
    }

    /// Seconds until this plane's own certificate expires (negative once it has), if it has one.
    public func secondsUntilExpiry(now: Int = Int(time(nil))) -> Int? {
        state.withLockedValue { $0.notValidAfter }.map { $0 - now }
    }

    /// What a reload did.
    public enum ReloadOutcome: Sendable, Equatable {
        /// The files have not changed since they were last read.
        case unchanged
        case reloaded
        /// The files changed but do not load; the old contexts stay.
        case failed(String)
    }

    /// Reads the files again if they changed since they were last read (always when `force`).
    public func reload(force: Bool = false) -> ReloadOutcome {
        let stamps = files.paths.map(FileStamp.init(path:))
        let changed = state.withLockedValue { state in
            guard force || state.stamps != stamps else { return false }
            state.stamps = stamps
            return true
        }
        guard changed else { return .unchanged }
        do {
            let (contexts, notValidAfter) = try Self.load(files, roles: roles)
            state.withLockedValue {
                $0.contexts = contexts
                $0.notValidAfter = notValidAfter
            }
            return .reloaded
        } catch {
            return .failed(error.description)
        }
    }

    private static func load(
        _ files: TLSFiles,
        roles: [TLSRole]
    ) throws(TLSLoadError) -> ([TLSRole: NIOSSLContext], Int?) {
        func certificates(_ path: String) throws(TLSLoadError) -> [NIOSSLCertificate] {
            let loaded: [NIOSSLCertificate]
            do {
                loaded = try NIOSSLCertificate.fromPEMFile(path)
            } catch {
                throw TLSLoadError(file: path, reason: FileStamp.problem(path) ?? "holds no PEM certificate")
            }
            guard !loaded.isEmpty else { throw TLSLoadError(file: path, reason: "holds no PEM certificate") }
            return loaded
        }
        let chain = try files.certificate.map(certificates) ?? []
        let trustRoots = try files.ca.map(certificates)
        // A CA that clients' certificates are checked against issues them: it must be an authority. (A client's
        // bundle may pin a backend's self-signed certificate instead.)
        if let path = files.ca, let trustRoots, roles.contains(where: { $0.isServer && $0.verifiesPeer }) {
            try requireAuthorities(trustRoots, in: path)
        }
        var key: NIOSSLPrivateKey?
        if let path = files.key {
            do {
                key = try NIOSSLPrivateKey(file: path, format: .pem)
            } catch {
                throw TLSLoadError(file: path, reason: FileStamp.problem(path) ?? "holds no PEM private key")
            }
        }
        var contexts: [TLSRole: NIOSSLContext] = [:]
        for role in roles {
            var configuration: TLSConfiguration
            if role.isServer {
                guard let key, !chain.isEmpty else {
                    throw TLSLoadError(file: files.certificate ?? "", reason: "a server needs a certificate and a key")
                }
                configuration = .makeServerConfiguration(
                    certificateChain: chain.map { .certificate($0) },
                    privateKey: .privateKey(key)
                )
                configuration.certificateVerification = role.verifiesPeer ? .noHostnameVerification : .none
            } else {
                configuration = .makeClientConfiguration()
                configuration.certificateChain = chain.map { .certificate($0) }
                configuration.privateKey = key.map { .privateKey($0) }
                configuration.certificateVerification =
                    role.checksHostName ? .fullVerification : .noHostnameVerification
            }
            if let trustRoots { configuration.trustRoots = .certificates(trustRoots) }
            configuration.minimumTLSVersion = .tlsv12
            configuration.applicationProtocols = role.applicationProtocols
            do {
                contexts[role] = try NIOSSLContext(configuration: configuration)
            } catch {
                throw TLSLoadError(
                    file: files.key ?? files.certificate ?? files.ca ?? "",
                    reason: "does not make a TLS context (does the key belong to the certificate?): \(error)"
                )
            }
        }
        return (contexts, chain.first.map { Int($0.notValidAfter) })
    }
}

/// Refuses a CA bundle with a certificate that is not a certificate authority's (a node's own certificate given as
/// the CA, say): nothing would ever verify against it, and every handshake would fail for a reason far from here.
private func requireAuthorities(_ certificates: [NIOSSLCertificate], in path: String) throws(TLSLoadError) {
    for certificate in certificates where !isAuthority(certificate) {
        throw TLSLoadError(
            file: path,
            reason: "holds a certificate that is not a certificate authority's (no basicConstraints CA:TRUE)"
        )
    }
}

/// Whether `certificate` has basicConstraints with cA true. Read from the extension's DER (swift-nio-ssl's
/// extension view; the project takes no X.509 library for one bit): `SEQUENCE { BOOLEAN cA DEFAULT FALSE, … }`,
/// short-form lengths, as an extension this small always has.
private func isAuthority(_ certificate: NIOSSLCertificate) -> Bool {
    guard let basicConstraints = NIOSSLObjectIdentifier("2.5.29.19"),
        let constraints = certificate._extensions.first(where: { $0.objectIdentifier == basicConstraints })
    else { return false }
    let der = Array(constraints.data)
    return der.count >= 5 && der[0] == 0x30 && der[1] < 0x80 && der[2] == 0x01 && der[3] == 0x01 && der[4] != 0
}

/// What `stat` says of a file: enough to tell that it was replaced or rewritten (a Kubernetes Secret is replaced by
/// swapping a symbolic link, which changes the inode `stat` follows to).
struct FileStamp: Hashable, Sendable {
    var inode: UInt64 = 0
    var size: Int64 = -1
    var modified: Int64 = 0
    var modifiedNanoseconds: Int = 0

    init(path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else { return }
        inode = UInt64(info.st_ino)
        size = Int64(info.st_size)
        modified = Int64(info.st_mtim.tv_sec)
        modifiedNanoseconds = Int(info.st_mtim.tv_nsec)
    }

    /// Why `path` cannot be read, if it cannot.
    static func problem(_ path: String) -> String? {
        guard access(path, R_OK) != 0 else { return nil }
        return String(cString: strerror(errno)).lowercased()
    }
}
