"""Safety devices: inventory, checks, heartbeats, state, reports."""
