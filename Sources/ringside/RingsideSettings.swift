import Foundation
import Logging
import NIOCore
import RingsideCluster
import RingsideProxy
import RingsideSharding
import Yams

/// Everything `ringside run` is configured with, validated. Each key can come from the YAML file, from a `RINGSIDE_*`
/// environment variable, or from a flag of the same name; flags win over the environment, the environment over the
/// file.
struct RingsideSettings {
    var nodeName: String
    var listen: Address
    var clusterListen: Address
    var adminListen: Address
    var advertise: String?
    var join: [String]
    var clusterName: String
    var backend: Address
    /// Whether the backend speaks HTTP/2 with prior knowledge (an `h2c://` URL, for gRPC servers).
    var backendSpeaksHTTP2: Bool
    var keyHeader: String
    var replicas: Int
    var role: PeerState
    var missingKey: ProxyConfiguration.MissingKeyPolicy
    var sharder: ShardingAlgorithm
    var requestTimeout: Duration
    var connectTimeout: Duration
    var headerReadTimeout: Duration
    var idleTimeout: Duration
    var drainTimeout: Duration
    /// Members (viewers and participants, this node included) a node waits to see before it is ready and takes
    /// part: a start-up gate, passed once.
    var waitForSize: Int
    /// How long it waits for them (and its seeds) at most; nil: for good.
    var waitTimeout: Duration?
    /// Whether a participant takes part at once, not after the readiness gate and a healthy backend.
    var participateImmediately: Bool
    /// The path the backend's health check GETs; nil: a connect.
    var backendHealthPath: String?
    var rejoinInterval: Duration
    var maxHeaderBytes: Int
    var maxBodyBytes: Int
    var nodeHeader: Bool
    var logLevel: Logger.Level
    /// Event loop threads for the listeners and connections.
    var eventLoops: Int
    /// How HTTP/1.1 connections are served (the app plane and forwarded requests).
    var appIO: ProxyConfiguration.AppIO
    /// The app plane's certificate and key (TLS on the app plane, and on the admin plane beyond loopback).
    var tls: TLSFiles?
    /// This node's certificate and key and the cluster's CA bundle (mutual TLS between peers).
    var clusterTLS: TLSFiles?
    /// Whether the backend is spoken to over TLS (an `https://` URL), and the CA bundle it is checked against (nil:
    /// the system's roots).
    var backendTLS: Bool
    var backendTLSCA: String?
    /// The file holding the admin plane's bearer token.
    var adminTokenFile: String?
    /// How log lines are written.
    var logFormat: LogFormat
    /// Whether every request gets an access log line (on standard output).
    var accessLog: Bool
    /// `RINGSIDE_*` variables that name no setting, each with the nearest valid name: logged at start.
    var unknownVariables: [(name: String, nearest: String?)] = []

    /// A `host:port` pair.
    typealias Address = HostAndPort

    /// Every key, with its default (nil: none, or computed) and what it means, for `--help` and the README.
    static let keys: [(name: String, defaultValue: String?, help: String)] = [
        ("node-name", nil, "This node's unique name in the cluster, printable ASCII (default: the host name)."),
        ("listen", "127.0.0.1:7400", "Where the application sends keyed requests."),
        ("cluster-listen", "0.0.0.0:7401", "Where other nodes send gossip and forwarded requests."),
        ("admin-listen", "127.0.0.1:7402", "Health, readiness, metrics and the JSON API."),
        (
            "advertise", nil,
            "The host:port other nodes dial (default: the cluster listen address; for a wildcard, an interface's)."
        ),
        ("join", "", "Seeds, comma-separated: host:port or dnssrv+NAME."),
        ("cluster-name", "ringside", "The cluster's label; nodes of other clusters are refused."),
        (
            "backend", "http://127.0.0.1:8080",
            "The local backend: http://host:port, https://host:port, or h2c://host:port for HTTP/2 (gRPC)."
        ),
        ("key-header", "X-Shard-Key", "The header that carries the shard key."),
        ("replicas", "1", "How many owners /v1/lookup reports by default (1 to 16)."),
        ("role", "participant", "participant (owns keys) or viewer (routes only)."),
        ("missing-key", "local", "Requests without a key: local (the local backend) or reject (400)."),
        ("sharder", "ring", "ring, rendezvous or maglev."),
        ("request-timeout", "60s", "How long a request may take end to end."),
        ("connect-timeout", "2s", "How long to wait for a connection to the backend or a peer."),
        ("header-read-timeout", "10s", "How long a client may take to send a request head."),
        ("idle-timeout", "75s", "How long a keep-alive client connection may be idle."),
        ("drain-timeout", "30s", "How long a drain waits for requests under way before it cuts them (exit 3)."),
        ("wait-for-size", "1", "Members (this node included) a node waits to see before it is ready and takes part."),
        ("wait-timeout", "0s", "How long it waits for them and for its seeds; 0s waits for good."),
        (
            "participate-immediately", "false",
            "Own keys from the start, not once ready with a healthy backend (as a viewer until then)."
        ),
        ("backend-health-path", "", "A path the backend's health check GETs (below 500 is healthy); empty: a connect."),
        ("rejoin-interval", "30s", "How often seeds are resolved and joined again."),
        ("max-header-bytes", "64KiB", "The largest request head; larger ones get 431."),
        ("max-body-bytes", "1GiB", "The largest request body; larger ones get 413."),
        ("node-header", "true", "Whether responses carry X-Ringside-Node."),
        ("log-level", "info", "trace, debug, info, notice, warning, error or critical."),
        ("log-format", "logfmt", "logfmt (key=value lines) or json (one object a line)."),
        ("access-log", "false", "Whether every request gets a log line on standard output, as Envoy's access log."),
        ("event-loops", nil, "Event loop threads (default: one per core)."),
        ("app-io", nil, "How HTTP/1.1 is served (app plane, forwarded requests): epoll (relay loops) or nio."),
        ("tls-cert", "", "A PEM certificate chain: TLS on the app plane (and the admin plane beyond loopback)."),
        ("tls-key", "", "The PEM private key of tls-cert."),
        ("cluster-tls-cert", "", "This node's PEM certificate for mutual TLS between peers; a DNS SAN = node-name."),
        ("cluster-tls-key", "", "The PEM private key of cluster-tls-cert."),
        ("cluster-tls-ca", "", "The cluster's CA bundle (PEM): peers' certificates must chain to it."),
        ("backend-tls-ca", "", "The CA bundle an https:// backend is checked against (default: the system's roots)."),
        (
            "admin-token-file", "",
            "A file holding a bearer token the admin plane requires (but for /livez and /readyz)."
        ),
    ]

    /// The environment variable for `key`: `RINGSIDE_` and the key in capitals, dashes as underscores.
    static func environmentName(_ key: String) -> String {
        "RINGSIDE_" + key.uppercased().replacingOccurrences(of: "-", with: "_")
    }

    /// Loads and validates the settings from a file (if given), the environment and flags.
    static func load(
        configFile: String?,
        environment: [String: String],
        flags: [String: String]
    ) throws(ConfigurationError) -> RingsideSettings {
        var values: [String: (value: String, source: String)] = [:]
        for key in keys { if let value = key.defaultValue { values[key.name] = (value, "default") } }
        if let configFile {
            for (key, value) in try readFile(configFile) { values[key] = (value, configFile) }
        }
        for key in keys {
            let name = environmentName(key.name)
            if let value = environment[name] { values[key.name] = (value, name) }
        }
        for (key, value) in flags { values[key] = (value, "--\(key)") }
        var settings = try RingsideSettings(values: values)
        settings.unknownVariables = unknownEnvironment(environment)
        return settings
    }

    /// The `RINGSIDE_*` variables that name no setting (a typo that would otherwise be ignored), each with the
    /// nearest valid name. `RINGSIDE_CONFIG` and the admin commands' own variables are known.
    static func unknownEnvironment(_ environment: [String: String]) -> [(name: String, nearest: String?)] {
        let known = keys.map { environmentName($0.name) } + otherEnvironment
        return environment.keys.filter { $0.hasPrefix("RINGSIDE_") && !known.contains($0) }.sorted().map {
            ($0, nearest(to: $0, in: known))
        }
    }

    /// Variables of the `ringside` command that are not settings of `run`.
    static let otherEnvironment = ["RINGSIDE_CONFIG", "RINGSIDE_ADMIN", "RINGSIDE_ADMIN_TOKEN_FILE"]

    /// The name in `candidates` closest to `name` by edit distance, if it is close enough to be a likely typo (at
    /// most a third of its length, and at least 2, edits away).
    static func nearest(to name: String, in candidates: [String]) -> String? {
        let target = Array(name.lowercased().utf8)
        var best: (String, Int)?
        for candidate in candidates {
            let distance = editDistance(target, Array(candidate.lowercased().utf8))
            if distance < (best?.1 ?? .max) { best = (candidate, distance) }
        }
        guard let best, best.1 <= max(2, target.count / 3) else { return nil }
        return best.0
    }

    /// Levenshtein distance, one row at a time.
    static func editDistance(_ a: [UInt8], _ b: [UInt8]) -> Int {
        guard !a.isEmpty else { return b.count }
        var previous = Array(0...b.count)
        var current = previous
        for i in 1...a.count {
            current[0] = i
            for j in stride(from: 1, through: b.count, by: 1) {
                let substitution = previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)
                current[j] = min(substitution, previous[j] + 1, current[j - 1] + 1)
            }
            swap(&previous, &current)
        }
        return previous[b.count]
    }

    /// The key/value pairs of a YAML file: a mapping of known keys to scalars (or, for `join`, a list of them).
    static func readFile(_ path: String) throws(ConfigurationError) -> [String: String] {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigurationError(
                key: "config",
                source: "--config",
                reason: "cannot read \(path): \(error.localizedDescription)"
            )
        }
        // Composed, not loaded: values keep the text they were written with (`1e3` stays `1e3`, not `1000.0`), and
        // a key that is not a plain scalar is an error rather than a crash in the constructor.
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch {
            throw ConfigurationError(key: "config", source: path, reason: "not valid YAML: \(error)")
        }
        guard let root, root.null == nil else { return [:] }
        guard let mapping = root.mapping else {
            throw ConfigurationError(
                key: "config",
                source: path,
                reason: "the file must be a mapping of keys to values"
            )
        }
        let known = Set(keys.map(\.name))
        var result: [String: String] = [:]
        for (keyNode, value) in mapping {
            guard let key = keyNode.scalar?.string else {
                throw ConfigurationError(
                    key: "config",
                    source: path,
                    reason: "a key must be a name, not a list or a map"
                )
            }
            guard known.contains(key) else {
                let suggestion = nearest(to: key, in: keys.map(\.name)).map { "did you mean \($0)? " } ?? ""
                throw ConfigurationError(
                    key: key,
                    source: path,
                    reason: "unknown key; \(suggestion)the keys are listed by ringside run --help"
                )
            }
            guard result[key] == nil else {
                throw ConfigurationError(key: key, source: path, reason: "is given twice")
            }
            if value.null != nil {
                continue  // `key:` with nothing after it: unset, as if the line were not there.
            } else if let scalar = value.scalar {
                result[key] = scalar.string
            } else if key == "join", let list = value.sequence, list.allSatisfy({ $0.scalar != nil }) {
                result[key] = list.compactMap { $0.scalar?.string }.joined(separator: ",")
            } else {
                throw ConfigurationError(key: key, source: path, reason: "expected a single value")
            }
        }
        return result
    }

    private init(values: [String: (value: String, source: String)]) throws(ConfigurationError) {
        func value(_ key: String) -> (String, String) { values[key] ?? ("", "default") }
        func fail(_ key: String, _ reason: String) -> ConfigurationError {
            let (text, source) = value(key)
            return ConfigurationError(key: key, source: source, reason: "\"\(printable(text))\" \(reason)")
        }
        func address(_ key: String) throws(ConfigurationError) -> Address {
            let (text, _) = value(key)
            guard let parsed = Address(text) else {
                throw fail(key, "is not host:port with a port from 0 to 65535")
            }
            return parsed
        }
        func duration(_ key: String) throws(ConfigurationError) -> Duration {
            guard let parsed = Self.parseDuration(value(key).0), parsed > .zero else {
                throw fail(key, "is not a positive duration such as 500ms, 30s, 2m or 1h (at most a year)")
            }
            return parsed
        }
        func size(_ key: String) throws(ConfigurationError) -> Int {
            guard let parsed = Self.parseSize(value(key).0), parsed > 0 else {
                throw fail(key, "is not a positive size such as 8192, 64KiB, 16MiB or 1GiB")
            }
            return parsed
        }

        let name = value("node-name").0
        nodeName = name.isEmpty ? ProcessInfo.processInfo.hostName : name
        // ASCII only: names are compared as Swift strings, under which two different byte sequences can be one
        // name (é and e + U+0301), and a name is a DNS SAN under mutual TLS.
        guard !nodeName.isEmpty, nodeName.utf8.count <= 255,
            nodeName.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F })
        else {
            throw fail("node-name", "is not a name of 1 to 255 printable ASCII characters without spaces")
        }
        listen = try address("listen")
        clusterListen = try address("cluster-listen")
        adminListen = try address("admin-listen")
        if !AdvertisedHost.isLoopback(adminListen.host), value("admin-token-file").0.isEmpty,
            value("tls-cert").0.isEmpty
        {
            throw fail(
                "admin-listen",
                "is beyond loopback: set admin-token-file (a bearer token) or tls-cert (TLS) to protect it"
            )
        }
        let advertiseText = value("advertise").0
        if advertiseText.isEmpty {
            advertise = nil
        } else {
            guard let parsed = Address(advertiseText) else { throw fail("advertise", "is not host:port") }
            guard AdvertisedHost.canBeDialled(parsed) else {
                throw fail("advertise", "is a wildcard address or port 0, which other nodes cannot dial")
            }
            advertise = advertiseText
        }
        join = value("join").0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }
        for seed in join where !seed.hasPrefix("dnssrv+") && Address(seed) == nil {
            throw ConfigurationError(
                key: "join",
                source: value("join").1,
                reason: "\"\(seed)\" is neither host:port nor dnssrv+NAME"
            )
        }
        clusterName = value("cluster-name").0
        guard !clusterName.isEmpty, clusterName.utf8.count <= 255 else {
            throw fail("cluster-name", "is not a name of 1 to 255 characters")
        }
        let backendText = value("backend").0
        let scheme = backendText.prefix { $0 != ":" }
        guard scheme == "http" || scheme == "https" || scheme == "h2c",
            backendText.dropFirst(scheme.count).hasPrefix("://"),
            let backendAddress = Address(String(backendText.dropFirst(scheme.count + 3).prefix { $0 != "/" }))
        else {
            throw fail("backend", "is not an http://host:port, https://host:port or h2c://host:port URL")
        }
        backend = backendAddress
        backendSpeaksHTTP2 = scheme == "h2c"
        backendTLS = scheme == "https"
        func file(_ key: String) -> String? { value(key).0.isEmpty ? nil : value(key).0 }
        backendTLSCA = file("backend-tls-ca")
        if backendTLSCA != nil, !backendTLS {
            throw fail("backend", "is not an https:// URL, yet backend-tls-ca is set")
        }
        /// The files of `keys`: all of them or none.
        func files(_ keys: [String]) throws(ConfigurationError) -> [String]? {
            let given = keys.map(file)
            if given.allSatisfy({ $0 == nil }) { return nil }
            if let missing = keys.first(where: { file($0) == nil }), let given = keys.first(where: { file($0) != nil })
            {
                let others = keys.filter { file($0) != nil }.joined(separator: " and ")
                throw ConfigurationError(key: missing, source: value(given).1, reason: "is needed with \(others)")
            }
            return given.compactMap(\.self)
        }
        tls = try files(["tls-cert", "tls-key"]).map { TLSFiles(certificate: $0[0], key: $0[1]) }
        clusterTLS = try files(["cluster-tls-cert", "cluster-tls-key", "cluster-tls-ca"]).map {
            TLSFiles(certificate: $0[0], key: $0[1], ca: $0[2])
        }
        adminTokenFile = file("admin-token-file")
        keyHeader = value("key-header").0
        if let problem = ProxyConfiguration.keyHeaderProblem(keyHeader) { throw fail("key-header", problem) }
        guard let replicaCount = Int(value("replicas").0), (1...16).contains(replicaCount) else {
            throw fail("replicas", "is not a whole number from 1 to 16")
        }
        replicas = replicaCount
        switch value("role").0 {
        case "participant": role = .participant
        case "viewer": role = .viewer
        default: throw fail("role", "is neither participant nor viewer")
        }
        let givenIO = value("app-io").0
        let defaultIO = ProxyConfiguration(nodeName: "").appIO
        guard let io = givenIO.isEmpty ? defaultIO : ProxyConfiguration.AppIO(rawValue: givenIO.lowercased()) else {
            throw fail("app-io", "is neither epoll nor nio")
        }
        #if !os(Linux)
        if io == .epoll { throw fail("app-io", "is epoll, which only Linux has") }
        #endif
        appIO = io
        guard let policy = ProxyConfiguration.MissingKeyPolicy(rawValue: value("missing-key").0) else {
            throw fail("missing-key", "is neither local nor reject")
        }
        missingKey = policy
        switch value("sharder").0 {
        case "ring": sharder = .ring()
        case "rendezvous": sharder = .rendezvous
        case "maglev": sharder = .maglev()
        default: throw fail("sharder", "is not ring, rendezvous or maglev")
        }
        requestTimeout = try duration("request-timeout")
        connectTimeout = try duration("connect-timeout")
        headerReadTimeout = try duration("header-read-timeout")
        idleTimeout = try duration("idle-timeout")
        drainTimeout = try duration("drain-timeout")
        guard drainTimeout <= NodeDrain.longestTimeout else { throw fail("drain-timeout", "is longer than a day") }
        guard let waitSize = Int(value("wait-for-size").0), (1...1000).contains(waitSize) else {
            throw fail("wait-for-size", "is not a whole number from 1 to 1000")
        }
        waitForSize = waitSize
        guard let wait = Self.parseDuration(value("wait-timeout").0), wait >= .zero else {
            throw fail("wait-timeout", "is not a duration such as 0s, 30s or 5m (at most a year)")
        }
        waitTimeout = wait == .zero ? nil : wait
        func bool(_ key: String) throws(ConfigurationError) -> Bool {
            switch value(key).0.lowercased() {
            case "true", "yes", "on", "1": return true
            case "false", "no", "off", "0": return false
            default: throw fail(key, "is not true or false")
            }
        }
        participateImmediately = try bool("participate-immediately")
        let healthPath = value("backend-health-path").0
        guard healthPath.isEmpty || (healthPath.hasPrefix("/") && !healthPath.contains(where: { $0.isWhitespace }))
        else { throw fail("backend-health-path", "is not a path such as /healthz") }
        backendHealthPath = healthPath.isEmpty ? nil : healthPath
        rejoinInterval = try duration("rejoin-interval")
        maxHeaderBytes = try size("max-header-bytes")
        maxBodyBytes = try size("max-body-bytes")
        nodeHeader = try bool("node-header")
        let loops = value("event-loops").0
        if loops.isEmpty {
            eventLoops = System.coreCount
        } else {
            guard let count = Int(loops), (1...256).contains(count) else {
                throw fail("event-loops", "is not a whole number from 1 to 256")
            }
            eventLoops = count
        }
        guard let level = Logger.Level(rawValue: value("log-level").0.lowercased()) else {
            throw fail("log-level", "is not trace, debug, info, notice, warning, error or critical")
        }
        logLevel = level
        guard let format = LogFormat(rawValue: value("log-format").0.lowercased()) else {
            throw fail("log-format", "is not logfmt or json")
        }
        logFormat = format
        accessLog = try bool("access-log")
    }

    /// `500ms`, `30s`, `2m`, `1h`, or a plain number of seconds; at most ``maxDurationSeconds``.
    static func parseDuration(_ text: String) -> Duration? {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
        let (number, seconds) =
            units.first { text.hasSuffix($0.0) }.map { (Double(text.dropLast($0.0.count)), $0.1) } ?? (Double(text), 1)
        guard let number, number.isFinite, number >= 0, number * seconds <= maxDurationSeconds else { return nil }
        return .milliseconds(Int64(number * seconds * 1000))
    }

    /// The longest duration any setting takes: a year, far beyond any sensible timeout and far inside `Int64`.
    static let maxDurationSeconds: Double = 365 * 24 * 3600

    /// `8192`, `64KiB`, `16MiB`, `1GiB`, `10KB`, `5MB`, `1GB`.
    static func parseSize(_ text: String) -> Int? {
        let units: [(String, Int)] = [
            ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("KB", 1000), ("MB", 1_000_000),
            ("GB", 1_000_000_000),
        ]
        for (suffix, multiplier) in units where text.hasSuffix(suffix) {
            guard let number = Int(text.dropLast(suffix.count)) else { return nil }
            let (product, overflow) = number.multipliedReportingOverflow(by: multiplier)
            return overflow ? nil : product
        }
        return Int(text)
    }
}

/// A configuration value that is wrong: which key, where it came from, and why. `ringside` exits with status 2.
struct ConfigurationError: Error, CustomStringConvertible {
    var key: String
    var source: String
    var reason: String

    var description: String { "invalid configuration: \(key) (from \(source)): \(reason)" }
}
