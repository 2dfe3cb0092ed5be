"""Open the built book in headless Chromium and check that a page with a figure and a widget renders offline.

Usage: python scripts/check_book_render.py _build/html [--page notebooks/01_first_look.html] [--screenshot out.png]

Checks, on a page that embeds widget state and a figure:
- the widget scripts load from _static (no request leaves localhost; no console error about a missing script);
- after the page's JavaScript ran, the DOM holds rendered widget views (a slider) and the figure's <img>;
- the screenshot is not blank (enough distinct pixel values).
Exit code 0 when all hold, 1 otherwise, with the reason printed.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars"]


def find_widget_page(root: Path) -> Path:
    for page in sorted(root.rglob("*.html")):
        text = page.read_text(errors="ignore")
        if "application/vnd.jupyter.widget-state+json" in text and "<img" in text:
            return page
    raise SystemExit(f"no page under {root} embeds widget state and a figure")


MISSING: list[str] = []  # local paths the page asked for that do not exist in the build


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send_error(self, code, message=None, explain=None):
        if code == 404 and not self.path.startswith("/favicon.ico"):
            MISSING.append(self.path)
        super().send_error(code, message, explain)


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    handler = functools.partial(_Handler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def run_chromium(browser: str, url: str, extra: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
               "--virtual-time-budget=15000", "--window-size=1280,2400", *extra, url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("html_root", type=Path)
    ap.add_argument("--page", default=None, help="page to check, relative to html_root (default: first with a widget)")
    ap.add_argument("--screenshot", type=Path, default=Path("_build/book-check.png"))
    args = ap.parse_args(argv)
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        print("book-check: no Chromium found (Debian: apt-get install chromium)")
        return 1
    root = args.html_root.resolve()
    page = root / args.page if args.page else find_widget_page(root)
    server, port = serve(root)
    url = f"http://127.0.0.1:{port}/{page.relative_to(root).as_posix()}"
    problems = []
    try:
        dom = run_chromium(browser, url, ["--dump-dom"])
        shot = run_chromium(browser, url, [f"--screenshot={args.screenshot.resolve()}"])
    finally:
        server.shutdown()
    html = dom.stdout
    console = dom.stderr + shot.stderr
    if 'class="widget-slider' not in html and "widget-slider" not in html:
        problems.append("no rendered slider widget in the DOM (widget JavaScript did not run)")
    if "jupyter-widgets" not in html:
        problems.append("no jupyter-widgets views in the DOM")
    if not re.search(r"<img[^>]+src=\"[^\"]+\.png\"", html) and "data:image/png" not in html:
        problems.append("no figure <img> on the page")
    # Match the message, not Chromium's "[pid:tid:MMDD/HHMMSS.micros:LEVEL:CONSOLE:line]" prefix (a time of
    # 15:54:04 once read as "404").
    bad = [ln for ln in console.splitlines()
           if "CONSOLE" in ln and re.search(r"(Failed to load|Uncaught|Script error|\brequire\b|\b404\b|ERR_)",
                                            ln.split("] ", 1)[-1])]
    bad += [ln for ln in console.splitlines() if "net::ERR_" in ln and "127.0.0.1" not in ln]
    if bad:
        problems.append("console errors:\n  " + "\n  ".join(bad[:10]))
    if MISSING:
        problems.append("files missing from the build (404):\n  " + "\n  ".join(sorted(set(MISSING))[:10]))
    from PIL import Image

    if not args.screenshot.exists():
        problems.append("no screenshot written")
    else:
        img = Image.open(args.screenshot).convert("L")
        colors = len(img.resize((320, 600)).getcolors(maxcolors=256) or range(256))
        if colors < 32:
            problems.append(f"screenshot looks blank ({colors} distinct grey levels)")
    print(f"book-check: {url}")
    if problems:
        print("book-check: FAILED\n- " + "\n- ".join(problems))
        return 1
    print(f"book-check: ok (widget rendered, figure present, no console errors; screenshot {args.screenshot})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
