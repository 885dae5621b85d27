"""school-monitor agent: measures a school's internet and safety devices, publishes over MQTT."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("school-monitor")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
