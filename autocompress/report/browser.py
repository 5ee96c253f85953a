"""Open a report in headless Chromium, as a person would: the rendered DOM, the console, a
screenshot. Used by the tests and to refresh the README's screenshot::

    python -m autocompress.report.browser runs/digits-cnn/report.html --screenshot docs/report.png

Needs Debian's ``chromium`` package (``apt-get install -y chromium``); nothing else.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=8000")
_CONSOLE = re.compile(r':CONSOLE(?::|\()\d*\)?\]? "(?P<msg>.*)", source: (?P<src>.*)$')


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass(frozen=True)
class PageResult:
    dom: str                      # the DOM after scripts ran (--dump-dom)
    console: list[str]            # every console message the page logged
    errors: list[str]             # uncaught errors, blocked loads, errors the page trapped itself

    @property
    def rendered(self) -> bool:
        return 'data-rendered="1"' in self.dom


def open_page(html_file: Path, *, screenshot: Path | None = None, width: int = 1280, height: int = 2400,
              timeout_s: float = 120.0) -> PageResult:
    """Load ``html_file`` from disk in headless Chromium; optionally save a screenshot."""
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("chromium is not installed (Debian: apt-get install -y chromium)")
    url = Path(html_file).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="autocompress-chromium-") as profile:
        base = [exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]
        proc = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=timeout_s)
        if screenshot is not None:
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            shot = subprocess.run([*base, f"--screenshot={Path(screenshot).resolve()}", url],
                                  capture_output=True, text=True, timeout=timeout_s)
            if shot.returncode != 0 or not Path(screenshot).is_file():
                raise RuntimeError(f"chromium could not take a screenshot: {shot.stderr[-800:]}")
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited with {proc.returncode}: {proc.stderr[-800:]}")
    console = [m.group("msg") for m in map(_CONSOLE.search, proc.stderr.splitlines()) if m]
    errors = [c for c in console if c.startswith("Uncaught") or "Refused to" in c
              or "Content Security Policy" in c]
    trapped = re.search(r'<div id="js-errors"(?P<attrs>[^>]*)>(?P<text>[^<]*)</div>', proc.stdout)
    if trapped is None:
        errors.append("the page's error box (#js-errors) is missing: the page did not load")
    elif "hidden" not in trapped.group("attrs") or trapped.group("text").strip():
        errors.append(trapped.group("text").strip() or "the page reported a script error")
    return PageResult(proc.stdout, console, errors)


def main() -> None:  # pragma: no cover - a developer tool
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2400)
    args = parser.parse_args()
    page = open_page(args.html, screenshot=args.screenshot, width=args.width, height=args.height)
    print(f"rendered: {page.rendered}; plots: {page.dom.count('main-svg')} svg layers; errors: {page.errors or 'none'}")


if __name__ == "__main__":  # pragma: no cover
    main()
