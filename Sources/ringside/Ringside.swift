import ArgumentParser
import Foundation

@main
struct Ringside: AsyncParsableCommand {
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "ringside",
        abstract: "A sharding sidecar proxy: routes every request by its key to the node that owns the key.",
        discussion: """
            Run one `ringside run` next to each instance of your application; the nodes find each other by gossip \
            and agree on who owns which key. With no flags, `ringside run` is a cluster of one that owns every key \
            and proxies to http://127.0.0.1:8080. `ringside demo` starts three nodes on this machine to show it at \
            work.

            Exit status, for every subcommand: 0 success (a graceful stop); 1 a listener cannot start, or the node \
            asked cannot be reached or refused; 2 an invalid configuration or command line (the message names the \
            key or flag); 3 a drain that cut requests.
            """,
        version: version,
        subcommands: [
            RunCommand.self, DemoCommand.self, PeersCommand.self, StateCommand.self, LookupCommand.self,
            DrainCommand.self, VersionCommand.self,
        ],
        defaultSubcommand: nil
    )

    /// ArgumentParser's own run, except that a command line it cannot parse (a flag it does not know, a flag without
    /// its value, a missing argument) is exit status 2 like any invalid configuration, where ArgumentParser would
    /// exit 64; for `ringside run` it says "invalid configuration" and names the flag.
    static func main() async {
        let arguments = Array(CommandLine.arguments.dropFirst())
        do {
            var command = try parseAsRoot(arguments)
            if var command = command as? any AsyncParsableCommand {
                try await command.run()
            } else {
                try command.run()
            }
        } catch {
            if exitCode(for: error) == .validationFailure {
                let text =
                    arguments.first == RunCommand.configuration.commandName
                    ? "ringside: invalid configuration: \(message(for: error))" : fullMessage(for: error)
                FileHandle.standardError.write(Data((text + "\n").utf8))
                exit(withError: ExitCode(2))
            }
            exit(withError: error)
        }
    }
}

struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "version", abstract: "Prints the version.")

    func run() { print("ringside \(Ringside.version)") }
}
