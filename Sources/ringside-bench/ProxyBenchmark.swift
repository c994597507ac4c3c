import ArgumentParser
import Foundation
import RingsideTestSupport

/// `ringside-bench proxy`: Ringside's data plane against nginx and HAProxy as keyed proxies, driven by wrk.
struct ProxyBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy",
        abstract: "Compares Ringside's data plane with nginx and HAProxy as keyed proxies (needs nginx, haproxy, wrk).",
        discussion: """
            Starts an nginx backend (one worker, `return 200`), then puts each target in front of it and drives it with
            wrk over many keys (a random X-Shard-Key per request): backend (no proxy), ringside_local (one node, one
            event loop), ringside_forward (two nodes, every key owned by the other: the entry node is a viewer),
            nginx (`hash $http_x_shard_key consistent`, one worker), nginx_chain (two such nginx in a row, to compare
            with ringside_forward), haproxy (`balance hdr(X-Shard-Key)`, `hash-type consistent`, one thread). Over \
            TLS (certificates made for the run): ringside_local_tls, nginx_tls and haproxy_tls take the client's \
            requests over TLS (wrk keeps its connections; TLS 1.3); ringside_forward_mtls is ringside_forward with \
            mutual TLS between the two nodes, nginx_chain_tls the nginx chain with mutual TLS and keep-alive between \
            the two nginx.
            Fields: rps, p50_ms and p99_ms (wrk's latency distribution), cpu_us_per_req (CPU time of the proxy
            processes over the run, per request; cpu_user_us_per_req and cpu_system_us_per_req split it), rss_mb
            (their resident memory after the run). Where the machine's time went, to read the others by: \
            backend_cpu_us_per_req (the backend nginx), client_cpu_us_per_req (wrk) and machine_busy_pct (all CPUs' \
            busy share over the run). With --rounds, the targets are measured in turn that many times and each line \
            says its round. --placement split runs wrk on one CPU and everything else on another (with taskset); each \
            line says its placement.
            Installs nothing: on Debian, apt-get install nginx-light haproxy wrk. Build with -c release.
            """
    )

    @Flag(help: "Print one JSON object per line instead of a table.")
    var json = false

    @Option(help: "Seconds each target is driven for.")
    var duration = 10

    @Option(help: "wrk connections.")
    var connections = 32

    @Option(help: "Distinct keys.")
    var keys = 10_000

    @Option(help: "Times the whole list of targets is measured, in turn (runs drift on a shared machine).")
    var rounds = 1

    @Option(
        help: ArgumentHelp(
            "Where the processes run: shared (anywhere; the scheduler places them) or split (wrk on one CPU, the proxies and the backend on another).",
            valueName: "placement"
        )
    )
    var placement = Placement.shared

    @Option(
        help:
            "The host name or address Ringside nodes are given for the backend (localhost measures a backend named by host name, which the relay loops resolve)."
    )
    var backendHost = "127.0.0.1"

    @Option(parsing: .upToNextOption, help: "Targets to measure.")
    var targets = ["backend", "ringside_local", "ringside_forward", "nginx", "nginx_chain", "haproxy"]

    func run() throws {
        for tool in ["nginx", "haproxy", "wrk"] where Self.which(tool) == nil {
            throw ValidationError(
                "the proxy benchmark needs \(tool) on PATH (Debian: apt-get install nginx-light haproxy wrk)"
            )
        }
        let bench = try Bench(keys: keys, cpus: try placement.cpus())
        defer { bench.stopAll() }
        let backend = try bench.startNginx(name: "backend", config: bench.nginxBackendConfig())
        let backendPIDs = Bench.withChildren(backend.process.processIdentifier)
        var rows: [ResultRow] = []
        for round in 1...max(1, rounds) {
            for target in targets {
                var row = try measure(target, bench: bench, backend: backend, backendPIDs: backendPIDs)
                if rounds > 1 { row["round"] = .integer(round) }
                row["placement"] = .string(placement.rawValue)
                if json { print(row.json) } else { rows.append(row) }
            }
        }
        if !json { printTable(rows) }
    }

    /// Starts `target` in front of `backend`, measures it, and stops it.
    private func measure(
        _ target: String,
        bench: Bench,
        backend: (process: Process, port: Int),
        backendPIDs: [Int32]
    ) throws -> ResultRow {
        let (url, processes): (String, [Process])
        var pids: [Int32] = []
        switch target {
        case "backend":
            (url, processes) = ("http://127.0.0.1:\(backend.port)/", [])
        case "ringside_local":
            let node = try bench.startRingside(name: "solo", backendHost: backendHost, backendPort: backend.port)
            (url, processes) = ("http://127.0.0.1:\(node.app)/", [node.process])
        case "ringside_forward":
            let owner = try bench.startRingside(name: "owner", backendHost: backendHost, backendPort: backend.port)
            let entry = try bench.startRingside(
                name: "entry",
                backendHost: backendHost,
                backendPort: backend.port,
                extra: ["--role", "viewer", "--join", "127.0.0.1:\(owner.cluster)"]
            )
            try bench.waitForParticipants(1, admin: entry.admin)
            (url, processes) = ("http://127.0.0.1:\(entry.app)/", [entry.process, owner.process])
        case "nginx":
            let proxy = try bench.startNginx(
                name: "nginx",
                config: bench.nginxProxyConfig(upstreamPort: backend.port)
            )
            (url, processes) = ("http://127.0.0.1:\(proxy.port)/", [proxy.process])
            pids = Bench.withChildren(proxy.process.processIdentifier)
        case "nginx_chain":
            let second = try bench.startNginx(
                name: "nginx2",
                config: bench.nginxProxyConfig(upstreamPort: backend.port)
            )
            let first = try bench.startNginx(
                name: "nginx1",
                config: bench.nginxProxyConfig(upstreamPort: second.port)
            )
            (url, processes) = ("http://127.0.0.1:\(first.port)/", [first.process, second.process])
            pids =
                Bench.withChildren(first.process.processIdentifier)
                + Bench.withChildren(second.process.processIdentifier)
        case "haproxy":
            let proxy = try bench.startHAProxy(upstreamPort: backend.port)
            (url, processes) = ("http://127.0.0.1:\(proxy.port)/", [proxy.process])
        case "ringside_local_tls":
            let app = try bench.certificates.issue(["127.0.0.1", "localhost"], file: "app")
            let node = try bench.startRingside(
                name: "solo",
                backendHost: backendHost,
                backendPort: backend.port,
                extra: ["--tls-cert", app.certificate, "--tls-key", app.key]
            )
            (url, processes) = ("https://127.0.0.1:\(node.app)/", [node.process])
        case "ringside_forward_mtls":
            let owner = try bench.startRingside(
                name: "owner",
                backendHost: backendHost,
                backendPort: backend.port,
                extra: try bench.clusterTLSFlags("owner")
            )
            let entry = try bench.startRingside(
                name: "entry",
                backendHost: backendHost,
                backendPort: backend.port,
                extra: ["--role", "viewer", "--join", "127.0.0.1:\(owner.cluster)"]
                    + (try bench.clusterTLSFlags("entry"))
            )
            try bench.waitForParticipants(1, admin: entry.admin)
            (url, processes) = ("http://127.0.0.1:\(entry.app)/", [entry.process, owner.process])
        case "nginx_tls":
            let proxy = try bench.startNginx(
                name: "nginx",
                config: try bench.nginxProxyConfig(upstreamPort: backend.port, tls: bench.nginxServerTLS("nginx"))
            )
            (url, processes) = ("https://127.0.0.1:\(proxy.port)/", [proxy.process])
            pids = Bench.withChildren(proxy.process.processIdentifier)
        case "nginx_chain_tls":
            // The second nginx asks the first for a certificate of the CA; the first checks the second's name.
            let second = try bench.startNginx(
                name: "nginx2",
                config: try bench.nginxProxyConfig(
                    upstreamPort: backend.port,
                    tls: bench.nginxServerTLS("nginx2") + bench.nginxClientVerification()
                )
            )
            let first = try bench.startNginx(
                name: "nginx1",
                config: try bench.nginxProxyConfig(
                    upstreamPort: second.port,
                    upstreamTLS: bench.nginxUpstreamTLS("nginx1")
                )
            )
            (url, processes) = ("http://127.0.0.1:\(first.port)/", [first.process, second.process])
            pids =
                Bench.withChildren(first.process.processIdentifier)
                + Bench.withChildren(second.process.processIdentifier)
        case "haproxy_tls":
            let proxy = try bench.startHAProxy(upstreamPort: backend.port, tls: try bench.haproxyCertificate())
            (url, processes) = ("https://127.0.0.1:\(proxy.port)/", [proxy.process])
        default:
            throw ValidationError("unknown target \(target)")
        }
        if pids.isEmpty { pids = processes.map(\.processIdentifier) }
        defer { bench.stop(processes.filter { $0 !== backend.process }) }
        return try bench.measure(
            target,
            url: url,
            pids: pids,
            backendPIDs: backendPIDs,
            duration: duration,
            connections: connections
        )
    }

    static func which(_ tool: String) -> String? {
        for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/sbin:/usr/bin").split(separator: ":") {
            let path = "\(directory)/\(tool)"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        for path in ["/usr/sbin/\(tool)", "/usr/bin/\(tool)"] where FileManager.default.isExecutableFile(atPath: path) {
            return path
        }
        return nil
    }
}

/// Where the benchmark's processes run.
///
/// With two CPUs and three busy processes (wrk, a proxy, the backend), `shared` measures the scheduler's placement as
/// much as the proxy: whichever CPU runs out of work idles until a wake-up reaches it. `split` gives the load generator
/// one CPU and what is under test (the proxies and the backend) another, so that a target's rps follows what a
/// request costs on the CPU under test.
enum Placement: String, ExpressibleByArgument, CaseIterable {
    case shared, split

    /// The CPUs of a split run: the load generator's and the one under test; nil when shared.
    func cpus() throws -> (client: Int, server: Int)? {
        guard self == .split else { return nil }
        // "Cpus_allowed_list:\t0-1,4" in /proc/self/status.
        let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
        let list = status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }?.split(separator: "\t")
            .last
        let allowed = (list ?? "").split(separator: ",").flatMap { range -> [Int] in
            let bounds = range.split(separator: "-").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard let first = bounds.first, let last = bounds.last, first <= last else { return [] }
            return Array(first...last)
        }
        guard allowed.count >= 2 else {
            throw ValidationError("--placement split needs two CPUs; this process may use \(allowed.count)")
        }
        guard ProxyBenchmark.which("taskset") != nil else {
            throw ValidationError("--placement split needs taskset on PATH (Debian: util-linux)")
        }
        return (allowed[0], allowed[1])
    }
}

/// The processes of one proxy benchmark run, in a scratch directory.
final class Bench {
    let directory: URL
    let script: URL
    private var started: [Process] = []

    /// With a split placement, the CPU wrk runs on and the one everything else runs on.
    let cpus: (client: Int, server: Int)?

    init(keys: Int, cpus: (client: Int, server: Int)? = nil) throws {
        self.cpus = cpus
        directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "ringside-bench-\(UInt32.random(in: 0 ... .max))"
        )
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        script = directory.appendingPathComponent("keys.lua")
        try """
        math.randomseed(42)
        request = function()
          return wrk.format("GET", "/", {["X-Shard-Key"] = "key-" .. math.random(1, \(keys))})
        end
        """.write(to: script, atomically: true, encoding: .utf8)
    }

    // MARK: Targets

    func nginxBackendConfig() -> (Int) -> String {
        { port in
            """
            worker_processes 1; daemon off; pid PIDFILE; error_log stderr crit;
            events { worker_connections 4096; }
            http {
              access_log off; keepalive_requests 1000000;
              server { listen 127.0.0.1:\(port); location / { return 200 "ok\\n"; } }
            }
            """
        }
    }

    /// nginx as a keyed proxy; with `tls`, its listener's TLS directives (`ssl` is added to `listen`); with
    /// `upstreamTLS`, the `proxy_ssl_*` directives of TLS to the upstream.
    func nginxProxyConfig(upstreamPort: Int, tls: String? = nil, upstreamTLS: String? = nil) -> (Int) -> String {
        { port in
            """
            worker_processes 1; daemon off; pid PIDFILE; error_log stderr crit;
            events { worker_connections 4096; }
            http {
              access_log off; keepalive_requests 1000000;
              upstream shard { hash $http_x_shard_key consistent; server 127.0.0.1:\(upstreamPort); keepalive 64; keepalive_requests 1000000; }
              server {
                listen 127.0.0.1:\(port)\(tls == nil ? "" : " ssl");
                \(tls ?? "")
                location / {
                  proxy_pass \(upstreamTLS == nil ? "http" : "https")://shard; proxy_http_version 1.1; proxy_set_header Connection "";
                  \(upstreamTLS ?? "")
                }
              }
            }
            """
        }
    }

    // MARK: TLS material, made for the run

    /// The run's CA, made on first use.
    lazy var certificates: TestCA = {
        let ca = try! TestCA(name: "ringside bench CA", directory: directory.appendingPathComponent("pki"))
        try! ca.writeBundle()
        return ca
    }()

    /// A Ringside node's cluster mutual-TLS flags.
    func clusterTLSFlags(_ name: String) throws -> [String] {
        let files = try certificates.issue([name], file: name)
        return [
            "--cluster-tls-cert", files.certificate, "--cluster-tls-key", files.key, "--cluster-tls-ca",
            certificates.bundle,
        ]
    }

    /// nginx's TLS listener directives for a certificate named `name` (and 127.0.0.1).
    func nginxServerTLS(_ name: String) throws -> String {
        let files = try certificates.issue([name, "127.0.0.1", "localhost"], file: name)
        return """
            ssl_certificate \(files.certificate); ssl_certificate_key \(files.key); ssl_protocols TLSv1.2 TLSv1.3;
            ssl_session_cache shared:tls:1m;
            """
    }

    /// nginx's directives to require a client certificate of the run's CA.
    func nginxClientVerification() -> String {
        "ssl_verify_client on; ssl_client_certificate \(certificates.bundle);"
    }

    /// nginx's directives for mutual TLS to an upstream nginx named nginx2, presenting `name`'s certificate.
    func nginxUpstreamTLS(_ name: String) throws -> String {
        let files = try certificates.issue([name], file: name)
        return """
            proxy_ssl_certificate \(files.certificate); proxy_ssl_certificate_key \(files.key);
            proxy_ssl_trusted_certificate \(certificates.bundle); proxy_ssl_verify on; proxy_ssl_name nginx2;
            proxy_ssl_session_reuse on; proxy_ssl_protocols TLSv1.2 TLSv1.3;
            """
    }

    /// HAProxy's `crt` file: the certificate and its key in one.
    func haproxyCertificate() throws -> String {
        let files = try certificates.issue(["haproxy", "127.0.0.1", "localhost"], file: "haproxy")
        let combined = directory.appendingPathComponent("haproxy.pem").path
        let text =
            try String(contentsOfFile: files.certificate, encoding: .utf8) + "\n"
            + String(contentsOfFile: files.key, encoding: .utf8) + "\n"
        try text.write(toFile: combined, atomically: true, encoding: .utf8)
        return combined
    }

    func startNginx(name: String, config: (Int) -> String) throws -> (process: Process, port: Int) {
        let port = Self.freePort()
        let file = directory.appendingPathComponent("\(name).conf")
        let text = config(port).replacingOccurrences(
            of: "PIDFILE",
            with: directory.appendingPathComponent("\(name).pid").path
        )
        try text.write(to: file, atomically: true, encoding: .utf8)
        let process = try launch(ProxyBenchmark.which("nginx")!, ["-p", directory.path, "-c", file.path])
        try waitForPort(port)
        return (process, port)
    }

    /// HAProxy as a keyed proxy; with `tls` (a `crt` file), its listener speaks TLS.
    func startHAProxy(upstreamPort: Int, tls: String? = nil) throws -> (process: Process, port: Int) {
        let port = Self.freePort()
        let file = directory.appendingPathComponent("haproxy.cfg")
        try """
        global
          nbthread 1
          maxconn 4096
        defaults
          mode http
          timeout connect 2s
          timeout client 30s
          timeout server 30s
          http-reuse always
        frontend in
          bind 127.0.0.1:\(port)\(tls.map { " ssl crt \($0)" } ?? "")
          default_backend shard
        backend shard
          balance hdr(X-Shard-Key)
          hash-type consistent
          default-server weight 64
          server b1 127.0.0.1:\(upstreamPort)

        """.write(to: file, atomically: true, encoding: .utf8)
        let process = try launch(ProxyBenchmark.which("haproxy")!, ["-db", "-f", file.path])
        try waitForPort(port)
        return (process, port)
    }

    struct RingsideNode {
        var process: Process
        var app: Int
        var cluster: Int
        var admin: Int
    }

    func startRingside(
        name: String,
        backendHost: String = "127.0.0.1",
        backendPort: Int,
        extra: [String] = []
    ) throws -> RingsideNode {
        let binary = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
            .appendingPathComponent("ringside").path
        let node = RingsideNode(
            process: Process(),
            app: Self.freePort(),
            cluster: Self.freePort(),
            admin: Self.freePort()
        )
        let process = try launch(
            binary,
            [
                "run", "--node-name", name, "--listen", "127.0.0.1:\(node.app)", "--cluster-listen",
                "127.0.0.1:\(node.cluster)",
                "--admin-listen", "127.0.0.1:\(node.admin)", "--backend", "http://\(backendHost):\(backendPort)",
                "--event-loops", "1", "--log-level", "error",
            ] + extra
        )
        try waitForPort(node.app)
        return RingsideNode(process: process, app: node.app, cluster: node.cluster, admin: node.admin)
    }

    func waitForParticipants(_ count: Int, admin: Int) throws {
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if let body = Self.get(port: admin, path: "/v1/state"), body.contains("\"participant\":\(count)") { return }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw ValidationError("the Ringside nodes did not form a cluster within 20 s")
    }

    // MARK: Measuring

    func measure(
        _ target: String,
        url: String,
        pids: [Int32],
        backendPIDs: [Int32],
        duration: Int,
        connections: Int
    ) throws -> ResultRow {
        // A short warm-up fills connection pools.
        _ = try runWrk(url: url, seconds: 2, connections: connections)
        let before = pids.map(processCPUTicks).reduce((0, 0)) { ($0.0 + $1.user, $0.1 + $1.system) }
        let backendBefore = backendPIDs.map(processCPUTicks).reduce(0) { $0 + $1.user + $1.system }
        let clientBefore = Self.childrenCPUMicroseconds()
        let machineBefore = Self.machineTicks()
        let output = try runWrk(url: url, seconds: duration, connections: connections)
        let machineAfter = Self.machineTicks()
        let clientAfter = Self.childrenCPUMicroseconds()
        let backendAfter = backendPIDs.map(processCPUTicks).reduce(0) { $0 + $1.user + $1.system }
        let after = pids.map(processCPUTicks).reduce((0, 0)) { ($0.0 + $1.user, $0.1 + $1.system) }
        let rps = Self.lastNumber(onLineContaining: "Requests/sec:", in: output) ?? 0
        let requests = Self.firstNumber(onLineContaining: " requests in ", in: output) ?? rps * Double(duration)
        var row = ResultRow()
        row["target"] = .string(target)
        row["rps"] = .number(rps, decimals: 0)
        row["p50_ms"] = .number(Self.percentile("50%", in: output) ?? .nan, decimals: 3)
        row["p99_ms"] = .number(Self.percentile("99%", in: output) ?? .nan, decimals: 3)
        let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))
        let perRequest = { (ticks: Int) in Double(ticks) / ticksPerSecond * 1e6 / max(1, requests) }
        let user = perRequest(after.0 - before.0)
        let system = perRequest(after.1 - before.1)
        row["cpu_us_per_req"] = .number(pids.isEmpty ? .nan : user + system, decimals: 1)
        row["rss_mb"] = .number(
            pids.isEmpty ? .nan : pids.map { processMemoryMegabytes($0, "VmRSS") ?? 0 }.reduce(0, +),
            decimals: 1
        )
        row["errors"] = .integer(Int(Self.lastNumber(onLineContaining: "Non-2xx or 3xx responses:", in: output) ?? 0))
        // The split of cpu_us_per_req: the proxy's own code, and the kernel's work for it (system calls, TCP).
        row["cpu_user_us_per_req"] = .number(pids.isEmpty ? .nan : user, decimals: 1)
        row["cpu_system_us_per_req"] = .number(pids.isEmpty ? .nan : system, decimals: 1)
        // The rest of the machine's work: the backend, the load generator, and how busy all CPUs were.
        row["backend_cpu_us_per_req"] = .number(perRequest(backendAfter - backendBefore), decimals: 1)
        row["client_cpu_us_per_req"] = .number(Double(clientAfter - clientBefore) / max(1, requests), decimals: 1)
        let total = machineAfter.total - machineBefore.total
        row["machine_busy_pct"] = .number(
            total > 0 ? 100 * Double(machineAfter.busy - machineBefore.busy) / Double(total) : .nan,
            decimals: 1
        )
        return row
    }

    /// CPU time of this process's finished and reaped children (the wrk runs), in microseconds.
    static func childrenCPUMicroseconds() -> Int {
        var usage = rusage()
        getrusage(RUSAGE_CHILDREN.rawValue, &usage)
        let micros = { (time: timeval) in Int(time.tv_sec) * 1_000_000 + Int(time.tv_usec) }
        return micros(usage.ru_utime) + micros(usage.ru_stime)
    }

    /// All CPUs' busy and total time so far, in clock ticks (`/proc/stat`).
    static func machineTicks() -> (busy: Int, total: Int) {
        guard let stat = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
            let line = stat.split(separator: "\n").first(where: { $0.hasPrefix("cpu ") })
        else { return (0, 0) }
        // user nice system idle iowait irq softirq steal …
        let ticks = line.split(separator: " ").dropFirst().compactMap { Int($0) }
        guard ticks.count >= 8 else { return (0, 0) }
        let total = ticks.prefix(8).reduce(0, +)
        return (total - ticks[3] - ticks[4], total)
    }

    func runWrk(url: String, seconds: Int, connections: Int) throws -> String {
        let process = Process()
        (process.executableURL, process.arguments) = pinned(
            ProxyBenchmark.which("wrk")!,
            ["-t1", "-c\(connections)", "-d\(seconds)s", "--latency", "-s", script.path, url],
            to: cpus?.client
        )
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }

    /// The last word of the first line containing `label`, as a number.
    static func lastNumber(onLineContaining label: String, in text: String) -> Double? {
        text.split(separator: "\n").first { $0.contains(label) }
            .flatMap { $0.split(separator: " ").last }.flatMap { Double($0) }
    }

    /// The first word of the first line containing `label`, as a number.
    static func firstNumber(onLineContaining label: String, in text: String) -> Double? {
        text.split(separator: "\n").first { $0.contains(label) }
            .flatMap { $0.split(separator: " ").first }.flatMap { Double($0) }
    }

    /// A latency percentile from wrk's `--latency` table, in milliseconds.
    static func percentile(_ label: String, in text: String) -> Double? {
        guard
            let line = text.split(separator: "\n").first(where: {
                $0.trimmingCharacters(in: .whitespaces).hasPrefix(label)
            }),
            let value = line.split(separator: " ", omittingEmptySubsequences: true).last
        else { return nil }
        let units: [(String, Double)] = [("us", 0.001), ("ms", 1), ("s", 1000)]
        for (suffix, scale) in units where value.hasSuffix(suffix) {
            if let number = Double(value.dropLast(suffix.count)) { return number * scale }
        }
        return nil
    }

    /// `pid` and its child processes (nginx's workers).
    static func withChildren(_ pid: Int32) -> [Int32] {
        let children = (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)) ?? ""
        return [pid] + children.split(separator: " ").compactMap { Int32($0) }
    }

    // MARK: Processes

    /// `path` with `arguments`, run on `cpu` when there is one (taskset sets the CPU and executes the command, so the
    /// process keeps its PID).
    func pinned(_ path: String, _ arguments: [String], to cpu: Int?) -> (URL, [String]) {
        guard let cpu else { return (URL(fileURLWithPath: path), arguments) }
        return (URL(fileURLWithPath: ProxyBenchmark.which("taskset")!), ["--cpu-list", "\(cpu)", path] + arguments)
    }

    func launch(_ path: String, _ arguments: [String]) throws -> Process {
        let process = Process()
        (process.executableURL, process.arguments) = pinned(path, arguments, to: cpus?.server)
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        started.append(process)
        return process
    }

    func stop(_ processes: [Process]) {
        for process in processes where process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }

    func stopAll() {
        stop(started)
        try? FileManager.default.removeItem(at: directory)
    }

    /// Waits until something accepts connections on `port` (TLS listeners do not answer a plaintext request).
    func waitForPort(_ port: Int) throws {
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if let fd = connectLoopback(port: port) {
                close(fd)
                return
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw ValidationError("nothing listened on port \(port) within 20 s")
    }

    /// A GET to 127.0.0.1:`port`; the response text, or nil if nothing answered.
    static func get(port: Int, path: String) -> String? {
        let raw = rawExchange(
            port: port,
            Array("GET \(path) HTTP/1.1\r\nHost: bench\r\n\r\n".utf8),
            timeout: .seconds(1)
        )
        return raw.bytes.isEmpty ? nil : String(decoding: raw.bytes, as: UTF8.self)
    }

    static func freePort() -> Int { RingsideTestSupport.freePort() }
}
