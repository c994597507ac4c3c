// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "Ringside",
    products: [
        .library(name: "RingsideSharding", targets: ["RingsideSharding"]),
        .library(name: "RingsideMembership", targets: ["RingsideMembership"]),
        .executable(name: "ringside-bench", targets: ["ringside-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
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

        .executableTarget(
            name: "ringside-bench",
            dependencies: [
                "RingsideSharding",
                "RingsideSimulation",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        .testTarget(name: "RingsideShardingTests", dependencies: ["RingsideSharding"]),
        .testTarget(name: "RingsideMembershipTests", dependencies: ["RingsideMembership", "RingsideSimulation"]),
    ],
    swiftLanguageModes: [.v6]
)
