import Logging

extension TLSRole {
    /// The cluster port: clients must present a certificate of the cluster's CA; ALPN `h2` is gossip, `http/1.1`
    /// forwarded requests.
    public static let clusterServer = TLSRole.server(verifiesClients: true, protocols: ["h2", "http/1.1"])
    /// A node's gossip connections to its peers.
    public static let gossipClient = TLSRole.client(protocols: ["h2"], checksHostName: false)
    /// A node's connections to its peers for forwarded requests.
    public static let forwardClient = TLSRole.client(protocols: ["http/1.1"], checksHostName: false)
}

extension PlaneTLS {
    /// The cluster plane's mutual TLS from a node's certificate, its key and the cluster's CA bundle.
    public static func cluster(
        certificate: String,
        key: String,
        ca: String,
        logger: Logger
    ) throws(TLSLoadError) -> PlaneTLS {
        try PlaneTLS(
            plane: "cluster",
            files: TLSFiles(certificate: certificate, key: key, ca: ca),
            roles: [.clusterServer, .gossipClient, .forwardClient],
            logger: logger
        )
    }
}
