"""A tiny HTTPS server standing in for an identity provider's JWKS endpoint,
for tests/tests/jwks_url.rs.

It serves whatever the test puts in its state directory, read afresh on every
request, so a test can rotate keys or break the server while the gateway runs:

  jwks.json     the document answered with 200 (mode "ok")
  mode          "ok" (default), "500" (an error page) or "garbage" (200, not JSON)
  delay_ms      milliseconds to wait before answering (default 0)
  requests.log  one line appended per request: the test counts fetches here

Usage: jwks_server.py CERT KEY STATE_DIR.  Binds 127.0.0.1 on a free port and
prints "PORT <n>" on stdout once it accepts connections.  Standard library
only.  It holds no test logic and never binds anything but loopback.
"""

import http.server
import pathlib
import ssl
import sys
import threading
import time


def main() -> int:
    cert, key, state = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
    log_lock = threading.Lock()

    def read(name: str, default: str) -> str:
        try:
            return (state / name).read_text().strip()
        except OSError:
            return default

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 (http.server's naming)
            with log_lock:
                with open(state / "requests.log", "a") as log:
                    log.write(self.path + "\n")
            delay = int(read("delay_ms", "0") or "0")
            if delay:
                time.sleep(delay / 1000)
            mode = read("mode", "ok")
            if mode == "500":
                self.answer(500, b"internal error", "text/plain")
            elif mode == "garbage":
                self.answer(200, b"<html>not a key set</html>", "application/json")
            else:
                self.answer(200, (state / "jwks.json").read_bytes(), "application/json")

        def answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
