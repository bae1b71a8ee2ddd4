#!/usr/bin/env python3
"""Demo upstream for `make run`: a tiny authenticated API (stdlib only).

Credential: `Authorization: Bearer <token>` or `x-api-key: <token>`.
  good      -> 200 {"user":"good"}
  inactive  -> 401 {"error":"account inactive"} + x-negcache-inactive: 1
  otherwise -> 401 {"error":"invalid token"}
/healthz    -> 200, no credential needed.

Prints one line per request it serves (never the token), so you can see
that negative-cache hits never reach it.

Usage: demo_upstream.py [port]   (default 8080, always on 127.0.0.1)
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def token_of(headers):
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, rest = auth.strip().partition(" ")
        if scheme.lower() == "bearer":
            return rest.strip()
        return None
    key = headers.get("x-api-key")
    return key.strip() if key is not None else None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo-upstream"
    sys_version = ""

    def handle_any(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        path = self.path.split("?", 1)[0]
        extra = {}
        if path == "/healthz":
            status, body = 200, {"status": "ok"}
        else:
            token = token_of(self.headers)
            if token == "good":
                status, body = 200, {"user": "good"}
            elif token == "inactive":
                status, body = 401, {"error": "account inactive"}
                extra = {
                    "x-negcache-inactive": "1",
                    "WWW-Authenticate": 'Bearer error="invalid_token"',
                }
            else:
                status, body = 401, {"error": "invalid token"}
                extra = {"WWW-Authenticate": 'Bearer realm="demo", error="invalid_token"'}
        data = json.dumps(body, separators=(",", ":")).encode() + b"\n"
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        print(f"upstream: {self.command} {self.path} -> {status}", flush=True)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any

    def log_message(self, fmt, *args):
        pass  # one line per request is printed by handle_any


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"demo upstream listening on 127.0.0.1:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
