"""The search benchmark's smoke test at 10^4 faces: the section runs end to end on a real
library file and reports what the issue asks for (numbers are bench's, not asserted)."""
from __future__ import annotations

import json
import subprocess
import sys


def test_bench_search_section_smoke(tmp_path):
    report = tmp_path / "report" / "report.md"
    subprocess.run([sys.executable, "-m", "bench", "--sections", "search", "--search-sizes", "10000",
                    "--work", str(tmp_path / "work"), "--report", str(report)], check=True, timeout=240)
    saved = json.loads((report.parent / "results" / "search.json").read_text())
    (row,) = saved["rows"]
    assert row["faces"] == 10000 and row["index"] == row["cold_index"] == "exact"
    assert row["recall_at_1"] == 1.0 and row["recall_at_10"] >= 0.99 and row["recall_of_person"] == 1.0
    assert 0 < row["p50_ms"] <= row["p99_ms"] and row["cold_s"] > 0 and row["rss_mb"] > 0
    assert row["library"]["blocks"] == 3   # 10^4 faces in 4096-face blocks, as a scan leaves them
    assert saved["estimate_1e7"]["faces"] == 10_000_000
    assert "Search: one person among" in report.read_text()
