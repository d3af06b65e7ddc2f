#!/usr/bin/env python3
"""Copy the vendored browser libraries from node_modules into the web UI's static tree.

ECharts and the Socket.IO client as single files; Leaflet (the fleet page's map) as
``vendor/leaflet/`` with its script, stylesheet and ``images/``.

Run ``npm ci`` first, then ``npm run build`` (or ``python3 scripts/build_web.py``).
The destination, ``src/livedata/web/static/vendor/``, is git-ignored and shipped in
the wheel as a build artifact. Standard library only.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENDOR_DIR = ROOT / "src" / "livedata" / "web" / "static" / "vendor"
FILES = {
    ROOT / "node_modules" / "echarts" / "dist" / "echarts.min.js": VENDOR_DIR / "echarts.min.js",
    ROOT / "node_modules" / "socket.io-client" / "dist" / "socket.io.min.js": VENDOR_DIR
    / "socket.io.min.js",
}
LEAFLET_DIST = ROOT / "node_modules" / "leaflet" / "dist"
LEAFLET_DIR = VENDOR_DIR / "leaflet"
FILES.update(
    {
        LEAFLET_DIST / "leaflet.js": LEAFLET_DIR / "leaflet.js",
        LEAFLET_DIST / "leaflet.css": LEAFLET_DIR / "leaflet.css",
    }
)
DIRS = {LEAFLET_DIST / "images": LEAFLET_DIR / "images"}


def main() -> int:
    if not (ROOT / "node_modules").is_dir():
        print(f"error: {ROOT / 'node_modules'} is missing: run npm ci first", file=sys.stderr)
        return 1
    missing = [src for src in FILES if not src.is_file()]
    missing += [src for src in DIRS if not src.is_dir()]
    if missing:
        names = ", ".join(str(src.relative_to(ROOT)) for src in missing)
        print(f"error: {names} not found: run npm ci first", file=sys.stderr)
        return 1
    for src, dst in FILES.items():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        print(f"{src.relative_to(ROOT)} -> {dst.relative_to(ROOT)}")
    for src, dst in DIRS.items():
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
        print(f"{src.relative_to(ROOT)}/ -> {dst.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
