import Logging
import NIOCore
import RingsideProxy

/// Drives one engine (``HTTP1Connection``) with a fuzzer's input and checks what it does against a model.
///
/// The input is a program: each operation is a byte (its value modulo 8) and its operands.
///
/// | op | operands | event |
/// |---|---|---|
/// | 0 | length, bytes | the client sends the bytes |
/// | 1 | length, bytes | the upstream connection sends the bytes (when one is attached) |
/// | 2 | | the connection asked for is ready (reused when bit 3 of the op is set) |
/// | 3 | | the connection asked for could not be made |
/// | 4 | | the upstream connection closes |
/// | 5 | count | `count` × 50 ms pass |
/// | 6 | | the node drains |
/// | 7 | | the client goes away (the program ends) |
///
/// The model keeps the driver's side of the contract (it reports only events that can happen: a connection ready
/// only after the engine asked for one) and checks the engine's side: no upstream bytes without a connection, no
/// second connection while one is held, nothing written or asked for after the engine closed the client; and, once the
/// program has run, that every upstream connection carried only well-formed requests a strict parser
/// (``ReferenceParser``) also finds, in the same order, in the client's bytes: the engine never sends upstream a
/// request it did not read as one from the client.
enum EngineModel {
    /// Keys that start with "p" go to two peers, every other request to the local backend.
    struct Router: ProxyRouter {
        func routes(for request: RoutingRequest) -> Result<[ProxyRoute], ProxyRefusal> {
            guard let key = request.key, key.hasPrefix("p") else { return .success([.local]) }
            return .success([.peer(name: "b", address: "10.0.0.2:7401"), .peer(name: "c", address: "10.0.0.3:7401")])
        }
    }

    /// The cluster port's rule, as ``ForwardedRouter`` decides it with a view in which this node owns keys that start
    /// with "o": only forwarded requests; the last candidate, or an owned key, is served; the rest is 421.
    struct ForwardedRouter: ProxyRouter {
        func routes(for request: RoutingRequest) -> Result<[ProxyRoute], ProxyRefusal> {
            guard request.isForwarded else {
                return .failure(ProxyRefusal(status: .forbidden, message: "not forwarded"))
            }
            guard let key = request.key, !request.isFinalCandidate, !key.hasPrefix("o") else {
                return .success([.local])
            }
            return .failure(ProxyRefusal(status: .misdirectedRequest, message: "not the owner"))
        }
    }

    static let settings = makeSettings(plane: .app)
    /// The cluster port's forwarded requests: the `x-ringside-*` fields a peer sends are read here.
    static let forwardedSettings = makeSettings(plane: .cluster)

    static func makeSettings(plane: ProxyPlane) -> RelaySettings {
        var configuration = ProxyConfiguration(nodeName: "fuzz")
        configuration.maxHeaderBytes = 4096
        configuration.maxBodyBytes = 1 << 20
        configuration.headerReadTimeout = .seconds(2)
        configuration.connectTimeout = .seconds(1)
        configuration.requestTimeout = .seconds(5)
        return RelaySettings(
            configuration: configuration,
            plane: plane,
            metrics: ProxyMetrics(),
            router: plane == .app ? Router() : ForwardedRouter(),
            backend: "http://backend",
            logger: Logger(label: "fuzz", factory: { _ in SwiftLogNoOpLogHandler() })
        )
    }

    private enum Upstream: Equatable {
        case none
        case asked
        case attached(Int)
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Runs `input` through an engine of the app plane (of the cluster port with `settings`); throws what the model
    /// found wrong.
    static func run(_ input: [UInt8], settings: RelaySettings = settings) throws {
        var now = NIODeadline.uptimeNanoseconds(1_000_000_000)
        var engine = HTTP1Connection(
            settings: settings,
            client: nil,
            local: nil,
            sniffsHTTP2: false,
            allocator: ByteBufferAllocator(),
            now: now
        )
        var client: [UInt8] = []
        var connections: [[UInt8]] = []
        var upstream = Upstream.none
        var closed = false

        func perform() throws {
            while let action = engine.nextAction() {
                switch action {
                case .writeClient:
                    guard !closed else { throw Failure(description: "wrote to a client it had closed") }
                case .connect:
                    guard !closed else { throw Failure(description: "asked for a connection after closing") }
                    guard upstream == .none else { throw Failure(description: "asked for a second connection") }
                    upstream = .asked
                case .writeUpstream(let bytes):
                    guard case .attached(let index) = upstream else {
                        throw Failure(description: "wrote upstream without a connection")
                    }
                    connections[index] += Array(bytes.readableBytesView)
                case .releaseUpstream:
                    guard upstream != .none else { throw Failure(description: "released a connection it did not hold") }
                    upstream = .none
                case .closeClient, .handOffHTTP2:
                    closed = true
                }
            }
        }

        var cursor = 0
        func next() -> UInt8? {
            guard cursor < input.count else { return nil }
            defer { cursor += 1 }
            return input[cursor]
        }
        func bytes() -> [UInt8] {
            let count = Int(next() ?? 0)
            let end = min(input.count, cursor + count)
            defer { cursor = end }
            return Array(input[cursor..<end])
        }

        program: while let op = next() {
            switch op % 8 {
            case 0:
                let chunk = bytes()
                guard !closed else { break }
                client += chunk
                engine.clientBytes(ByteBuffer(bytes: chunk), now: now)
            case 1:
                let chunk = bytes()
                guard case .attached = upstream else { break }
                engine.upstreamBytes(ByteBuffer(bytes: chunk), now: now)
            case 2:
                guard upstream == .asked else { break }
                upstream = .attached(connections.count)
                connections.append([])
                engine.upstreamConnected(reused: op & 8 != 0, now: now)
            case 3:
                guard upstream == .asked else { break }
                upstream = .none
                engine.upstreamConnectFailed(Failure(description: "refused"), now: now)
            case 4:
                guard case .attached = upstream else { break }
                upstream = .none
                engine.upstreamClosed(now: now)
            case 5:
                now = now + .milliseconds(50 * Int64(next() ?? 0))
                engine.tick(now: now)
            case 6:
                engine.drain(now: now)
            default:
                engine.clientClosed(now: now)
                try perform()
                break program
            }
            try perform()
        }
        try check(client: client, connections: connections)
    }

    /// Every upstream request is well formed and one the client sent, in the client's order (a retry repeats one).
    static func check(client: [UInt8], connections: [[UInt8]]) throws {
        let (expected, _) = ReferenceParser.parse(client, skipsEmptyLines: true, stopsAtUpgrade: false)
        var position = 0
        for (number, connection) in connections.enumerated() {
            let (sent, malformed) = ReferenceParser.parse(connection, skipsEmptyLines: false)
            if malformed {
                throw Failure(
                    description: "connection \(number) carried what a strict parser refuses: "
                        + String(decoding: connection, as: UTF8.self).debugDescription
                )
            }
            for request in sent {
                guard let found = expected[position...].firstIndex(of: request) else {
                    throw Failure(
                        description: "connection \(number) carried \(request), which the client did not send "
                            + "after \(position) requests (it sent \(expected))"
                    )
                }
                position = found
            }
        }
    }
}
