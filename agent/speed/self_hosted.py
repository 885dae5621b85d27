"""speedtest-cli against a self-hosted "Speedtest Mini" server, with no route to speedtest.net.

speedtest-cli downloads the speedtest.net configuration in its constructor,
even when it will only talk to a mini server. :class:`SelfHostedSpeedtest`
supplies that configuration locally instead, with the values speedtest.net
serves today (4 threads per URL, 10 s per direction, upload ratio 5).
"""

from __future__ import annotations

from typing import Any

import speedtest

DOWNLOAD_SIZES = [350, 500, 750, 1000, 1500, 2000, 2500, 3000, 3500, 4000]
UPLOAD_SIZES = [524_288, 1_048_576, 7_340_032]
UPLOAD_MAX_CHUNKS = 50


def local_config(test_length_s: int = 10) -> dict[str, Any]:
    """The part of the speedtest.net configuration that the mini-server test reads."""
    upload_count = -(-UPLOAD_MAX_CHUNKS // len(UPLOAD_SIZES))
    return {
        "client": {"ip": "", "isp": "", "lat": "0", "lon": "0", "country": ""},
        "ignore_servers": [],
        "sizes": {"upload": list(UPLOAD_SIZES), "download": list(DOWNLOAD_SIZES)},
        "counts": {"upload": upload_count, "download": 4},
        "threads": {"upload": 2, "download": 8},
        "length": {"upload": test_length_s, "download": test_length_s},
        "upload_max": upload_count * len(UPLOAD_SIZES),
    }


class SelfHostedSpeedtest(speedtest.Speedtest):  # type: ignore[misc]
    """A ``speedtest.Speedtest`` whose configuration comes from :func:`local_config`."""

    def get_config(self) -> dict[str, Any]:
        config = local_config()
        self.config.update(config)
        self.lat_lon = (0.0, 0.0)
        return config
