#!/usr/bin/env python3
"""Copy the vendored browser libraries from node_modules into the web UI's static tree.

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


def main() -> int:
    if not (ROOT / "node_modules").is_dir():
        print(f"error: {ROOT / 'node_modules'} is missing: run npm ci first", file=sys.stderr)
        return 1
    missing = [src for src in FILES if not src.is_file()]
    if missing:
        names = ", ".join(str(src.relative_to(ROOT)) for src in missing)
        print(f"error: {names} not found: run npm ci first", file=sys.stderr)
        return 1
    VENDOR_DIR.mkdir(parents=True, exist_ok=True)
    for src, dst in FILES.items():
        shutil.copyfile(src, dst)
        print(f"{src.relative_to(ROOT)} -> {dst.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
