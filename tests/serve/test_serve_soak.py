"""bench/serve_soak.py for a few seconds on the tiny checkpoint: it starts `gpt2 serve` itself, sends the
whole mix (streams, plain requests, chats, clients that leave mid-stream, refused bodies, a burst past the
queue, conversations and shared headers), stops by itself, and reports no 5xx, every row freed and the prefix
cache within its budget (a tiny one, so it evicts), from the server's own counters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_short_soak_covers_the_mix_and_frees_every_row(ckpt, tmp_path) -> None:
    out = tmp_path / "soak.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "serve_soak.py"), str(ckpt), "--duration", "4",
                        "--concurrency", "3", "--max-batch", "4", "--max-queue", "4", "--burst-every", "2",
                        "--mark", "2", "--grace", "60", "--prefix-cache-mb", "0.1", "--out", str(out), "--log", str(tmp_path / "serve.log")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    rec = json.loads(out.read_text())
    assert rec["responses_5xx"] == 0 and rec["problems"] == []
    kinds = {key.split(" ", 1)[0] for key in rec["by_kind"]}
    assert kinds >= {"stream_completion", "completion", "stream_chat", "chat", "leave_mid_stream", "not_json",
                     "wrong_types", "oversized", "too_long", "burst", "conversation", "shared_header"}
    assert rec["by_kind"].get("oversized 413", 0) >= 1 and rec["by_kind"].get("not_json 400", 0) >= 1
    assert rec["by_status"].get("429", 0) >= 1, "a burst of 16 on a server holding 8 must be refused in part"
    assert rec["client_disconnects"] >= 1
    end = rec["server_end"]
    assert rec["rows_freed"] and end["running"] == end["waiting"] == end["cache_rows"] == 0
    assert end["cancelled_jobs"] >= 1 and end["rejected"] >= 1
    assert rec["ttft_streams"] >= 1 and 0 < rec["ttft_p50_s"] <= rec["ttft_p99_s"]
    assert rec["tokens_per_s"] > 0 and rec["rss_start_mb"] > 0 and rec["rss_end_mb"] > 0
    assert "| 5xx responses | 0 |" in r.stdout
    assert rec["prefix_cache_within_budget"] and rec["prefix_cache_budget_bytes"] == int(0.1 * 2**20)
    assert 0 < rec["prefix_cache_max_bytes"] <= rec["prefix_cache_budget_bytes"] and rec["prefix_cache_samples"] >= 3
    assert rec["prefix_cache_evictions"] >= 1 and rec["prefix_cache_hits"] >= 16
    assert rec["cached_tokens_in_usage"] <= rec["prefix_cache_hits"]  # usage covers the answered requests only
