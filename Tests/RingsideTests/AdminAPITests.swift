import Foundation
import RingsideTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A request to the admin plane at `port`; nil when nothing answered.
func adminRequest(
    _ port: Int,
    _ method: String,
    _ path: String,
    body: String = "",
    authorization: String? = nil
) -> TestResponse? {
    let header = authorization.map { "Authorization: \($0)\r\n" } ?? ""
    let request = "\(method) \(path) HTTP/1.1\r\nHost: a\r\nContent-Length: \(body.utf8.count)\r\n\(header)\r\n\(body)"
    return parseResponse(rawExchange(port: port, Array(request.utf8), timeout: .seconds(3)).bytes)
}

/// The text of a response body.
func text(_ response: TestResponse?) -> String { String(decoding: response?.body ?? [], as: UTF8.self) }

/// `GET /v1/watch` read from a socket as it streams.
final class EventStream {
    struct Event {
        var id: Int?
        var name: String
        var data: String
    }

    private let fd: Int32
    private var bytes: [UInt8] = []

    init(port: Int, lastEventID: Int? = nil) throws {
        guard let fd = connectLoopback(port: port) else { throw TestFailure("nothing listens on \(port)") }
        self.fd = fd
        let resume = lastEventID.map { "Last-Event-ID: \($0)\r\n" } ?? ""
        sendAll(fd, Array("GET /v1/watch HTTP/1.1\r\nHost: a\r\n\(resume)\r\n".utf8))
    }

    deinit { close(fd) }

    /// Reads until `condition` holds for the events so far, or `timeout` passes; whether it holds.
    @discardableResult
    func wait(timeout: Duration = .seconds(20), until condition: ([Event]) -> Bool) -> Bool {
        receive(fd, into: &bytes, timeout: timeout) { condition(Self.events(in: $0)) }
        return condition(events)
    }

    var events: [Event] { Self.events(in: bytes) }

    /// The response head.
    var head: String {
        guard let end = bytes.firstRange(of: Array("\r\n\r\n".utf8)) else { return "" }
        return String(decoding: bytes[..<end.lowerBound], as: UTF8.self)
    }

    /// The events in a chunked `text/event-stream` response so far (an event counts once its blank line came).
    static func events(in bytes: [UInt8]) -> [Event] {
        guard let end = bytes.firstRange(of: Array("\r\n\r\n".utf8)) else { return [] }
        // Undo the chunked framing: a hex size line, that many bytes, CRLF.
        var body: [UInt8] = []
        var index = end.upperBound
        while let lineEnd = bytes[index...].firstRange(of: Array("\r\n".utf8)),
            let size = Int(String(decoding: bytes[index..<lineEnd.lowerBound], as: UTF8.self), radix: 16), size > 0,
            lineEnd.upperBound + size <= bytes.count
        {
            body += bytes[lineEnd.upperBound..<lineEnd.upperBound + size]
            index = min(bytes.count, lineEnd.upperBound + size + 2)
        }
        var events: [Event] = []
        for block in String(decoding: body, as: UTF8.self).components(separatedBy: "\n\n").dropLast() {
            var event = Event(id: nil, name: "message", data: "")
            var isEvent = false
            for line in block.split(separator: "\n") {
                if line.hasPrefix("id: ") { event.id = Int(line.dropFirst(4)) }
                if line.hasPrefix("event: ") {
                    event.name = String(line.dropFirst(7))
                    isEvent = true
                }
                if line.hasPrefix("data: ") { event.data = String(line.dropFirst(6)) }
            }
            if isEvent { events.append(event) }
        }
        return events
    }
}

@Suite("The admin API beyond reads: watch, metadata, leader, status page", .serialized)
struct AdminAPITests {
    @Test func theWatchStreamTellsAJoinAStateChangeAndALeaveInOrderAndResumes() async throws {
        try await withProcesses(2) { cluster in
            let stream = try EventStream(port: cluster.nodes[0].admin)
            #expect(stream.wait { $0.first?.name == "view" })
            #expect(stream.head.contains("content-type: text/event-stream"))
            let view = try #require(stream.events.first)
            #expect(view.data.contains(#""name":"node-0""#) && view.data.contains(#""name":"node-1""#))

            let newcomer = try ExtraNode(
                name: "newcomer",
                joining: cluster.nodes[0].cluster,
                directory: TestCA.temporaryDirectory(),
                arguments: []
            )
            defer { newcomer.stop() }
            func about(_ events: [EventStream.Event]) -> [EventStream.Event] {
                events.filter { $0.data.contains(#""name":"newcomer""#) }
            }
            #expect(stream.wait { about($0).contains { $0.name == "joined" } })
            #expect(newcomer.admin("/v1/drain", method: "POST")?.status == 202)
            #expect(stream.wait { about($0).contains { $0.name == "left" } })

            let events = about(stream.events)
            let names = events.map(\.name)
            let joined = try #require(names.firstIndex(of: "joined"))
            let terminating = try #require(
                events.firstIndex { $0.name == "state" && $0.data.contains(#""state":"terminating""#) }
            )
            #expect(events[terminating].data.contains(#""from":"participant""#))
            #expect(joined < terminating && terminating < names.lastIndex(of: "left")!, "\(names)")
            let ids = stream.events.dropFirst().compactMap(\.id)
            #expect(ids == Array((ids.first ?? 0)..<((ids.first ?? 0) + ids.count)), "numbered one by one")

            // A client that saw the join resumes after it: what followed, and no view.
            let joinID = try #require(events[joined].id)
            let resumed = try EventStream(port: cluster.nodes[0].admin, lastEventID: joinID)
            #expect(resumed.wait { $0.last?.id == ids.last })
            #expect(resumed.events.first?.name != "view")
            #expect(resumed.events.first?.id == joinID + 1)
            // An id it no longer knows gets the whole view again.
            let lost = try EventStream(port: cluster.nodes[0].admin, lastEventID: 1_000_000)
            #expect(lost.wait { $0.first?.name == "view" })
        }
    }

    @Test func metadataSetOnOneNodeIsReadAcrossTheClusterWithinItsLimits() async throws {
        try await withProcesses(3) { cluster in
            let (zero, one, two) = (cluster.nodes[0].admin, cluster.nodes[1].admin, cluster.nodes[2].admin)
            let set = adminRequest(one, "PUT", "/v1/meta/zone", body: "eu-west-1a")
            #expect(set?.status == 200)
            #expect(text(set) == #"{"zone":"eu-west-1a"}"# + "\n")
            #expect(text(adminRequest(one, "GET", "/v1/meta")) == #"{"zone":"eu-west-1a"}"# + "\n")
            #expect(
                await eventually {
                    text(adminRequest(zero, "GET", "/v1/meta?prefix=zo")).contains(#""node-1":{"zone":"eu-west-1a"}"#)
                }
            )
            #expect(text(adminRequest(zero, "GET", "/v1/meta?prefix=zo")).contains(#""node-2":{}"#))
            #expect(text(adminRequest(zero, "GET", "/v1/meta?prefix=other")).contains(#""node-1":{}"#))

            #expect(adminRequest(one, "DELETE", "/v1/meta/zone")?.status == 200)
            #expect(
                await eventually {
                    text(adminRequest(two, "GET", "/v1/meta?prefix=")).contains(#""node-1":{}"#)
                }
            )
            #expect(adminRequest(one, "DELETE", "/v1/meta/zone")?.status == 404)
            #expect(adminRequest(one, "PUT", "/v1/meta/bad%20key", body: "x")?.status == 400)
            #expect(adminRequest(one, "PUT", "/v1/meta/big", body: String(repeating: "v", count: 600))?.status == 413)
            #expect(adminRequest(one, "PUT", "/v1/meta/huge", body: String(repeating: "v", count: 5000))?.status == 413)
            // A body declared too large is refused at once, not after the client has sent it.
            let declared = "PUT /v1/meta/huge HTTP/1.1\r\nHost: a\r\nContent-Length: 100000000\r\n\r\n"
            #expect(
                parseResponse(rawExchange(port: one, Array(declared.utf8), timeout: .seconds(3)).bytes)?.status == 413
            )
            // Nothing pipelined behind a refused body runs: the refusal closes the connection.
            let chunked =
                "PUT /v1/meta/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1001\r\n"
                + String(repeating: "a", count: 4097) + "\r\n0\r\n\r\n"
                + "PUT /v1/meta/behind HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx"
            let refused = rawExchange(port: one, Array(chunked.utf8), timeout: .seconds(3), untilClosed: true)
            #expect(parseResponse(refused.bytes)?.status == 413)
            #expect(!text(adminRequest(one, "GET", "/v1/meta")).contains("behind"))
            // Nor behind a request that asked to close.
            let closing =
                "GET /v1/meta HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                + "PUT /v1/meta/behind HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx"
            let answered = rawExchange(port: one, Array(closing.utf8), timeout: .seconds(3), untilClosed: true)
            #expect(parseResponse(answered.bytes)?.status == 200)
            #expect(!text(adminRequest(one, "GET", "/v1/meta")).contains("behind"))
            #expect(adminRequest(one, "POST", "/v1/meta/zone")?.status == 405)
            // HEAD is GET without the body, for every path but the stream.
            for (path, status) in [("/v1/meta", 200), ("/v1/peers", 200), ("/readyz", 200), ("/v1/watch", 405)] {
                let request = "HEAD \(path) HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                let head = rawExchange(port: one, Array(request.utf8), untilClosed: true)
                #expect(parseResponse(head.bytes, bodiless: true)?.status == status, "\(path)")
            }
        }
    }

    @Test func theLeaderIsOneParticipantForAllAndMovesWhenItsNodeDrains() async throws {
        try await withProcesses(3) { cluster in
            func leader(_ port: Int) -> String? {
                let body = text(adminRequest(port, "GET", "/v1/leader"))
                guard body.contains(#""partition_safe":false"#), let start = body.range(of: #""name":""#) else {
                    return nil
                }
                return String(body[start.upperBound...].prefix { $0 != "\"" })
            }
            var agreed: String?
            #expect(
                await eventually {
                    let named = Set(cluster.nodes.map { leader($0.admin) })
                    agreed = named.count == 1 ? named.first ?? nil : nil
                    return agreed != nil
                }
            )
            let old = try #require(agreed)
            let leaving = try #require(cluster.nodes.first { $0.name == old })
            #expect(adminRequest(leaving.admin, "POST", "/v1/drain")?.status == 202)
            let others = cluster.nodes.filter { $0.name != old }
            #expect(
                await eventually {
                    let named = Set(others.map { leader($0.admin) })
                    return named.count == 1 && named.first != old && named.first != nil
                }
            )
        }
    }

    @Test func theStatusPageShowsTheViewAsServedAndNeedsNothingFromElsewhere() async throws {
        try await withProcesses(3) { cluster in
            let page = adminRequest(cluster.nodes[0].admin, "GET", "/")
            #expect(page?.status == 200)
            #expect(page?.header("content-type")?.hasPrefix("text/html") == true)
            let html = text(page)
            for node in cluster.nodes { #expect(html.contains("<td>\(node.name)")) }
            #expect(html.contains("<b>(this node)</b>"))
            #expect(html.contains("class=\"state-participant\""))
            #expect(html.contains("<svg id=\"share\""))
            #expect(!html.contains("src=\"http") && !html.contains("href=\"http") && !html.contains("url(http"))
        }
    }

    /// The page in headless Chromium (Debian's `chromium`), driven by `Tests/StatusPage/browse.py`: it shows the three
    /// peers once its watch stream is open, and a drain elsewhere reaches its events and its table without a reload.
    @Test func theStatusPageFollowsTheClusterLiveInAHeadlessBrowser() async throws {
        try await withProcesses(3) { cluster in
            let page = "document.getElementById"
            let browser = Process()
            browser.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            browser.arguments = [
                "python3", RingsideProcesses.repository.appendingPathComponent("Tests/StatusPage/browse.py").path,
                "http://127.0.0.1:\(cluster.nodes[0].admin)/",
                "--ready",
                "\(page)('live').textContent == 'on' && document.querySelectorAll('#peers tbody tr').length == 3",
                "--until",
                "\(page)('events').innerText.includes('\"name\":\"node-2\"') && "
                    + "\(page)('events').innerText.includes('terminating') && "
                    + "!document.querySelector('tr[data-name=\"node-2\"] .state-participant')",
                "--print",
                "[\(page)('peers').innerText, \(page)('events').innerText, \(page)('share').children.length].join('\\n--\\n')",
                "--timeout", "30",
            ]
            let output = Pipe()
            browser.standardOutput = output
            browser.standardError = FileHandle.nullDevice
            browser.standardInput = FileHandle.nullDevice
            try browser.run()
            // READY once the page has its stream open and shows the view; then the cluster changes under it.
            let first = String(decoding: output.fileHandleForReading.availableData, as: UTF8.self)
            #expect(first.hasPrefix("READY"), "is chromium installed? (Debian: apt-get install chromium) \(first)")
            #expect(adminRequest(cluster.nodes[2].admin, "POST", "/v1/drain")?.status == 202)
            let rest = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            browser.waitUntilExit()
            #expect(browser.terminationStatus == 0, "\(first)\(rest)")
            let shown = try JSONDecoder().decode(
                String.self,
                from: Data((first + rest).split(separator: "\n").last!.utf8)
            )
            let parts = shown.components(separatedBy: "\n--\n")
            #expect(parts.count == 3)
            #expect(parts.first?.contains("node-0 (this node)") == true, "the script redrew the table: \(shown)")
            #expect(parts.first?.contains("node-1") == true)
            #expect(parts.dropFirst().first?.contains("state") == true)
            #expect(parts.last == "2", "two owners left in the key-space bar: \(shown)")
        }
    }

    /// `systemctl reload` sends SIGHUP whatever the node has: without TLS files it is taken and logged, not fatal.
    @Test func aHangupWithNothingToReloadLeavesTheNodeRunning() async throws {
        let node = try ExtraNode(
            name: "hup",
            directory: TestCA.temporaryDirectory(),
            arguments: ["--log-level", "info"]
        )
        defer { node.stop() }
        #expect(await eventually { node.admin("/livez")?.status == 200 })
        kill(node.process.processIdentifier, SIGHUP)
        #expect(await eventually { node.log.contains("nothing to reload") })
        #expect(node.process.isRunning)
        #expect(node.admin("/livez")?.status == 200)
    }

    /// The gauges set at scrape time: a lone participant owns the whole key space, nothing is under way, no drain.
    @Test func theMetricsSayWhatTheNodeIsDoingNow() async throws {
        let node = try ExtraNode(name: "gauged", directory: TestCA.temporaryDirectory(), arguments: [])
        defer { node.stop() }
        // Live comes before the node is a participant in its own ring: wait for its share.
        #expect(await eventually { text(node.admin("/metrics")).contains("ringside_key_share 1.0\n") })
        let metrics = text(node.admin("/metrics"))
        for line in [
            "ringside_key_share 1.0", "ringside_drain_phase 0.0", "ringside_tunnels_open 0.0",
            #"ringside_requests_in_flight{entry="cluster"} 0.0"#,
        ] {
            #expect(metrics.contains(line + "\n"), "\(line)")
        }
        #expect(metrics.contains("ringside_ring_epoch "))
    }

    /// `--access-log`: one line a request on standard output, JSON with `--log-format json`, on the node a request
    /// enters by and on the owner it was forwarded to; a refusal has its line too.
    @Test func theAccessLogHasALineForEveryRequestOnEveryNodeItCrossed() async throws {
        let backend = try await EchoBackend.start()
        defer { backend.channel.close(promise: nil) }
        let directory = TestCA.temporaryDirectory()
        let flags = ["--access-log", "--log-format", "json", "--backend", "http://127.0.0.1:\(backend.port)"]
        let owner = try ExtraNode(name: "owner", directory: directory, arguments: flags)
        defer { owner.stop() }
        let entry = try ExtraNode(name: "entry", joining: owner.cluster, directory: directory, arguments: flags)
        defer { entry.stop() }
        #expect(await eventually { text(entry.admin("/v1/peers")).contains(#""name":"owner""#) })
        // A key the owner owns, found through the entry node's view.
        let key = try #require(
            (0..<200).map { "key-\($0)" }.first {
                text(entry.admin("/v1/lookup?key=\($0)")).contains(#""name":"owner""#)
            }
        )
        let request = "GET /things?id=7 HTTP/1.1\r\nHost: a\r\nX-Shard-Key: \(key)\r\n\r\n"
        #expect(parseResponse(rawExchange(port: entry.app, Array(request.utf8)).bytes)?.status == 200)
        let refused = "GET / HTTP/1.1\r\nX-Shard-Key: a\r\n\r\n"
        #expect(parseResponse(rawExchange(port: entry.app, Array(refused.utf8)).bytes)?.status == 400)

        func lines(_ node: ExtraNode) -> [[String: String]] {
            node.output.split(separator: "\n").compactMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: String]
            }
        }
        #expect(await eventually { lines(entry).count == 2 && lines(owner).count == 1 })
        let forwarded = try #require(lines(entry).first { $0["ringside.status"] == "200" })
        #expect(forwarded["msg"] == "request" && forwarded["ringside.method"] == "GET")
        #expect(forwarded["ringside.path"] == "/things?id=7")
        #expect(forwarded["ringside.route"] == "peer:owner" && forwarded["ringside.served_by"] == "owner")
        #expect(forwarded["ringside.plane"] == "app")
        #expect(Int(forwarded["ringside.bytes"] ?? "") ?? 0 > 0)
        #expect(forwarded["ringside.key_hash"]?.count ?? 0 > 0)
        let served = try #require(lines(owner).first)
        #expect(served["ringside.plane"] == "cluster" && served["ringside.route"] == "local")
        #expect(served["ringside.request_id"] == forwarded["ringside.request_id"], "one id across the hop")
        #expect(lines(entry).contains { $0["ringside.status"] == "400" && $0["ringside.route"] == "none" })
    }

    /// `wait-for-size` holds a node back at start; once passed, a member that leaves does not make the others unready
    /// (the three-node recipe of Config/ waits for three).
    @Test func theSizeGateIsPassedOnceAndStaysPassedWhenAMemberLeaves() async throws {
        let three = ["--wait-for-size", "3"]
        try await withProcesses(3, extraArguments: [0: three, 1: three, 2: three]) { cluster in
            #expect(await eventually { cluster.nodes.allSatisfy(cluster.isReady) })
            #expect(adminRequest(cluster.nodes[2].admin, "POST", "/v1/drain")?.status == 202)
            #expect(await eventually { !cluster.nodes[2].process.isRunning })
            let remaining = Array(cluster.nodes.prefix(2))
            #expect(
                await eventually {
                    remaining.allSatisfy {
                        text(adminRequest($0.admin, "GET", "/v1/peers")).contains(#""status":"left""#)
                    }
                }
            )
            for node in remaining {
                #expect(cluster.isReady(node), "\(node.name): \(text(adminRequest(node.admin, "GET", "/readyz")))")
            }
        }
    }
}
