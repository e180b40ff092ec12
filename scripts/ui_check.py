"""Browser check of the MLflow leaderboard link: does the real MLflow UI show the search's trials
sorted by the objective, with the objective, rank-1, mINP and the searched values as columns?

    .venv/bin/python scripts/ui_check.py sqlite:////abs/path/mlflow.db [--search FOLDER]
        [--experiment NAME] [--out docs/leaderboard.png]

It writes the search's view (as ``reidsearch ui`` does), starts ``mlflow ui`` on a free port,
opens the link in headless Chromium (``apt-get install -y chromium``), driven through the Chrome
DevTools protocol over a pipe (no websocket library), waits until the React app has rendered
the runs table, checks it, writes a screenshot and prints what the page showed. The exit status
is 0 when every check passed. Not a CI test: CI cannot install Chromium.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

# What the page shows, read in the browser: the runs grid's column ids (the UI's canonical keys,
# e.g. metrics.`score`) and its rows in screen order, each a {column id: text} (the grid renders
# a row's pinned and scrolling parts as separate elements with the same row index: joined).
READ_PAGE_JS = """(() => {
  const text = (e) => (e.innerText || '').replace(/\\s+/g, ' ').trim();
  const headers = [...document.querySelectorAll('[role=columnheader][col-id]')]
    .map((e) => e.getAttribute('col-id'));
  const rows = {};
  for (const row of document.querySelectorAll('[role=row][row-index]')) {
    const index = row.getAttribute('row-index');
    rows[index] = rows[index] || {top: row.getBoundingClientRect().top, cells: {}};
    for (const cell of row.querySelectorAll('[role=gridcell][col-id]')) {
      rows[index].cells[cell.getAttribute('col-id')] = text(cell);
    }
  }
  const ordered = Object.values(rows).sort((a, b) => a.top - b.top).map((r) => r.cells);
  return JSON.stringify({href: location.href, headers, rows: ordered,
                         body: text(document.body).slice(0, 3000)});
})()"""
# The assistant chat panel MLflow 3.17 opens on first visit covers the table: closed.
CLOSE_ASSISTANT_JS = """(() => {
  const close = document.querySelector(
    '[data-component-id="mlflow.assistant.chat_panel.close"], [aria-label=Close]');
  if (close) close.click();
  return Boolean(close);
})()"""
RUN_NAME, SCORE = "attributes.`Run Name`", "metrics.`score`"


class DevTools:
    """The Chrome DevTools protocol over ``--remote-debugging-pipe`` (fds 3 and 4)."""

    def __init__(self, chromium: str, profile: str, size: tuple[int, int]) -> None:
        to_browser, self._writer = os.pipe()
        self._reader, from_browser = os.pipe()

        def wire_pipes() -> None:  # the child reads commands on fd 3, answers on fd 4
            high_in, high_out = os.dup(to_browser), os.dup(from_browser)  # not inherited
            os.dup2(high_in, 3)  # inherited: dup2 makes them so
            os.dup2(high_out, 4)

        flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        flags += ["--hide-scrollbars", "--no-first-run", "--remote-debugging-pipe"]
        flags += [f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"]
        self.process = subprocess.Popen(
            [chromium, *flags, "about:blank"],
            preexec_fn=wire_pipes,
            close_fds=False,  # (closing would drop fds 3 and 4; the pipes are not inherited)
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None

    def call(self, method: str, params: dict | None = None, timeout: float = 30) -> dict:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session is not None and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._writer, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while b"\0" not in self._buffer:
                chunk = os.read(self._reader, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._next_id:  # events and other answers are skipped
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
        raise TimeoutError(method)

    def open(self, url: str, size: tuple[int, int]) -> None:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        attach = {"targetId": target, "flatten": True}
        self.session = self.call("Target.attachToTarget", attach)["sessionId"]
        metrics = {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False}
        self.call("Emulation.setDeviceMetricsOverride", metrics)
        self.call("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result.get("result", {}).get("value")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_mlflow_ui(tracking_uri: str, port: int, log: Path) -> subprocess.Popen:
    """``mlflow ui`` on 127.0.0.1:port, returned once it answers /health."""
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri]
    # One worker: on a loaded machine uvicorn's supervisor kills slow-starting workers.
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow ui exited ({process.returncode}); see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return process
        except OSError:
            time.sleep(1)
    process.terminate()
    raise TimeoutError(f"mlflow ui did not answer on port {port}; see {log}")


def expected_trials(tracking_uri: str, view: Any) -> list[tuple[str, float | None]]:
    """The trials' run names and scores, best first, from MLflow itself (not the page)."""
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(tracking_uri=tracking_uri).search_runs(
        [view.experiment_id], filter_string=view.state["searchFilter"], max_results=1000
    )
    trials = [(r.info.run_name, r.data.metrics.get("score")) for r in runs]
    sign = 1.0 if view.state["orderByAsc"] else -1.0
    return sorted(trials, key=lambda t: (t[1] is None, sign * (t[1] or 0.0)))


def check_page(page: dict[str, Any], state: dict[str, Any], trials: list) -> list[str]:
    """What is wrong with what the page shows (nothing: an empty list)."""
    problems = []
    if "Error loading shared view state" in page["body"]:
        problems.append("MLflow said: Error loading shared view state")
    if "searchFilter=" not in page["href"] or "/runs" not in page["href"]:
        problems.append(f"the view's filter was not applied (the page is at {page['href']})")
    headers = page["headers"]
    for wanted in (SCORE, "metrics.`scored_rank1`", "metrics.`scored_mINP`"):
        if wanted not in headers:
            problems.append(f"no column {wanted} (columns: {headers})")
    if not any(h.startswith("params.`searched.") for h in headers):
        problems.append(f"no searched parameter's column (columns: {headers})")
    shown = [row.get(RUN_NAME, "") for row in page["rows"]]  # a name cell starts with a colour
    if len(shown) != len(trials) or not all(
        cell.endswith(name) for cell, (name, _) in zip(shown, trials, strict=False)
    ):
        problems.append(f"rows are not the trials best first: {shown}, expected {trials}")
    try:
        scores = [float(row[SCORE]) for row in page["rows"]]
    except (KeyError, ValueError):
        problems.append("a row shows no score")
    else:
        if scores != sorted(scores, reverse=not state["orderByAsc"]):
            problems.append(f"the score column is not sorted: {scores}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tracking_uri", help="an absolute sqlite:/// URI or a server's URL")
    parser.add_argument("--experiment")
    parser.add_argument("--search", help="a search's folder name (default: the newest)")
    parser.add_argument("--out", default="docs/leaderboard.png", help="the screenshot")
    parser.add_argument("--size", default="1800x600", help="window size, WIDTHxHEIGHT")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for render")
    args = parser.parse_args(argv)
    from reidsearch.search.results.ui_view import search_view

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("no chromium: apt-get install -y chromium", file=sys.stderr)
        return 2
    size = tuple(int(v) for v in args.size.split("x"))
    view = search_view(args.tracking_uri, args.experiment, args.search)
    trials = expected_trials(args.tracking_uri, view)
    work = Path(tempfile.mkdtemp(prefix="ui_check_"))
    port = free_port()
    url = view.url(f"http://127.0.0.1:{port}")
    print(f"link: {url}\nexpected, best first: {trials}")
    server = start_mlflow_ui(args.tracking_uri, port, work / "mlflow_ui.log")
    browser = DevTools(chromium, str(work / "profile"), size)
    page: dict[str, Any] = {"href": "", "headers": [], "rows": [], "body": ""}
    try:
        browser.open(url, size)
        deadline, problems = time.monotonic() + args.timeout, ["the page did not render"]
        while time.monotonic() < deadline and problems:
            time.sleep(2)
            browser.evaluate(CLOSE_ASSISTANT_JS)
            page = json.loads(browser.evaluate(READ_PAGE_JS) or "{}") or page
            if page["rows"]:  # the table rendered: checked until it has settled
                problems = check_page(page, view.state, trials)
        time.sleep(2)  # let the last paint land
        browser.screenshot(Path(args.out))
    finally:
        browser.close()
        server.terminate()
        server.wait(timeout=30)
    print(f"page: {page['href']}\ncolumns: {page['headers']}")
    for n, row in enumerate(page["rows"], 1):
        print(
            f"row {n}: "
            + " | ".join(f"{k.split('`')[-2] if '`' in k else k}={v}" for k, v in row.items() if v)
        )
    print(f"screenshot: {args.out}")
    if problems:
        print("FAILED:\n  " + "\n  ".join(problems) + f"\npage text: {page['body'][:1500]}")
        return 1
    print("OK: the trials are sorted by the objective, with its column, rank-1, mINP and params")
    return 0


if __name__ == "__main__":
    sys.exit(main())
