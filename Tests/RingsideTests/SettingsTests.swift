import Foundation
import Logging
import RingsideCluster
import RingsideProxy
import RingsideTestSupport
import Testing

@testable import ringside

@Suite("Settings")
struct SettingsTests {
    @Test func noSettingsAtAllIsTheEmbeddedDefault() throws {
        let settings = try RingsideSettings.load(configFile: nil, environment: [:], flags: [:])
        #expect(settings.listen.description == "127.0.0.1:7400")
        #expect(settings.clusterListen.description == "0.0.0.0:7401")
        #expect(settings.adminListen.description == "127.0.0.1:7402")
        #expect(settings.backend.description == "127.0.0.1:8080")
        #expect(settings.keyHeader == "X-Shard-Key")
        #expect(settings.join.isEmpty)
        #expect(settings.role == .participant)
        #expect(!settings.nodeName.isEmpty)
        #expect(settings.appIO == ProxyConfiguration(nodeName: "").appIO)
    }

    @Test func flagsWinOverTheEnvironmentWhichWinsOverTheFile() throws {
        let file = NSTemporaryDirectory() + "ringside-\(UInt32.random(in: 0 ... .max)).yaml"
        try "listen: 127.0.0.1:1001\nreplicas: 2\njoin:\n  - a:7401\n  - dnssrv+_gossip._tcp.ringside\n".write(
            toFile: file,
            atomically: true,
            encoding: .utf8
        )
        defer { try? FileManager.default.removeItem(atPath: file) }
        let environment = ["RINGSIDE_LISTEN": "127.0.0.1:1002", "RINGSIDE_ROLE": "viewer"]
        let fromFile = try RingsideSettings.load(configFile: file, environment: [:], flags: [:])
        #expect(fromFile.listen.port == 1001)
        #expect(fromFile.replicas == 2)
        #expect(fromFile.join == ["a:7401", "dnssrv+_gossip._tcp.ringside"])
        let fromEnvironment = try RingsideSettings.load(configFile: file, environment: environment, flags: [:])
        #expect(fromEnvironment.listen.port == 1002)
        #expect(fromEnvironment.role == .viewer)
        let fromFlags = try RingsideSettings.load(
            configFile: file,
            environment: environment,
            flags: ["listen": "127.0.0.1:1003"]
        )
        #expect(fromFlags.listen.port == 1003)
        #expect(fromFlags.replicas == 2)
    }

    @Test(
        arguments: [
            (["replicas": "0"], "replicas (from --replicas)"),
            (["backend": "ftp://x:1"], "backend (from --backend)"),
            (["tls-cert": "app.pem"], "tls-key (from --tls-cert): is needed with tls-cert"),
            (["cluster-tls-cert": "n.pem", "cluster-tls-key": "n-key.pem"], "cluster-tls-ca (from --cluster-tls"),
            (["backend-tls-ca": "ca.pem"], "backend (from default)"),
            (["admin-listen": "0.0.0.0:7402"], "admin-listen (from --admin-listen)"),
            (["request-timeout": "soon"], "request-timeout (from --request-timeout)"),
            (["max-body-bytes": "lots"], "max-body-bytes (from --max-body-bytes)"),
            (["join": "a:1,not an address"], "join (from --join)"),
            (["missing-key": "drop"], "missing-key (from --missing-key)"),
            (["log-level": "loud"], "log-level (from --log-level)"),
            (["app-io": "io_uring"], "app-io (from --app-io)"),
            (["advertise": "0.0.0.0:7401"], "advertise (from --advertise)"),
            (["advertise": "[::]:7401"], "advertise (from --advertise)"),
            (["advertise": "10.0.0.1:0"], "advertise (from --advertise)"),
            (["key-header": "Content-Length"], "key-header (from --key-header)"),
            (["key-header": "transfer-encoding"], "key-header (from --key-header)"),
            (["key-header": "Host"], "key-header (from --key-header)"),
            (["key-header": "Connection"], "key-header (from --key-header)"),
            (["key-header": "x-ringside-hop"], "key-header (from --key-header)"),
            (["key-header": "X-Ringside-Key"], "key-header (from --key-header)"),
            (["key-header": "Schlüssel"], "key-header (from --key-header)"),
            (["key-header": "X Key"], "key-header (from --key-header)"),
            (["node-name": "node\u{1B}[2J"], "node-name (from --node-name)"),
            (["node-name": "node\u{7F}"], "node-name (from --node-name)"),
            (["node-name": "cafe\u{301}"], "node-name (from --node-name)"),
            (["node-name": "n\u{202E}live"], "node-name (from --node-name)"),
            (["drain-timeout": "1e30s"], "drain-timeout (from --drain-timeout)"),
        ]
    )
    func invalidValuesNameTheKeyAndWhereTheyCameFrom(flags: [String: String], expected: String) {
        let error = #expect(throws: ConfigurationError.self) {
            try RingsideSettings.load(configFile: nil, environment: [:], flags: flags)
        }
        #expect(error?.description.contains(expected) == true)
    }

    @Test func theKeyHeaderMayBeAnyTokenThatIsNotTheProxysOwn() throws {
        for name in ["X-Tenant.Id", "X_Shard_Key", "tenant~id", "K"] {
            let settings = try RingsideSettings.load(configFile: nil, environment: [:], flags: ["key-header": name])
            #expect(settings.keyHeader == name)
        }
    }

    @Test func environmentErrorsNameTheVariable() {
        let error = #expect(throws: ConfigurationError.self) {
            try RingsideSettings.load(configFile: nil, environment: ["RINGSIDE_ADMIN_LISTEN": "7402"], flags: [:])
        }
        #expect(error?.description.contains("admin-listen (from RINGSIDE_ADMIN_LISTEN)") == true)
    }

    @Test func unknownKeysInTheFileAreErrors() throws {
        let file = NSTemporaryDirectory() + "ringside-\(UInt32.random(in: 0 ... .max)).yaml"
        try "listen: 127.0.0.1:7400\nlisten-port: 7400\n".write(toFile: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: file) }
        let error = #expect(throws: ConfigurationError.self) {
            try RingsideSettings.load(configFile: file, environment: [:], flags: [:])
        }
        #expect(error?.key == "listen-port")
        try "node-nmae: a\n".write(toFile: file, atomically: true, encoding: .utf8)
        let typo = #expect(throws: ConfigurationError.self) {
            try RingsideSettings.load(configFile: file, environment: [:], flags: [:])
        }
        #expect(typo?.description.contains("did you mean node-name?") == true, "\(typo?.description ?? "")")
    }

    /// `node-name:` with nothing after it is unset, as an empty line would be, not the text "<null>".
    @Test func aKeyWithoutAValueInTheFileIsUnset() throws {
        let file = NSTemporaryDirectory() + "ringside-\(UInt32.random(in: 0 ... .max)).yaml"
        try "node-name:\nlisten: 127.0.0.1:7400\n".write(toFile: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: file) }
        let settings = try RingsideSettings.load(configFile: file, environment: [:], flags: [:])
        #expect(settings.nodeName == ProcessInfo.processInfo.hostName)
        #expect(settings.listen.port == 7400)
        // Values keep the text they were written with.
        try "node-name: 1e3\n".write(toFile: file, atomically: true, encoding: .utf8)
        #expect(try RingsideSettings.load(configFile: file, environment: [:], flags: [:]).nodeName == "1e3")
        // A key that is not a name, or a key given twice, is invalid configuration, not a crash.
        for text in ["[a]: b\n", "{a: 1}: b\n", "? [a]\n: b\n", "listen: 127.0.0.1:1\nlisten: 127.0.0.1:2\n"] {
            try text.write(toFile: file, atomically: true, encoding: .utf8)
            #expect(throws: ConfigurationError.self, "\(text)") {
                try RingsideSettings.load(configFile: file, environment: [:], flags: [:])
            }
        }
    }

    /// Names and metadata come from other nodes; a table shows their control characters instead of sending them to
    /// the terminal.
    @Test func tableCellsEscapeControlCharacters() {
        #expect(cell("node\u{1B}[2J") == "node\\u{1B}[2J")
        #expect(cell(["zone\n": "a\u{7}"]) == "zone\\n=a\\u{07}")
        #expect(cell("plain ünïcode") == "plain ünïcode")
        #expect(cell("a\u{202E}b\u{2028}") == "a\\u{202E}b\\u{2028}")
        #expect(cell(#"\u{1B}"#) == #"\\u{1B}"#, "a backslash cannot pass for an escape")
    }

    @Test func unknownRingsideVariablesAreNamedWithTheNearestSetting() throws {
        let settings = try RingsideSettings.load(
            configFile: nil,
            environment: [
                "RINGSIDE_NODE_NAM": "a", "RINGSIDE_ADMIN": "127.0.0.1:7402", "RINGSIDE_QQQQQQQQQQQQ": "b",
                "RINGSIDE_LOG_FORMAT": "json", "HOME": "/root",
            ],
            flags: [:]
        )
        #expect(settings.logFormat == .json)
        let unknown = settings.unknownVariables.map { "\($0.name)->\($0.nearest ?? "none")" }
        #expect(unknown == ["RINGSIDE_NODE_NAM->RINGSIDE_NODE_NAME", "RINGSIDE_QQQQQQQQQQQQ->none"])
    }

    @Test func logLinesAreLogfmtOrJSONWithTheirMetadata() {
        let fields = [("msg", "refused gossip"), ("ringside.peer", "node \"2\""), ("ringside.count", "3")]
        #expect(
            LineLogHandler.logfmt(fields) == #"msg="refused gossip" ringside.peer="node \"2\"" ringside.count=3"# + "\n"
        )
        #expect(
            LineLogHandler.json(fields)
                == #"{"msg":"refused gossip","ringside.peer":"node \"2\"","ringside.count":"3"}"# + "\n"
        )
        #expect(LineLogHandler.escaped("a\u{01}\n") == "a\\u0001\\n")
    }

    @Test func anH2cBackendSpeaksHTTP2() throws {
        let h2c = try RingsideSettings.load(
            configFile: nil,
            environment: [:],
            flags: ["backend": "h2c://127.0.0.1:50051"]
        )
        #expect(h2c.backendSpeaksHTTP2)
        #expect(h2c.backend.port == 50051)
        let plain = try RingsideSettings.load(configFile: nil, environment: [:], flags: [:])
        #expect(!plain.backendSpeaksHTTP2)
    }

    @Test func sizesAndDurationsParse() {
        #expect(RingsideSettings.parseSize("64KiB") == 65_536)
        #expect(RingsideSettings.parseSize("5MB") == 5_000_000)
        #expect(RingsideSettings.parseSize("12") == 12)
        #expect(RingsideSettings.parseSize("9999999999GiB") == nil)
        #expect(RingsideSettings.parseDuration("500ms") == .milliseconds(500))
        #expect(RingsideSettings.parseDuration("2m") == .seconds(120))
        #expect(RingsideSettings.parseDuration("1.5") == .milliseconds(1500))
        #expect(RingsideSettings.parseDuration("-1s") == nil)
        #expect(RingsideSettings.parseDuration("8760h") == .seconds(365 * 24 * 3600))
        for tooLong in ["8761h", "1e30s", "1e30", "1e300ms", "inf", "nan"] {
            #expect(RingsideSettings.parseDuration(tooLong) == nil, "\(tooLong)")
        }
    }

    @Test func anHTTPSBackendAndTLSFilesAreSettings() throws {
        let settings = try RingsideSettings.load(
            configFile: nil,
            environment: [:],
            flags: [
                "backend": "https://api.internal:8443", "backend-tls-ca": "/etc/ca.pem", "tls-cert": "/a.pem",
                "tls-key": "/a-key.pem", "admin-listen": "0.0.0.0:7402",
            ]
        )
        #expect(settings.backendTLS)
        #expect(settings.backendTLSCA == "/etc/ca.pem")
        #expect(settings.backend.host == "api.internal")
        #expect(settings.tls == TLSFiles(certificate: "/a.pem", key: "/a-key.pem"))
        #expect(settings.clusterTLS == nil)
        // Beyond loopback, a token file protects the admin plane as well as TLS does.
        _ = try RingsideSettings.load(
            configFile: nil,
            environment: [:],
            flags: ["admin-listen": "0.0.0.0:7402", "admin-token-file": "/token"]
        )
    }

    @Test func certificateFilesThatDoNotLoadNameTheirKey() throws {
        let directory = TestCA.temporaryDirectory()
        let ca = try TestCA(directory: directory)
        let node = try ca.issue(["n1"], file: "n1")
        let garbage = directory.appendingPathComponent("garbage.pem").path
        try "not a certificate".write(toFile: garbage, atomically: true, encoding: .utf8)
        let other = try ca.issue(["n2"], file: "n2")
        let cases: [([String: String], String)] = [
            (
                ["cluster-tls-cert": node.certificate, "cluster-tls-key": node.key, "cluster-tls-ca": "/nonexistent"],
                "cluster-tls-ca"
            ),
            (
                ["cluster-tls-cert": garbage, "cluster-tls-key": node.key, "cluster-tls-ca": node.certificate],
                "cluster-tls-cert"
            ),
            // A node's own certificate is no CA: nothing would ever verify against it.
            (
                [
                    "cluster-tls-cert": node.certificate, "cluster-tls-key": node.key,
                    "cluster-tls-ca": other.certificate,
                ],
                "cluster-tls-ca"
            ),
            (["tls-cert": node.certificate, "tls-key": other.key], "tls-key"),
            (["tls-cert": node.certificate, "tls-key": garbage], "tls-key"),
        ]
        for (flags, key) in cases {
            let settings = try RingsideSettings.load(configFile: nil, environment: [:], flags: flags)
            let error = #expect(throws: ConfigurationError.self) {
                _ = try NodeSecurity(settings, logger: Logger(label: "test"))
            }
            #expect(error?.key == key, "\(flags): \(error?.description ?? "no error")")
        }
        let token = directory.appendingPathComponent("token").path
        try "short".write(toFile: token, atomically: true, encoding: .utf8)
        let settings = try RingsideSettings.load(configFile: nil, environment: [:], flags: ["admin-token-file": token])
        let error = #expect(throws: ConfigurationError.self) {
            _ = try NodeSecurity(settings, logger: Logger(label: "t"))
        }
        #expect(error?.key == "admin-token-file")
    }
}
