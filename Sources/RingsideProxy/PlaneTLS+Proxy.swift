import Logging
import RingsideCluster

extension TLSRole {
    /// The app plane: any client, ALPN `h2` or `http/1.1`.
    public static let appServer = TLSRole.server(verifiesClients: false, protocols: ["h2", "http/1.1"])
    /// The admin plane beyond loopback: any client, HTTP/1.1.
    public static let adminServer = TLSRole.server(verifiesClients: false, protocols: ["http/1.1"])
    /// Connections to an `https://` backend, checked against its CA bundle (or the system's roots) and its host name.
    public static let backendClient = TLSRole.client(protocols: ["http/1.1"], checksHostName: true)
}

extension PlaneTLS {
    /// TLS for the app plane (and the admin plane, when it listens beyond loopback) from a certificate and its key.
    public static func app(certificate: String, key: String, logger: Logger) throws(TLSLoadError) -> PlaneTLS {
        try PlaneTLS(
            plane: "app",
            files: TLSFiles(certificate: certificate, key: key),
            roles: [.appServer, .adminServer],
            logger: logger
        )
    }

    /// TLS towards an `https://` backend, whose certificate must chain to `ca` (nil: the system's roots).
    public static func backend(ca: String?, logger: Logger) throws(TLSLoadError) -> PlaneTLS {
        try PlaneTLS(plane: "backend", files: TLSFiles(ca: ca), roles: [.backendClient], logger: logger)
    }
}
