"""Speed tests: speedtest-cli against Ookla's servers or a self-hosted speed server."""

from agent.speed.progress import Progress, SilentProgress, TerminalProgress
from agent.speed.runner import SpeedTester

__all__ = ["Progress", "SilentProgress", "SpeedTester", "TerminalProgress"]
