// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "Ringside",
    products: [
        .library(name: "RingsideSharding", targets: ["RingsideSharding"]),
        .library(name: "RingsideMembership", targets: ["RingsideMembership"]),
        .library(name: "RingsideCluster", targets: ["RingsideCluster"]),
        .library(name: "RingsideProxy", targets: ["RingsideProxy"]),
        .executable(name: "ringside", targets: ["ringside"]),
        .executable(name: "ringside-bench", targets: ["ringside-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-atomics.git", from: "1.3.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
    ],
    targets: [
        // Layer 1: hashing and sharding. No dependencies, so that any Swift program can use it.
        .target(name: "RingsideSharding"),

        // Layer 2: the membership protocol as a pure state machine and its wire format. No NIO.
        .systemLibrary(name: "CZlib", path: "Sources/CZlib", providers: [.apt(["zlib1g-dev"])]),
        .target(
            name: "RingsideMembership",
            dependencies: [
                "RingsideSharding",
                "CZlib",
                .product(name: "HeapModule", package: "swift-collections"),
            ]
        ),

        // The deterministic network simulator that drives the protocol core in tests and benchmarks.
        .target(
            name: "RingsideSimulation",
            dependencies: [
                "RingsideMembership",
                .product(name: "HeapModule", package: "swift-collections"),
            ]
        ),

        // Layer 3: a cluster node on the network (NIO, HTTP/2), usable in-process as a library.
        .systemLibrary(name: "CResolv", path: "Sources/CResolv"),
        .target(
            name: "RingsideCluster",
            dependencies: [
                "RingsideMembership",
                "CResolv",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        // Layer 4: the data plane: keyed routing, forwarding between peers, proxy hygiene.
        .systemLibrary(name: "CEpoll", path: "Sources/CEpoll"),
        .target(
            name: "RingsideProxy",
            dependencies: [
                "RingsideCluster",
                .target(name: "CEpoll", condition: .when(platforms: [.linux])),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        // Layer 5: the command: configuration, lifecycle, admin client, demo.
        .executableTarget(
            name: "ringside",
            dependencies: [
                "RingsideProxy",
                "RingsideCluster",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),

        .executableTarget(
            name: "ringside-bench",
            dependencies: [
                "RingsideSharding",
                "RingsideSimulation",
                "RingsideCluster",
                "RingsideTestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        // The engine's fuzz target: libFuzzer's entry when built with -sanitize=fuzzer -DFUZZING (Tests/Fuzz/run), a
        // replayer of inputs otherwise.
        .executableTarget(
            name: "ringside-fuzz",
            dependencies: [
                "RingsideProxy",
                "RingsideCluster",
                "RingsideMembership",
                "RingsideSharding",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        .testTarget(name: "RingsideShardingTests", dependencies: ["RingsideSharding"]),
        .testTarget(name: "RingsideMembershipTests", dependencies: ["RingsideMembership", "RingsideSimulation"]),
        .testTarget(
            name: "RingsideClusterTests",
            dependencies: [
                "RingsideCluster", "RingsideTestSupport", .product(name: "NIOHTTP2", package: "swift-nio-http2"),
            ]
        ),
        // Helpers that tests and benchmarks share: backends, a raw HTTP client, polling, free ports.
        .target(
            name: "RingsideTestSupport",
            dependencies: [
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),
        .testTarget(name: "RingsideProxyTests", dependencies: ["RingsideProxy", "RingsideTestSupport"]),
        .testTarget(
            name: "RingsideTests",
            dependencies: [
                "ringside", "RingsideCluster", "RingsideTestSupport", .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
