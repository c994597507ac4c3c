// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "Ringside",
    products: [
        .library(name: "RingsideSharding", targets: ["RingsideSharding"]),
        .executable(name: "ringside-bench", targets: ["ringside-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2")
    ],
    targets: [
        // Layer 1: hashing and sharding. No dependencies, so that any Swift program can use it.
        .target(name: "RingsideSharding"),

        .executableTarget(
            name: "ringside-bench",
            dependencies: [
                "RingsideSharding",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        .testTarget(name: "RingsideShardingTests", dependencies: ["RingsideSharding"]),
    ],
    swiftLanguageModes: [.v6]
)
