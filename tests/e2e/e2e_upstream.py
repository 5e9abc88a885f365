"""A stand-in application behind the proxies of the end-to-end tests.

Run as ``python e2e_upstream.py NAME LOG``: it binds a free loopback port, prints it on
stdout, and answers every request with ``200`` and ``{"upstream": NAME}``, after
appending the request (method, path with query, the headers the tests look at, body
length) as one JSON line to LOG. The log line is written and flushed before the answer,
so a client that got an answer from this upstream always finds its request in the log;
the tests read these logs, not the proxies' answers, to know what reached an upstream.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

# The headers recorded: the request's tag and everything execgate or a proxy may add.
RECORDED: Final = (
    "x-e2e-id",
    "execgate-route",
    "execgate-decision",
    "execgate-outcome",
    # What must never reach a service (see test_override_headers_never_reach_the_upstream).
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-original-method",
    "x-forwarded-uri",
    "x-forwarded-method",
    "x-forwarded-prefix",
)


def _handler(name: str, log_path: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            record = {
                "upstream": name,
                "method": self.command,
                "path": self.path,
                # As a service reading headers as CGI variables would: X_Original_URL is
                # X-Original-URL there, so it is recorded (under its own name) too.
                "headers": {
                    name.lower(): value
                    for name, value in self.headers.items()
                    if name.lower().replace("_", "-") in RECORDED
                },
                "body_length": len(body),
            }
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(json.dumps(record) + "\n")
            out = json.dumps({"upstream": name}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(out)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the JSON log above is the record."""

    return Handler


def main() -> None:
    name, log_path = sys.argv[1], sys.argv[2]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(name, log_path))
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
