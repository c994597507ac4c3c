#!/usr/bin/env python3
"""Opens a page in headless Chromium and watches it through the DevTools protocol (standard library only).

    browse.py URL [--ready JS] [--until JS] [--print JS] [--screenshot FILE] [--timeout SECONDS]

Prints "READY" once the --ready expression is true in the page (so that a test can change the cluster while the
page is open), then waits for --until, then prints the JSON value of --print and, with --screenshot, writes a PNG of
the page. Exit status 1 if a condition is not met in time (the --print value is printed anyway, for the failure).
"""

import argparse
import base64
import itertools
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time


class DevTools:
    """A WebSocket client of the browser's DevTools endpoint: text frames, masked as RFC 6455 asks of clients."""

    def __init__(self, port, path):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RuntimeError("the DevTools endpoint closed during the handshake")
            head += chunk
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"no WebSocket upgrade: {head[:200]!r}")
        self.buffer = head.split(b"\r\n\r\n", 1)[1]
        self.ids = itertools.count(1)

    def _read(self, count):
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("the DevTools endpoint closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def _send(self, text):
        payload = text.encode()
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x81, 0x80 | length)
        elif length < 65536:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x81, 0x80 | 127, length)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _receive(self):
        message = b""
        while True:
            first, second = self._read(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._read(8))[0]
            payload = self._read(length)
            message += payload
            if first & 0x80:
                return json.loads(message)

    def call(self, method, session=None, **params):
        ident = next(self.ids)
        request = {"id": ident, "method": method, "params": params}
        if session:
            request["sessionId"] = session
        self._send(json.dumps(request))
        while True:
            answer = self._receive()
            if answer.get("id") == ident:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--ready", default="true")
    parser.add_argument("--until", default="true")
    parser.add_argument("--print", dest="show", default="document.body.innerText")
    parser.add_argument("--screenshot")
    parser.add_argument("--timeout", type=float, default=30)
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium")
    options = parser.parse_args()

    profile = tempfile.mkdtemp(prefix="ringside-chromium-")
    browser = subprocess.Popen(
        [
            options.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1100,800", "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        active = os.path.join(profile, "DevToolsActivePort")
        deadline = time.monotonic() + 30
        while not (os.path.exists(active) and len(open(active).read().split("\n")) >= 2):
            if time.monotonic() > deadline or browser.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.05)
        port, path = open(active).read().split("\n")[:2]
        tools = DevTools(int(port), path)
        target = tools.call("Target.createTarget", url=options.url)["targetId"]
        session = tools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

        def evaluate(expression):
            try:
                result = tools.call("Runtime.evaluate", session, expression=expression, returnByValue=True)
            except RuntimeError:
                return None  # no document yet (the page is still loading)
            return result.get("result", {}).get("value")

        def wait(expression):
            deadline = time.monotonic() + options.timeout
            while time.monotonic() < deadline:
                if evaluate(expression):
                    return True
                time.sleep(0.1)
            return False

        met = wait(options.ready)
        if met:
            print("READY", flush=True)
            met = wait(options.until)
        print(json.dumps(evaluate(options.show)), flush=True)
        if options.screenshot:
            tools.call(
                "Emulation.setDeviceMetricsOverride", session, width=1100, height=800, deviceScaleFactor=1, mobile=False
            )
            image = tools.call("Page.captureScreenshot", session, format="png")["data"]
            with open(options.screenshot, "wb") as file:
                file.write(base64.b64decode(image))
        return 0 if met else 1
    finally:
        browser.kill()
        browser.wait()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
