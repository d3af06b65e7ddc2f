#!/usr/bin/env python3
"""Copy the vendored browser libraries from node_modules into the web UI's static tree.

ECharts and the Socket.IO client as single files; Leaflet (the fleet page's map) as
``vendor/leaflet/`` with its script, stylesheet and ``images/``; Swagger UI
(``vendor/swagger-ui/``) and ReDoc (``vendor/redoc/``) for the offline API docs at
``/docs`` and ``/redoc``.

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
SWAGGER_DIST = ROOT / "node_modules" / "swagger-ui-dist"
FILES.update(
    {
        SWAGGER_DIST / name: VENDOR_DIR / "swagger-ui" / name
        for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")
    }
)
FILES[ROOT / "node_modules" / "redoc" / "bundles" / "redoc.standalone.js"] = (
    VENDOR_DIR / "redoc" / "redoc.standalone.js"
)

PATCHES = {
    # ReDoc's sidebar shows the Redocly logo from a CDN (and hides it when it fails): no
    # request may leave the server, so it fails at once.
    VENDOR_DIR / "redoc" / "redoc.standalone.js": (
        "https://cdn.redoc.ly/redoc/logo-mini.svg",
        "data:,",
    ),
}
"""Strings replaced in a copied file, so that nothing loads from outside the server."""


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
    for dst, (old, new) in PATCHES.items():
        text = dst.read_text()
        if old not in text:
            print(f"error: {old!r} not in {dst.relative_to(ROOT)}: check PATCHES", file=sys.stderr)
            return 1
        dst.write_text(text.replace(old, new))
        print(f"{dst.relative_to(ROOT)}: {old} -> {new!r}")
    for src, dst in DIRS.items():
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
        print(f"{src.relative_to(ROOT)}/ -> {dst.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
