"""A pytest plugin printing the translation matrix's pass counts (client x upstream, and feature).

    python -m pytest -p tests.e2e.matrix_report tests/e2e/test_translation_matrix.py -n 2

(`python -m` puts the repository on sys.path, which `-p` needs before any conftest runs.)

Loaded with `-p`, it runs in the controlling process, so it sees every worker's results under
pytest-xdist. A cell reads `passed/total`, with `xf N` for known defects (strict xfails) and
`FAIL N` for failures; with `--matrix-json PATH` the counts are also written as JSON.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from typing import Any

import pytest

_ID = re.compile(r"test_translation_matrix\.py::test_pair\[(\w+)-(\w+)-(\w+)\]")
_results: dict[tuple[str, str, str], str] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--matrix-json", default=None, help="write the translation matrix pass counts here")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    m = _ID.search(report.nodeid)
    if m is None:
        return
    key = (m.group(1), m.group(2), m.group(3))
    if report.when == "call" or report.outcome != "passed":
        outcome = ("xfail" if report.skipped else "xpass") if hasattr(report, "wasxfail") else report.outcome
        if _results.get(key) in (None, "passed"):
            _results[key] = outcome


def _cell(c: Counter[str]) -> str:
    total = sum(c.values())
    out = f"{c['passed'] + c['xpass']}/{total}"
    if c["xfail"]:
        out += f" xf{c['xfail']}"
    if c["failed"]:
        out += f" FAIL{c['failed']}"
    return out


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not _results:
        return
    pairs: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    features: dict[str, Counter[str]] = defaultdict(Counter)
    for (client, upstream, feature), outcome in _results.items():
        pairs[client, upstream][outcome] += 1
        features[feature][outcome] += 1
    clients = list(dict.fromkeys(c for c, _ in pairs))
    upstreams = list(dict.fromkeys(u for _, u in pairs))
    tr = terminalreporter
    tr.section("translation matrix: client (rows) x upstream (columns), passed/total")
    width = 16
    tr.write_line("client".ljust(11) + "".join(u.ljust(width) for u in upstreams) + "all")
    for client in clients:
        row = Counter[str]()
        cells = []
        for upstream in upstreams:
            row.update(pairs[client, upstream])
            cells.append(_cell(pairs[client, upstream]).ljust(width))
        tr.write_line(client.ljust(11) + "".join(cells) + _cell(row))
    tr.write_line("")
    tr.write_line("per feature (over all pairs it applies to):")
    for feature, c in features.items():
        tr.write_line(f"  {feature.ljust(24)}{_cell(c)}")
    everything = sum(pairs.values(), Counter[str]())
    tr.write_line(f"total: {_cell(everything)}")
    path = config.getoption("--matrix-json")
    if path:
        data = {f"{c}-{u}": dict(v) for (c, u), v in pairs.items()}
        with open(path, "w") as f:
            json.dump({"pairs": data, "features": {k: dict(v) for k, v in features.items()}}, f, indent=1)
