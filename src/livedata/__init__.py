"""livedata: machine telemetry, decoded, stored and pushed live to the browser."""

__version__ = "0.1.0"
