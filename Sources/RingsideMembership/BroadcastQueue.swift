/// Updates waiting to be piggybacked on outgoing messages, each sent a bounded number of times.
///
/// A newer update about a member replaces an older one. Updates sent the fewest times go first, the newest first among
/// equals, as in memberlist's transmit-limited queue.
struct BroadcastQueue: Sendable {
    private struct Item {
        var message: GossipMessage
        var subject: String
        var size: Int
        var transmits: Int
        var order: UInt64
    }

    private var items: [Item] = []
    private var nextOrder: UInt64 = 0

    var isEmpty: Bool { items.isEmpty }
    var count: Int { items.count }

    mutating func enqueue(_ message: GossipMessage) {
        guard let subject = message.subject else { return }
        items.removeAll { $0.subject == subject }
        items.append(
            Item(
                message: message,
                subject: subject,
                size: GossipCodec.encodedSize(message),
                transmits: 0,
                order: nextOrder
            )
        )
        nextOrder += 1
    }

    /// Updates for one outgoing envelope, at most `budget` bytes of them. Each counts as sent once more, and leaves
    /// the queue once sent `limit` times.
    mutating func take(budget: Int, limit: Int) -> [GossipMessage] {
        guard !items.isEmpty, budget > 0 else { return [] }
        let order = items.indices.sorted {
            (items[$0].transmits, items[$1].order) < (items[$1].transmits, items[$0].order)
        }
        var remaining = budget
        var taken: [GossipMessage] = []
        for index in order where items[index].size <= remaining {
            remaining -= items[index].size
            taken.append(items[index].message)
            items[index].transmits += 1
        }
        items.removeAll { $0.transmits >= limit }
        return taken
    }
}
