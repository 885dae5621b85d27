"""What both programs' commands share: ``--config``, ``--log-level``, log format."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def common_options(env_prefix: str) -> argparse.ArgumentParser:
    """A parent parser with ``--config`` (default ``$<PREFIX>CONFIG``) and ``--log-level``."""
    variable = f"{env_prefix}CONFIG"
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=os.environ.get(variable),
        metavar="PATH",
        help=f"TOML config file (default: ${variable}; environment variables "
        f"{env_prefix}* override the file)",
    )
    common.add_argument("--log-level", choices=LOG_LEVELS, help="override the log_level setting")
    return common


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
