"""Tests only: speedtest.net's configuration and server list, served inside a namespace.

    python fake_speedtest_net.py --cert cert.pem --key key.pem \\
        --server 1001,127.0.0.1:8081,43.2,76.9,Almaty --server 1002,...

Listens on 127.0.0.1:443 (HTTPS) and 127.0.0.1:80 (HTTP). The test gives
its namespace an /etc/hosts that sends www.speedtest.net and c.speedtest.net
here, and trusts ``--cert`` through SSL_CERT_FILE. Like the real site, the
configuration is refused over plain HTTP (403); the server lists are served
on both. Every request is logged to stdout as ``<scheme> <path>``.
"""

from __future__ import annotations

import argparse
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

CONFIG = """<?xml version="1.0" encoding="UTF-8"?>
<settings>
<client ip="10.0.0.2" lat="43.25" lon="76.95" isp="School ISP" isprating="3.7" rating="0"
 ispdlavg="0" ispulavg="0" loggedin="0" country="KZ"/>
<server-config threadcount="4" ignoreids="" notonmap="" forcepingid="" preferredserverid=""/>
<download testlength="10" initialtest="250K" mintestsize="250K" threadsperurl="4"/>
<upload testlength="10" ratio="5" initialtest="0" mintestsize="32K" threads="2"
 maxchunksize="512K" maxchunkcount="50" threadsperurl="4"/>
</settings>
"""


def servers_xml(servers: list[str]) -> str:
    rows = []
    for spec in servers:
        server_id, host, lat, lon, name = spec.split(",")
        rows.append(
            f'<server url="http://{host}/speedtest/upload.php" lat="{lat}" lon="{lon}" '
            f'name="{name}" country="Kazakhstan" cc="KZ" sponsor="Test {name}" '
            f'id="{server_id}" host="{host}"/>'
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<settings><servers>\n'
        + "\n".join(rows)
        + "\n</servers></settings>\n"
    )


def handler(secure: bool, listing: bytes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            print(f"{'https' if secure else 'http'} {path}", flush=True)
            if path == "/speedtest-config.php":
                if not secure:
                    self._answer(403, b"Forbidden")
                else:
                    self._answer(200, CONFIG.encode())
            elif path in ("/speedtest-servers-static.php", "/speedtest-servers.php"):
                self._answer(200, listing)
            else:
                self._answer(404, b"not found")

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--server", action="append", default=[], help="id,host:port,lat,lon,name")
    args = parser.parse_args()
    listing = servers_xml(args.server).encode()
    plain = ThreadingHTTPServer(("127.0.0.1", 80), handler(False, listing))
    secure = ThreadingHTTPServer(("127.0.0.1", 443), handler(True, listing))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    secure.socket = context.wrap_socket(secure.socket, server_side=True)
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    print("ready", flush=True)
    sys.stdout.flush()
    secure.serve_forever()


if __name__ == "__main__":
    main()
