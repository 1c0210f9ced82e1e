"""``pip install ... 2>&1 | python3 tools/pip_progress.py``: pip's output as a short progress log.

``make`` installs some 150 packages (torch, Ray, MLflow: ~3 minutes the first time). ``pip -q`` says nothing all
that while and plain pip prints hundreds of lines; this prints one line per package collected, the big
downloads, the install step, and, whenever pip is silent for ``--every`` seconds (unpacking torch takes a while),
a line saying it is still at work. Errors and warnings pass through whole. Standard library only (it runs
before the virtual environment exists).
"""
from __future__ import annotations

import argparse
import queue
import re
import sys
import threading
import time

DROP = ("is ignored: it is neither",)  # pip's noise about requirement files' comments


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=float, default=20.0, help="seconds of silence before a 'still working' line")
    args = ap.parse_args()
    t0 = time.time()
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in sys.stdin:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()

    def say(msg: str) -> None:
        s = int(time.time() - t0)
        print(f"  [{s // 60}:{s % 60:02d}] {msg}", flush=True)
        shown[0] = time.time()

    collected = satisfied = 0
    stage = "starting pip"
    shown = [time.time()]  # when a line was last shown: silence is counted from there, not from pip's last line
    passthrough = False  # after an error: everything pip says
    while True:
        if time.time() - shown[0] >= args.every:  # also while pip prints lines that are not shown
            say(f"still working: {stage}")
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        if line is None:
            break
        text = line.strip()
        if not text or any(d in text for d in DROP):
            continue
        if passthrough or text.startswith(("ERROR", "error:", "WARNING", "×", "╰─>")):
            passthrough = passthrough or not text.startswith("WARNING")
            print(line, flush=True)
            shown[0] = time.time()
        elif text.startswith("Collecting "):
            collected += 1
            stage = f"collecting {text.split()[1]}"
            say(f"collecting {collected}: {text.split()[1]}")
        elif text.startswith("Downloading ") and re.search(r"\(\s*[\d.]+\s*MB\)", text):
            stage = f"downloading {text.split()[1]}"
            say(text)
        elif text.startswith("Requirement already satisfied"):
            satisfied += 1
        elif text.startswith("Installing collected packages"):
            n = len(text.split(":", 1)[1].split(","))
            stage = f"installing {n} packages"
            say(f"installing {n} packages (the large ones, torch and ray, take a minute or two)")
        elif text.startswith("Successfully installed"):
            say(f"installed {len(text.split()) - 2} packages")
    if satisfied:
        say(f"{satisfied} requirements already satisfied")
    return 0


if __name__ == "__main__":
    sys.exit(main())
