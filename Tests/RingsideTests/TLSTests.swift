import Foundation
import RingsideTestSupport
import Testing

/// A cluster CA made for one test, its bundle written, and certificates issued to node names on demand.
struct ClusterPKI {
    let directory = TestCA.temporaryDirectory()
    let ca: TestCA

    init(name: String = "cluster CA") throws {
        ca = try TestCA(name: name, directory: directory)
        try ca.writeBundle()
    }

    /// The mutual-TLS flags of a node whose certificate carries `names` (by default, just `name`), valid as given.
    func flags(
        for name: String,
        names: [String]? = nil,
        notValidBefore: Date = Date() - 3600,
        notValidAfter: Date = Date() + 86_400
    ) throws -> [String] {
        let files = try ca.issue(
            names ?? [name],
            file: name,
            notValidBefore: notValidBefore,
            notValidAfter: notValidAfter
        )
        return ["--cluster-tls-cert", files.certificate, "--cluster-tls-key", files.key, "--cluster-tls-ca", ca.bundle]
    }
}

extension RingsideProcesses {
    /// The value of the metric line that starts with `series` (name and labels) on `node`, 0 when absent.
    func metric(_ node: Node, _ series: String) -> Double {
        guard let text = admin(node, "/metrics") else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.split(separator: " ").last ?? "") ?? 0
        }
        return 0
    }

    /// The names in `node`'s view.
    func view(_ node: Node) -> [String] {
        let body = admin(node, "/v1/peers") ?? ""
        return body.components(separatedBy: "\"name\":\"").dropFirst().compactMap { $0.split(separator: "\"").first }
            .map(String.init)
    }
}

/// A `ringside run` started beside a test cluster (an intruder, say) or alone, its log kept in a file.
final class ExtraNode {
    let app = freePort()
    let admin = freePort()
    let cluster = freePort()
    let process: Process
    let logPath: String
    /// Where its standard output goes (the access log, with `--access-log`).
    let outputPath: String

    /// A node named `name` that joins the cluster port `seed` (none: alone), its cluster and admin planes listening
    /// on `clusterHost` and `adminHost`, with `arguments` added.
    init(
        name: String,
        joining seed: Int? = nil,
        clusterHost: String = "127.0.0.1",
        adminHost: String = "127.0.0.1",
        directory: URL,
        arguments: [String]
    ) throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        logPath = directory.appendingPathComponent("\(name)-extra.log").path
        outputPath = directory.appendingPathComponent("\(name)-extra.out").path
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        _ = FileManager.default.createFile(atPath: outputPath, contents: nil)
        process = RingsideProcesses.process(
            [
                "run", "--node-name", name, "--listen", "127.0.0.1:\(app)",
                "--cluster-listen", "\(clusterHost):\(cluster)", "--admin-listen", "\(adminHost):\(admin)",
                "--backend", "http://127.0.0.1:\(freePort())",
                "--participate-immediately", "true", "--rejoin-interval", "1s", "--log-level", "warning",
            ] + (seed.map { ["--join", "127.0.0.1:\($0)"] } ?? []) + arguments,
            errors: try FileHandle(forWritingTo: URL(fileURLWithPath: logPath)),
            output: try FileHandle(forWritingTo: URL(fileURLWithPath: outputPath))
        )
        try process.run()
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
    var output: String { (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "" }

    /// The status and body of a request to the admin plane.
    func admin(_ path: String, method: String = "GET", authorization: String? = nil) -> TestResponse? {
        adminRequest(admin, method, path, authorization: authorization)
    }

    func stop() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }
}

@Suite("Mutual TLS between ringside processes", .serialized)
struct ClusterTLSTests {
    /// The certificates come from `deploy/tls/make-certs`, as the README's three-node mTLS cluster does.
    @Test func aThreeNodeMutualTLSClusterRoutesEveryKeyFromEveryEntryNode() async throws {
        let directory = TestCA.temporaryDirectory().path
        let script = Process()
        script.executableURL = RingsideProcesses.repository.appendingPathComponent("deploy/tls/make-certs")
        script.arguments = [directory, "node-0", "node-1", "node-2"]
        script.standardOutput = FileHandle.nullDevice
        script.standardError = FileHandle.nullDevice
        try script.run()
        script.waitUntilExit()
        #expect(script.terminationStatus == 0)
        let flags = (0..<3).map { index in
            [
                "--cluster-tls-cert", "\(directory)/node-\(index).pem", "--cluster-tls-key",
                "\(directory)/node-\(index)-key.pem", "--cluster-tls-ca", "\(directory)/ca.pem",
            ]
        }
        try await withProcesses(3, extraArguments: [0: flags[0], 1: flags[1], 2: flags[2]]) { cluster in
            for index in 0..<30 {
                let key = "account-\(index)"
                let owner = try #require(cluster.owner(of: key, askingNode: cluster.nodes[0]))
                for node in cluster.nodes {
                    let response = try #require(cluster.get("/accounts/\(index)", key: key, through: node))
                    #expect(response.status == 200)
                    #expect(response.header("x-ringside-node") == owner)
                }
            }
            let state = try #require(cluster.admin(cluster.nodes[0], "/v1/state"))
            #expect(state.contains(#""cluster_auth":"mtls""#))
            let expiry = cluster.metric(cluster.nodes[0], #"ringside_tls_certificate_expiry_seconds{plane="cluster"}"#)
            #expect(expiry > 86_400 * 300, "make-certs issues for a year")
            let ok = cluster.metric(cluster.nodes[0], #"ringside_tls_handshakes_total{plane="cluster",result="ok"}"#)
            #expect(ok > 0)
        }
    }

    @Test func aPlaintextClientOnTheClusterPortIsRefusedWithOrWithoutTheHopHeader() async throws {
        let pki = try ClusterPKI()
        try await withProcesses(1, extraArguments: [0: try pki.flags(for: "node-0")]) { cluster in
            let node = cluster.nodes[0]
            for extra in ["", "x-ringside-hop: mallory\r\n", "x-ringside-hop: mallory\r\nx-ringside-final: 1\r\n"] {
                let raw = rawExchange(
                    port: node.cluster,
                    Array("GET /secret HTTP/1.1\r\nHost: a\r\nX-Shard-Key: k\r\n\(extra)\r\n".utf8),
                    untilClosed: true
                )
                #expect(raw.closed)
                #expect(parseResponse(raw.bytes, closed: true)?.status == nil, "a plaintext request got an answer")
            }
            // A TLS client that trusts the cluster's CA but has no certificate of its own is refused too.
            let anonymous = try await tlsExchange(
                port: node.cluster,
                Array("GET / HTTP/1.1\r\nHost: a\r\nx-ringside-hop: mallory\r\n\r\n".utf8),
                ca: pki.ca.bundle
            )
            #expect(anonymous.response == nil)
            let plaintext = #"ringside_tls_handshakes_total{plane="cluster",result="plaintext"}"#
            #expect(cluster.metric(node, plaintext) == 3)
            let untrusted = #"ringside_tls_handshakes_total{plane="cluster",result="untrusted"}"#
            #expect(await eventually { cluster.metric(node, untrusted) >= 1 })
        }
    }

    @Test func aNodeWithACertificateFromAnotherCACannotJoin() async throws {
        let pki = try ClusterPKI()
        let foreign = try ClusterPKI(name: "another CA")
        let flags = try (0..<2).map { try pki.flags(for: "node-\($0)") }
        try await withProcesses(2, extraArguments: [0: flags[0], 1: flags[1]]) { cluster in
            let intruder = try ExtraNode(
                name: "intruder",
                joining: cluster.nodes[0].cluster,
                directory: pki.directory,
                arguments: try foreign.flags(for: "intruder")
            )
            defer { intruder.stop() }
            // Refused at every attempt: wait for three (it rejoins every second).
            let untrusted = #"ringside_tls_handshakes_total{plane="cluster",result="untrusted"}"#
            #expect(await eventually { cluster.metric(cluster.nodes[0], untrusted) >= 3 })
            for node in cluster.nodes { #expect(cluster.view(node).sorted() == ["node-0", "node-1"]) }
            #expect(intruder.log.contains("the seeds have not answered"))
        }
    }

    @Test func aNodeSpeakingUnderAnotherNodesNameWithItsOwnValidCertificateIsRefused() async throws {
        let pki = try ClusterPKI()
        let flags = try (0..<2).map { try pki.flags(for: "node-\($0)") }
        try await withProcesses(2, extraArguments: [0: flags[0], 1: flags[1]]) { cluster in
            // A certificate of the cluster's CA, for "mallory", used to speak as node-1 and as a new name.
            for name in ["node-1", "node-7"] {
                let impostor = try ExtraNode(
                    name: name,
                    joining: cluster.nodes[0].cluster,
                    directory: pki.directory,
                    arguments: try pki.flags(for: "mallory-\(name)", names: ["mallory"])
                )
                defer { impostor.stop() }
                let before = cluster.metric(cluster.nodes[0], "ringside_gossip_impersonations_total")
                #expect(
                    await eventually {
                        cluster.metric(cluster.nodes[0], "ringside_gossip_impersonations_total") >= before + 3
                    }
                )
                for node in cluster.nodes {
                    #expect(cluster.view(node).sorted() == ["node-0", "node-1"])
                    let peers = cluster.admin(node, "/v1/peers") ?? ""
                    #expect(!peers.contains("127.0.0.1:\(impostor.cluster)"))
                }
            }
            let mismatches = #"ringside_tls_handshakes_total{plane="cluster",result="name_mismatch"}"#
            #expect(cluster.metric(cluster.nodes[0], mismatches) >= 2, "one a connection, for each impostor")
        }
    }

    @Test func anExpiredCertificateIsRefusedWithALogLineThatSaysSo() async throws {
        let pki = try ClusterPKI()
        try await withProcesses(1, extraArguments: [0: try pki.flags(for: "node-0")], logDirectory: pki.directory) {
            cluster in
            let expired = try ExtraNode(
                name: "node-9",
                joining: cluster.nodes[0].cluster,
                directory: pki.directory,
                arguments: try pki.flags(
                    for: "node-9",
                    notValidBefore: Date() - 86_400 * 2,
                    notValidAfter: Date() - 86_400
                )
            )
            defer { expired.stop() }
            let series = #"ringside_tls_handshakes_total{plane="cluster",result="expired"}"#
            #expect(await eventually { cluster.metric(cluster.nodes[0], series) >= 1 })
            let log = cluster.log(cluster.nodes[0])
            #expect(log.contains("refused a TLS connection") && log.contains("expired"))
            #expect(await eventually { expired.log.contains("this node's certificate has expired") })
            #expect(cluster.view(cluster.nodes[0]) == ["node-0"])
        }
    }

    @Test func rotatingEveryNodesCertificateWhileRequestsFlowLosesNone() async throws {
        let pki = try ClusterPKI()
        let flags = try (0..<3).map { try pki.flags(for: "node-\($0)") }
        try await withProcesses(3, extraArguments: [0: flags[0], 1: flags[1], 2: flags[2]]) { cluster in
            let load = KeyedLoad(entries: cluster.nodes.map(\.app), keys: 300)
            let workers = (0..<3).map { _ in Thread { load.run() } }
            for worker in workers { worker.start() }
            defer { load.stop() }
            #expect(await eventually { load.outcome.answered >= 200 })
            // A client certificate to look at what each cluster port presents.
            let probe = try pki.ca.issue(["probe"], file: "probe")
            func serial(_ node: RingsideProcesses.Node) async -> [UInt8]? {
                let exchange = try? await tlsExchange(
                    port: node.cluster,
                    [],
                    ca: pki.ca.bundle,
                    certificate: probe.certificate,
                    key: probe.key,
                    timeout: .milliseconds(200)
                )
                return exchange?.serverSerial
            }
            var old: [[UInt8]?] = []
            for node in cluster.nodes { old.append(await serial(node)) }
            for (index, node) in cluster.nodes.enumerated() {
                // New key and certificate written over the old files; node-0 notices by itself, the others on SIGHUP.
                try pki.ca.issue([node.name], file: node.name)
                if index > 0 { cluster.signal(node, SIGHUP) }
            }
            for (index, node) in cluster.nodes.enumerated() {
                let rotated = await eventuallyAsync {
                    let current = await serial(node)
                    return current != nil && current != old[index]
                }
                #expect(rotated, "\(node.name) still presents its old certificate")
            }
            let rotated = load.outcome.answered
            #expect(await eventually { load.outcome.answered >= rotated + 200 })
            let outcome = load.stop()
            #expect(outcome.failures.isEmpty, "\(outcome.failures.prefix(5))")
            #expect(cluster.nodes.allSatisfy { $0.process.isRunning })
        }
    }

    @Test func theAdminPlaneBeyondLoopbackRefusesARequestWithoutTheToken() async throws {
        let directory = TestCA.temporaryDirectory()
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let tokenFile = directory.appendingPathComponent("token").path
        let token = "s3cret-token-\(UInt64.random(in: 0 ... .max))"
        try "\(token)\n".write(toFile: tokenFile, atomically: true, encoding: .utf8)
        let node = try ExtraNode(
            name: "alone",
            adminHost: "0.0.0.0",
            directory: directory,
            arguments: ["--admin-token-file", tokenFile]
        )
        defer { node.stop() }
        #expect(await eventually { node.admin("/livez")?.status == 200 })
        #expect(node.admin("/readyz")?.status != 401)
        for path in ["/v1/state", "/metrics", "/v1/peers"] {
            let refused = node.admin(path)
            #expect(refused?.status == 401, "\(path)")
            #expect(refused?.header("www-authenticate") == "Bearer")
            #expect(node.admin(path, authorization: "Bearer wrong-\(token)")?.status == 401)
            #expect(node.admin(path, authorization: "Bearer \(token.dropLast())")?.status == 401)
            #expect(node.admin(path, authorization: "Bearer \(token)")?.status == 200, "\(path)")
        }
        #expect(node.admin("/v1/drain", method: "POST")?.status == 401)
        #expect(node.process.isRunning)
    }

    @Test func theAdminPlaneBeyondLoopbackSpeaksTLSWithTheAppPlanesCertificate() async throws {
        let directory = TestCA.temporaryDirectory()
        let ca = try TestCA(directory: directory)
        try ca.writeBundle()
        let app = try ca.issue(["localhost", "127.0.0.1"], file: "app")
        let node = try ExtraNode(
            name: "alone",
            adminHost: "0.0.0.0",
            directory: directory,
            arguments: ["--tls-cert", app.certificate, "--tls-key", app.key]
        )
        defer { node.stop() }
        func state() async -> TLSExchange? {
            try? await tlsExchange(
                port: node.admin,
                Array("GET /v1/state HTTP/1.1\r\nHost: a\r\n\r\n".utf8),
                ca: ca.bundle
            )
        }
        #expect(await eventuallyAsync { await state()?.response?.status == 200 })
        // Plaintext gets no answer from it.
        #expect(node.admin("/v1/state") == nil)
        // TLS without a token lets any client drain the node: said at start.
        #expect(node.log.contains("the admin plane beyond loopback has TLS but no token"))
    }

    @Test func aPlaintextClusterPortBeyondLoopbackIsWarnedAbout() async throws {
        let node = try ExtraNode(
            name: "open",
            clusterHost: "0.0.0.0",
            directory: TestCA.temporaryDirectory(),
            arguments: []
        )
        defer { node.stop() }
        #expect(
            await eventually {
                node.admin("/v1/state").map { String(decoding: $0.body, as: UTF8.self) }?.contains(
                    #""cluster_auth":"none""#
                ) == true
            }
        )
        #expect(
            await eventually {
                node.log.contains("any host that reaches it can join the cluster and reach the backend")
            }
        )
    }
}
