"""Writes one benchmark's section of docs/benchmarks.md without touching the others."""
from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEvery table below is written by the script named in its section; rerun it to refresh.\n"


def machine_line() -> str:
    """One line naming the machine and the software the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"Machine: {cpu}, {os.cpu_count()} cores, {dev}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}.")


def publish_results(output: Path, stem: str, data, markdown: str) -> None:
    """Write a benchmark's results as ``OUTPUT/STEM.json`` and its table as ``OUTPUT/STEM.md``, and print
    the table."""
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{stem}.json").write_text(json.dumps(data, indent=2))
    (output / f"{stem}.md").write_text(markdown)
    print(markdown)


def publish(name: str, lines: list[str], write: bool) -> None:
    """Print a benchmark's section (its lines joined) and, if ``write``, store it as section ``name``."""
    text = "\n".join(lines)
    print(text)
    if write:
        write_section(name, text)


def write_section(name: str, markdown: str, doc: Path = DOC) -> None:
    """Replace (or append) the section delimited by ``<!-- begin:name -->``/``<!-- end:name -->``."""
    text = doc.read_text() if doc.exists() else HEADER
    block = f"<!-- begin:{name} -->\n{markdown.rstrip()}\n<!-- end:{name} -->"
    pattern = re.compile(rf"<!-- begin:{re.escape(name)} -->.*?<!-- end:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    tmp = doc.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(doc)
