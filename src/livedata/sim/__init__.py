"""The simulated fleet: wheel loaders that speak the device protocol.

The demo's organisation and DBC live here, not in :mod:`livedata.sim.demo`, so that
``livedata simulate`` names them without importing the server (the runtime, metadata).
"""

from pathlib import Path

ORG = "demo"
"""The demo's organisation id (what ``--seed-demo`` creates and the simulator sends as)."""
DBC_PATH = Path(__file__).resolve().parent.parent / "dbc" / "loader.dbc"
"""The wheel loader's DBC file, which encodes the simulated frames."""
