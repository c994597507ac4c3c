import HeapModule

/// Updates waiting to be piggybacked on outgoing messages, each sent a bounded number of times.
///
/// A newer update about a member replaces an older one. Updates sent the fewest times go first, the newest first among
/// equals, as in memberlist's transmit-limited queue. A heap keeps taking and replacing logarithmic: during a
/// thousand-node bootstrap every node holds a thousand updates.
struct BroadcastQueue: Sendable {
    private struct Item: Sendable {
        var message: GossipMessage
        var size: Int
        var order: UInt64
        var transmits: Int
    }

    /// A heap entry; entries whose item was replaced or re-queued are stale and skipped when they surface.
    private struct Entry: Comparable, Sendable {
        var transmits: Int
        var order: UInt64
        var subject: String

        static func < (lhs: Entry, rhs: Entry) -> Bool {
            lhs.transmits != rhs.transmits ? lhs.transmits < rhs.transmits : lhs.order > rhs.order
        }
    }

    private var items: [String: Item] = [:]
    private var heap = Heap<Entry>()
    private var nextOrder: UInt64 = 0

    var isEmpty: Bool { items.isEmpty }
    var count: Int { items.count }

    mutating func enqueue(_ message: GossipMessage) {
        guard let subject = message.subject else { return }
        nextOrder += 1
        items[subject] = Item(message: message, size: GossipCodec.encodedSize(message), order: nextOrder, transmits: 0)
        heap.insert(Entry(transmits: 0, order: nextOrder, subject: subject))
    }

    /// Updates for one outgoing envelope, at most `budget` bytes of them (or one update, if the first alone is
    /// larger). Each counts as sent once more, and leaves the queue once sent `limit` times.
    mutating func take(budget: Int, limit: Int) -> [GossipMessage] {
        var remaining = budget
        var taken: [GossipMessage] = []
        var requeue: [Entry] = []
        while remaining > 0, let entry = heap.popMin() {
            guard var item = items[entry.subject], item.order == entry.order, item.transmits == entry.transmits
            else { continue }
            guard item.size <= remaining || taken.isEmpty else {
                requeue.append(entry)
                continue
            }
            remaining -= item.size
            taken.append(item.message)
            item.transmits += 1
            if item.transmits >= limit {
                items[entry.subject] = nil
            } else {
                items[entry.subject] = item
                requeue.append(Entry(transmits: item.transmits, order: item.order, subject: entry.subject))
            }
        }
        for entry in requeue { heap.insert(entry) }
        return taken
    }
}
