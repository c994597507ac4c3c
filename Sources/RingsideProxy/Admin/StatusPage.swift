import Foundation
import RingsideCluster
import RingsideMembership
import RingsideSharding

/// `GET /` on the admin plane: one self-contained page (no asset from elsewhere). The view as served is in the HTML,
/// readable without JavaScript; a script then follows `/v1/watch` for membership changes and `/metrics` for the
/// request rate.
enum StatusPage {
    static func html(node: ClusterNode, events: ClusterEventLog?) -> String {
        let local = node.configuration.nodeName
        let sharder = node.sharder
        let shares = sharder.keyShares()
        let members = node.members.sorted { $0.name < $1.name }
        var rows = ""
        for member in members {
            let share = shares[member.name].map { String(format: "%.1f %%", $0 * 100) } ?? "–"
            rows += """
                <tr data-name="\(escape(member.name))"><td>\(escape(member.name))\(member.name == local ? " <b>(this node)</b>" : "")</td>\
                <td>\(escape(member.address))</td><td class="state-\(member.state)">\(member.state)</td>\
                <td class="status-\(member.status)">\(member.status)</td><td>\(share)</td></tr>

                """
        }
        var history = ""
        for entry in (events?.recent ?? []).suffix(20).reversed() {
            history += "<li>\(timestamp(entry.at)) <b>\(entry.name)</b> \(escape(entry.data))</li>\n"
        }
        return """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><title>ringside \(escape(local))</title>
            <meta name="viewport" content="width=device-width, initial-scale=1">
            <style>
            body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
            table{border-collapse:collapse}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}
            .state-participant{color:#1a7f37}.state-terminating{color:#bf8700}.state-viewer{color:#57606a}
            .status-suspect{color:#bf8700}.status-dead,.status-left{color:#cf222e}
            #events{font-family:ui-monospace,monospace;font-size:12px;max-height:20em;overflow:auto}
            .facts span{margin-right:2em}
            </style></head><body>
            <h1>ringside <span id="node">\(escape(local))</span></h1>
            <p class="facts"><span>state <b id="state">\(node.state)</b></span>\
            <span>ring epoch <b id="epoch">\(String(sharder.checksum, radix: 16))</b></span>\
            <span>requests <b id="rate">–</b>/s</span><span>live updates <b id="live">off</b></span></p>
            <h2>Peers</h2>
            <table id="peers"><thead><tr><th>name</th><th>address</th><th>state</th><th>status</th><th>key share</th></tr></thead>
            <tbody>
            \(rows)</tbody></table>
            <h2>Key space</h2>
            <div id="ring">\(ringPicture(shares))</div>
            <h2>Recent membership events</h2>
            <ul id="events">
            \(history)</ul>
            <script>
            \(script)
            </script>
            </body></html>

            """
    }

    /// The owners' colours, in name order (the script redraws the bar with the same ones).
    static let palette = ["#0969da", "#1a7f37", "#bf8700", "#8250df", "#cf222e", "#1b7c83", "#9a6700", "#6e7781"]

    /// The key space as a bar: one segment per owner, as wide as its share.
    static func ringPicture(_ shares: [String: Double]) -> String {
        var x = 0.0
        var parts = ""
        for (index, (name, share)) in shares.sorted(by: { $0.key < $1.key }).enumerated() {
            let width = share * 600
            parts += """
                <rect x="\(String(format: "%.2f", x))" y="0" width="\(String(format: "%.2f", width))" height="28" \
                fill="\(palette[index % palette.count])"><title>\(escape(name)): \(String(format: "%.1f", share * 100)) %</title></rect>
                """
            x += width
        }
        return
            """
            <svg id="share" width="600" height="28" role="img" aria-label="key space by owner" \
            data-palette="\(palette.joined(separator: ","))">\(parts)</svg>
            """
    }

    static func escape(_ text: String) -> String {
        var out = ""
        for character in text {
            switch character {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(character)
            }
        }
        return out
    }

    static func timestamp(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withTime, .withColonSeparatorInTime]
        return formatter.string(from: date)
    }

    /// Follows `/v1/watch` (each event reloads the peers and prepends a line), and `/metrics` every two seconds for
    /// the request rate. Plain DOM calls, no library.
    static let script = #"""
        const text = (tag, value) => { const e = document.createElement(tag); e.textContent = value; return e; };
        async function refreshPeers() {
          const [peers, state] = await Promise.all([fetch('/v1/peers').then(r => r.json()), fetch('/v1/state').then(r => r.json())]);
          document.getElementById('state').textContent = state.state;
          document.getElementById('epoch').textContent = state.epoch;
          const body = document.querySelector('#peers tbody');
          body.replaceChildren(...peers.map(p => {
            const row = document.createElement('tr');
            row.dataset.name = p.name;
            row.append(text('td', p.name + (p.self ? ' (this node)' : '')), text('td', p.address));
            const st = text('td', p.state); st.className = 'state-' + p.state;
            const su = text('td', p.status); su.className = 'status-' + p.status;
            row.append(st, su, text('td', p.key_share > 0 ? (p.key_share * 100).toFixed(1) + ' %' : '–'));
            return row;
          }));
          const svg = document.getElementById('share');
          const palette = svg.dataset.palette.split(',');
          let x = 0;
          svg.replaceChildren(...peers.filter(p => p.key_share > 0).map((p, i) => {
            const rect = document.createElementNS('http://www.w3.org/2000/svg', 'rect');
            const width = p.key_share * 600;
            rect.setAttribute('x', x); rect.setAttribute('y', 0); rect.setAttribute('width', width);
            rect.setAttribute('height', 28); rect.setAttribute('fill', palette[i % palette.length]);
            const title = document.createElementNS('http://www.w3.org/2000/svg', 'title');
            title.textContent = p.name + ': ' + (p.key_share * 100).toFixed(1) + ' %';
            rect.append(title);
            x += width;
            return rect;
          }));
        }
        let lastTotal = null;
        async function refreshRate() {
          try {
            const metrics = await fetch('/metrics').then(r => r.text());
            let total = 0;
            for (const line of metrics.split('\n')) if (line.startsWith('ringside_requests_total')) total += Number(line.split(' ').pop());
            if (lastTotal !== null) document.getElementById('rate').textContent = ((total - lastTotal) / 2).toFixed(1);
            lastTotal = total;
          } catch (e) {}
        }
        setInterval(refreshRate, 2000); refreshRate();
        const events = document.getElementById('events');
        const watch = new EventSource('/v1/watch');
        watch.onopen = () => { document.getElementById('live').textContent = 'on'; };
        watch.onerror = () => { document.getElementById('live').textContent = 'reconnecting'; };
        const onEvent = e => {
          const line = document.createElement('li');
          line.append(new Date().toTimeString().slice(0, 8) + ' ', text('b', e.type), ' ' + e.data);
          events.prepend(line);
          refreshPeers();
        };
        for (const name of ['joined', 'left', 'died', 'state', 'metadata', 'suspect', 'alive']) watch.addEventListener(name, onEvent);
        watch.addEventListener('view', () => refreshPeers());
        """#
}
