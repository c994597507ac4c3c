import Foundation
import Logging
import RingsideCluster
import RingsideProxy

/// The TLS of every plane and the admin token, loaded from the files the settings name. A file that does not load is
/// a configuration error naming its key (exit status 2).
struct NodeSecurity {
    var app: PlaneTLS?
    var cluster: PlaneTLS?
    var backend: PlaneTLS?
    var adminToken: [UInt8]?

    /// Every plane with files to reload.
    var planes: [PlaneTLS] { [app, cluster, backend].compactMap(\.self) }

    init(_ settings: RingsideSettings, logger: Logger) throws(ConfigurationError) {
        if let files = settings.tls, let certificate = files.certificate, let key = files.key {
            do {
                app = try PlaneTLS.app(certificate: certificate, key: key, logger: logger)
            } catch {
                throw Self.failure(error, keys: [("tls-cert", certificate), ("tls-key", key)])
            }
        }
        if let files = settings.clusterTLS, let certificate = files.certificate, let key = files.key, let ca = files.ca
        {
            do {
                cluster = try PlaneTLS.cluster(certificate: certificate, key: key, ca: ca, logger: logger)
            } catch {
                throw Self.failure(
                    error,
                    keys: [("cluster-tls-cert", certificate), ("cluster-tls-key", key), ("cluster-tls-ca", ca)],
                )
            }
        }
        if settings.backendTLS {
            do {
                backend = try PlaneTLS.backend(ca: settings.backendTLSCA, logger: logger)
            } catch {
                throw Self.failure(error, keys: [("backend-tls-ca", settings.backendTLSCA)])
            }
        }
        if let path = settings.adminTokenFile {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw ConfigurationError(key: "admin-token-file", source: path, reason: "cannot be read")
            }
            let token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard token.utf8.count >= 16, !token.contains(where: \.isWhitespace) else {
                throw ConfigurationError(
                    key: "admin-token-file",
                    source: path,
                    reason: "must hold one token of at least 16 characters without spaces"
                )
            }
            adminToken = Array(token.utf8)
        }
    }

    private static func failure(
        _ error: TLSLoadError,
        keys: [(String, String?)]
    ) -> ConfigurationError {
        let key = keys.first { $0.1 == error.file }?.0 ?? keys[0].0
        return ConfigurationError(key: key, source: error.file, reason: error.reason)
    }
}
