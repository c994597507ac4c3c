import ArgumentParser

@main
struct Ringside: AsyncParsableCommand {
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "ringside",
        abstract: "A sharding sidecar proxy: routes every request by its key to the node that owns the key.",
        discussion: """
            Run one `ringside run` next to each instance of your application; the nodes find each other by gossip and
            agree on who owns which key. With no flags, `ringside run` is a cluster of one that owns every key and
            proxies to http://127.0.0.1:8080. `ringside demo` starts three nodes on this machine to show it at work.
            """,
        version: version,
        subcommands: [
            RunCommand.self, DemoCommand.self, PeersCommand.self, StateCommand.self, LookupCommand.self,
            VersionCommand.self,
        ],
        defaultSubcommand: nil
    )
}

struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "version", abstract: "Prints the version.")

    func run() { print("ringside \(Ringside.version)") }
}
