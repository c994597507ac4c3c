import Foundation
import Testing
import Yams

@testable import ringside

/// The example configurations and the deploy kit, checked against the contract they rely on: every file loads through
/// the real configuration parser, every flag a manifest passes is a setting, probes and ports meet, and a drain fits in
/// the time its supervisor gives it.
@Suite("Config/ and deploy/")
struct DeployKitTests {
    static let repository = RingsideProcesses.repository

    static func read(_ path: String) throws -> String {
        try String(contentsOf: repository.appendingPathComponent(path), encoding: .utf8)
    }

    /// Every `Config/` file, by path from the repository.
    static var configFiles: [String] {
        let root = repository.appendingPathComponent("Config")
        let walker = FileManager.default.enumerator(atPath: root.path)
        return (walker?.allObjects as? [String] ?? []).filter { $0.hasSuffix(".yaml") }.sorted().map { "Config/\($0)" }
    }

    @Test func everyExampleConfigurationLoads() throws {
        #expect(Set(Self.configFiles).isSuperset(of: ["Config/single-node.yaml", "Config/tls.yaml"]))
        for path in Self.configFiles {
            let file = Self.repository.appendingPathComponent(path).path
            #expect(throws: Never.self, "\(path)") {
                _ = try RingsideSettings.load(configFile: file, environment: [:], flags: [:])
            }
        }
    }

    @Test func theThreeNodesShareOneMachineAndFindEachOther() throws {
        let nodes = try (1...3).map {
            try RingsideSettings.load(
                configFile: Self.repository.appendingPathComponent("Config/three-nodes/node-\($0).yaml").path,
                environment: [:],
                flags: [:]
            )
        }
        let ports = nodes.flatMap { [$0.listen.port, $0.clusterListen.port, $0.adminListen.port] }
        #expect(Set(ports).count == 9, "nine distinct ports: \(ports)")
        #expect(Set(nodes.map(\.nodeName)).count == 3)
        for node in nodes {
            #expect(node.join.contains("127.0.0.1:\(nodes[0].clusterListen.port)"), "\(node.nodeName) joins node-1")
        }
    }

    /// The Ringside container of a pod template (a container or a native sidecar), the pod spec and its annotations.
    static func ringside(
        in manifest: String
    ) throws -> (pod: [String: Any], container: [String: Any], annotations: [String: Any]) {
        for document in try Yams.load_all(yaml: try read(manifest)) {
            guard let object = document as? [String: Any], object["kind"] as? String == "Deployment",
                let spec = object["spec"] as? [String: Any], let template = spec["template"] as? [String: Any],
                let pod = template["spec"] as? [String: Any]
            else { continue }
            let containers =
                (pod["containers"] as? [[String: Any]] ?? []) + (pod["initContainers"] as? [[String: Any]] ?? [])
            if let container = containers.first(where: { $0["name"] as? String == "ringside" }) {
                let metadata = template["metadata"] as? [String: Any]
                return (pod, container, metadata?["annotations"] as? [String: Any] ?? [:])
            }
        }
        throw TestFailure("\(manifest) has no Deployment with a ringside container")
    }

    @Test(arguments: ["deploy/kubernetes/pod-sidecar.yaml", "deploy/kubernetes/pod-native-sidecar.yaml"])
    func aPodManifestKeepsToTheContract(manifest: String) throws {
        let (pod, container, annotations) = try Self.ringside(in: manifest)
        let arguments = container["args"] as? [String] ?? []
        #expect(arguments.first == "run")
        // Every flag is a setting, with its value after it.
        var flags: [String: String] = [:]
        var index = 1
        while index < arguments.count {
            let flag = arguments[index]
            #expect(flag.hasPrefix("--"), "\(manifest): \(flag) is not a flag")
            let name = String(flag.dropFirst(2))
            #expect(RingsideSettings.keys.contains { $0.name == name }, "\(manifest): --\(name) is no setting")
            flags[name] = index + 1 < arguments.count ? arguments[index + 1] : ""
            index += 2
        }
        let settings = try RingsideSettings.load(
            configFile: nil,
            environment: [:],
            flags: flags.mapValues {
                $0.replacingOccurrences(of: "$(POD_NAME)", with: "pod-0")
                    .replacingOccurrences(of: "$(POD_IP)", with: "10.0.0.1")
                    .replacingOccurrences(of: "$(POD_NAMESPACE)", with: "default")
            }
        )
        // The probes ask the admin plane, on the port it listens on.
        let ports = container["ports"] as? [[String: Any]] ?? []
        let admin = try #require(ports.first { $0["name"] as? String == "admin" }?["containerPort"] as? Int)
        #expect(admin == settings.adminListen.port)
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/livez")] {
            let get = (container[probe] as? [String: Any])?["httpGet"] as? [String: Any]
            #expect(get?["path"] as? String == path, "\(manifest): \(probe)")
            #expect(get?["port"] as? String == "admin" || get?["port"] as? Int == admin, "\(manifest): \(probe)")
        }
        let gossip = ports.first { $0["name"] as? String == "gossip" }?["containerPort"] as? Int
        #expect(gossip == settings.clusterListen.port)
        // The pod stops by draining, and has the time for it.
        let preStop =
            ((container["lifecycle"] as? [String: Any])?["preStop"] as? [String: Any])?["exec"] as? [String: Any]
        let command = preStop?["command"] as? [String] ?? []
        #expect(Array(command.prefix(2)) == ["ringside", "drain"], "\(manifest): \(command)")
        #expect(command.contains("127.0.0.1:\(admin)"))
        let grace = try #require(pod["terminationGracePeriodSeconds"] as? Int)
        #expect(Duration.seconds(grace) > settings.drainTimeout + .seconds(5), "\(manifest): the drain must fit")
        #expect(annotations["prometheus.io/port"] as? String == "\(admin)")
        #expect(annotations["prometheus.io/path"] as? String == "/metrics")
        if manifest.contains("native") { #expect(container["restartPolicy"] as? String == "Always") }
    }

    @Test func theHeadlessServicePublishesTheGossipPortForDNSSeeds() throws {
        let documents = try Yams.load_all(yaml: try Self.read("deploy/kubernetes/service.yaml"))
        let services = documents.compactMap { $0 as? [String: Any] }.filter { $0["kind"] as? String == "Service" }
        let headless = try #require(
            services.first { (($0["spec"] as? [String: Any])?["clusterIP"] as? String) == "None" }
        )
        let spec = headless["spec"] as? [String: Any] ?? [:]
        #expect(spec["publishNotReadyAddresses"] as? Bool == true)
        let ports = spec["ports"] as? [[String: Any]] ?? []
        #expect(ports.contains { $0["name"] as? String == "gossip" && $0["port"] as? Int == 7401 })
        let (_, container, _) = try Self.ringside(in: "deploy/kubernetes/pod-sidecar.yaml")
        let join = (container["args"] as? [String] ?? []).first { $0.hasPrefix("dnssrv+") }
        let name = (headless["metadata"] as? [String: Any])?["name"] as? String ?? "?"
        #expect(join?.hasPrefix("dnssrv+_gossip._tcp.\(name).") == true, "\(join ?? "no dnssrv+ seed")")
    }

    @Test func theSystemdUnitAndTheContainerImageKeepToTheContract() throws {
        let unit = try Self.read("deploy/systemd/ringside.service")
        #expect(unit.contains("ExecStart=/usr/local/bin/ringside run --config /etc/ringside/ringside.yaml"))
        #expect(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"))
        #expect(unit.contains("KillSignal=SIGTERM"), "SIGTERM drains")
        #expect(unit.contains("DynamicUser=yes") && unit.contains("ProtectSystem=strict"))
        let stop = unit.split(separator: "\n").first { $0.hasPrefix("TimeoutStopSec=") }
        let seconds = stop.flatMap { RingsideSettings.parseDuration(String($0.dropFirst("TimeoutStopSec=".count))) }
        let drainTimeout = try #require(RingsideSettings.keys.first { $0.name == "drain-timeout" }?.defaultValue)
        #expect(seconds.map { $0 > RingsideSettings.parseDuration(drainTimeout)! } == true, "the drain must fit")

        let image = try Self.read("deploy/container/Containerfile")
        #expect(image.contains("EXPOSE 7400 7401 7402"))
        #expect(image.contains("--static-swift-stdlib"))
        let user = image.split(separator: "\n").last { $0.hasPrefix("USER ") }
        #expect(user != nil && user != "USER root" && user != "USER 0", "the image runs as another user than root")
    }

    /// Every metric the dashboard draws is one Ringside exports.
    @Test func theDashboardDrawsOnlyMetricsThatExist() throws {
        let dashboard = try Self.read("deploy/grafana/ringside.json")
        _ = try JSONSerialization.jsonObject(with: Data(dashboard.utf8))
        var exported: Set<String> = []
        let sources = Self.repository.appendingPathComponent("Sources")
        for case let path as String in FileManager.default.enumerator(atPath: sources.path)!
        where path.hasSuffix(".swift") {
            let text = try String(contentsOf: sources.appendingPathComponent(path), encoding: .utf8)
            for match in text.matches(of: /label: "(ringside_[a-z_]+)"/) { exported.insert(String(match.1)) }
        }
        let drawn = Set(dashboard.matches(of: /ringside_[a-z_]+/).map { String($0.0) })
        #expect(!drawn.isEmpty)
        for name in drawn {
            let base = name.replacing(/_(bucket|sum|count)$/, with: "")
            #expect(exported.contains(base), "the dashboard draws \(name), which Ringside does not export")
        }
    }
}
