"""GPT score through the real openai client against a real local HTTP server (tests/fake_openai.py)."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fake_openai import FakeOpenAI
from vlselect.io import read_parquet_metadata, sha256_file, write_parquet
from vlselect.scoring.gpt import SKIP_MESSAGE, parse_score, score_gpt

KEY = "sk-test-PLANTED-SECRET-123"
ENV = "VLSELECT_TEST_OPENAI_KEY"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(ENV, KEY)


def make_manifest(root: Path, n: int = 8) -> str:
    rows = []
    for i in range(n):
        img = root / "img" / f"{i}.png"
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i * 20 % 255, 10, 200)).save(img)
        rows.append({"sample_id": f"s{i:03d}", "image_path": str(img), "image_sha256": sha256_file(img),
                     "instruction": "Describe this image in detail.", "answer": f"answer number {10 + i} here",
                     "source": "test"})
    path = root / "manifest.parquet"
    write_parquet(pd.DataFrame(rows), path)
    return str(path)


def number(prompt: str) -> int:
    return int(re.search(r"answer number (\d+)", prompt).group(1))


def scripted(prompt: str, n: int) -> dict:
    return {"text": f"Score: {number(prompt)}\nIt is fine."}


def run(srv, manifest, out, cache, **kw):
    args = dict(manifest=manifest, out=str(out), cache_dir=str(cache), enabled=True, base_url=srv.base_url,
                api_key_env=ENV, backoff_s=0.01, max_retries=2, concurrency=4)
    score_gpt(**(args | kw))
    return pd.read_parquet(out), read_parquet_metadata(out)


def test_parse_score_is_strict():
    assert parse_score("Score: 87\nbecause") == 87.0
    assert parse_score("  Score:100.") == 100.0
    for bad in ("score 87", "I give it Score: 80", "Score: 101", "Score: eighty", "", None, "Score: 8.5"):
        assert parse_score(bad) is None


def test_scripted_scores_then_cache(tmp_path):
    manifest = make_manifest(tmp_path)
    with FakeOpenAI(scripted, latency=0.05, api_key=KEY) as srv:
        df, meta = run(srv, manifest, tmp_path / "gpt.parquet", tmp_path / "cache")
        assert list(df["score"]) == [10.0 + i for i in range(8)]
        assert set(df["status"]) == {"ok"}
        assert meta["requests_sent"] == 8 == srv.total
        assert meta["counts"] == {"ok": 8} and meta["prompt_version"] and meta["model"] == "gpt-4o-mini"
        assert meta["base_url_host"].startswith("127.0.0.1:") and meta["usd_spent"] > 0
        assert 1 < srv.max_in_flight <= 4  # the concurrency limit holds
        files = list((tmp_path / "cache" / "gpt_score").glob("*/*.json"))
        assert len(files) == 8 and all(f.parent.name == f.stem[:2] for f in files)
        # a re-run answers from the cache: no request, same scores
        df2, meta2 = run(srv, manifest, tmp_path / "gpt2.parquet", tmp_path / "cache")
        assert srv.total == 8 and meta2["requests_sent"] == 0 and meta2["usd_spent"] == 0
        assert df2["score"].tolist() == df["score"].tolist()


def test_shard_scores_only_its_rows(tmp_path):
    manifest = make_manifest(tmp_path)
    with FakeOpenAI(scripted) as srv:
        df, meta = run(srv, manifest, tmp_path / "s.parquet", tmp_path / "cache", shard=1, n_shards=2)
    assert df["sample_id"].tolist() == [f"s{i:03d}" for i in range(4, 8)] and srv.total == 4
    assert meta["shard"] == [1, 2]


def test_disabled_writes_skipped_with_one_message(tmp_path, caplog):
    manifest = make_manifest(tmp_path, 3)
    caplog.set_level(logging.INFO)
    score_gpt(manifest=manifest, out=str(tmp_path / "g.parquet"), cache_dir=str(tmp_path / "c"), enabled=True,
              base_url=None)
    df = pd.read_parquet(tmp_path / "g.parquet")
    assert df["score"].isna().all() and set(df["status"]) == {"skipped"}
    assert [r.getMessage() for r in caplog.records] == [SKIP_MESSAGE]
    assert read_parquet_metadata(tmp_path / "g.parquet")["counts"] == {"skipped": 3}


def test_429_honours_retry_after(tmp_path):
    manifest = make_manifest(tmp_path, 2)

    def responder(prompt, n):
        return {"status": 429, "retry_after": 1.0} if n == 0 else scripted(prompt, n)

    with FakeOpenAI(responder) as srv:
        df, meta = run(srv, manifest, tmp_path / "g.parquet", tmp_path / "c")
    assert set(df["status"]) == {"ok"}
    # the server answers 429 again to any retry that comes before Retry-After has passed
    assert srv.early_retries == 0 and set(srv.counts.values()) == {2} and meta["requests_sent"] == 4


def test_500_retried_then_ok_or_failed(tmp_path):
    manifest = make_manifest(tmp_path, 4)

    def responder(prompt, n):
        if number(prompt) == 10:
            return {"status": 500}  # always
        return {"status": 503} if n < 2 else scripted(prompt, n)

    with FakeOpenAI(responder) as srv:
        df, meta = run(srv, manifest, tmp_path / "g.parquet", tmp_path / "c", max_retries=2)
    assert df["status"].tolist() == ["failed", "ok", "ok", "ok"]
    assert df["reason"][0].startswith("server_error") and np.isnan(df["score"][0])
    assert set(srv.counts.values()) == {3} and meta["requests_sent"] == 12


def test_timeout_retried_then_failed(tmp_path):
    manifest = make_manifest(tmp_path, 2)

    def responder(prompt, n):
        return {"delay": 3.0, "text": "Score: 99"} if number(prompt) == 10 else scripted(prompt, n)

    with FakeOpenAI(responder) as srv:
        df, _ = run(srv, manifest, tmp_path / "g.parquet", tmp_path / "c", timeout_s=0.5, max_retries=1)
        counts = dict(srv.counts)
    assert df["status"].tolist() == ["failed", "ok"] and df["reason"][0].startswith("timeout")
    assert sorted(counts.values()) == [1, 2]


def test_malformed_replies_fail_with_raw_kept(tmp_path):
    manifest = make_manifest(tmp_path, 3)

    def responder(prompt, n):
        return {10: {"text": "I would give it about eighty."}, 11: {"malformed": True}}.get(number(prompt),
                                                                                          scripted(prompt, n))

    with FakeOpenAI(responder) as srv:
        df, meta = run(srv, manifest, tmp_path / "g.parquet", tmp_path / "c")
    assert df["status"].tolist() == ["failed", "failed", "ok"] and df["score"][:2].isna().all()
    assert df["raw"][0] == "I would give it about eighty." and "not json" in df["raw"][1]
    assert meta["counts"] == {"failed": 2, "ok": 1}
    with FakeOpenAI(responder) as srv, pytest.raises(RuntimeError, match=r"2 of 3 examples failed"):
        run(srv, manifest, tmp_path / "g2.parquet", tmp_path / "c2", on_failure="stop")
    assert (tmp_path / "g2.parquet").exists()  # written first, so a re-run pays only for the failures


def test_budget_stops_cleanly_and_resumes(tmp_path, caplog):
    manifest = make_manifest(tmp_path, 10)
    caplog.set_level(logging.WARNING)
    with FakeOpenAI(scripted) as srv:
        # each request reserves ~ (400 chars / 3) input tokens + 48 output tokens at $1 per 1k -> ~$0.2
        df, meta = run(srv, manifest, tmp_path / "g.parquet", tmp_path / "c", max_usd=0.7, usd_per_1k_input=1.0,
                       usd_per_1k_output=1.0, concurrency=1)
        n_ok = int((df["status"] == "ok").sum())
        assert 0 < n_ok < 10 and srv.total == n_ok == meta["requests_sent"]
        assert (df["status"] == "skipped").sum() == 10 - n_ok and set(df.loc[df.status == "skipped", "reason"]) == {"budget"}
        assert df["status"].tolist() == ["ok"] * n_ok + ["skipped"] * (10 - n_ok)  # a clean prefix
        assert meta["usd_spent"] <= 0.7 and meta["budget_stopped"]
        assert any("raise scoring.gpt.max_usd" in r.getMessage() and f"{n_ok} of 10" in r.getMessage()
                   for r in caplog.records)
        df2, meta2 = run(srv, manifest, tmp_path / "g.parquet", tmp_path / "c", max_usd=100.0,
                         usd_per_1k_input=1.0, usd_per_1k_output=1.0)
        assert set(df2["status"]) == {"ok"} and meta2["requests_sent"] == 10 - n_ok
        assert set(srv.counts.values()) == {1}


def test_endpoint_down_is_a_clear_error(tmp_path):
    manifest = make_manifest(tmp_path, 2)
    srv = FakeOpenAI(scripted).start()
    srv.stop()  # connection refused from now on
    with pytest.raises(RuntimeError) as err:
        run(srv, manifest, tmp_path / "g.parquet", tmp_path / "c", max_retries=1)
    msg = str(err.value)
    assert srv.base_url in msg and "check that the server is running" in msg.lower() and KEY not in msg
    assert not (tmp_path / "g.parquet").exists()


def test_missing_key_env_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV)
    with FakeOpenAI(scripted) as srv, pytest.raises(ValueError, match=ENV):
        run(srv, make_manifest(tmp_path, 1), tmp_path / "g.parquet", tmp_path / "c")


def test_with_image_sends_data_url_and_keys_cache_by_image(tmp_path):
    import base64

    manifest = make_manifest(tmp_path, 2)
    with FakeOpenAI(scripted) as srv:
        run(srv, manifest, tmp_path / "t.parquet", tmp_path / "c")
        assert all(urls == [] for urls in srv.image_urls.values())
        df, meta = run(srv, manifest, tmp_path / "i.parquet", tmp_path / "c", with_image=True)
        assert meta["requests_sent"] == 2 and meta["with_image"]  # not answered from the text-only cache
        assert srv.total == 4 and set(srv.counts.values()) == {1}
        with_urls = [u for u in srv.image_urls.values() if u]
        assert len(with_urls) == 2 and all(u[0].startswith("data:image/png;base64,") for u in with_urls)
        sent = {base64.b64decode(u[0].split(",", 1)[1]) for u in with_urls}
        assert sent == {Path(p).read_bytes() for p in pd.read_parquet(manifest)["image_path"]}
        _, meta2 = run(srv, manifest, tmp_path / "i2.parquet", tmp_path / "c", with_image=True)
        assert meta2["requests_sent"] == 0


def test_planted_key_never_written(tmp_path):
    manifest = make_manifest(tmp_path, 6)
    log_file = tmp_path / "logs" / "run.log"
    log_file.parent.mkdir()
    handler = logging.FileHandler(log_file)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)

    def responder(prompt, n):  # 500 bodies echo the Authorization header; the client must scrub it
        return {10: {"status": 500}, 11: {"malformed": True}, 12: {"text": "no score"}}.get(number(prompt),
                                                                                          scripted(prompt, n))
    try:
        with FakeOpenAI(responder, api_key=KEY) as srv, pytest.raises(RuntimeError) as err:
            run(srv, manifest, tmp_path / "out" / "g.parquet", tmp_path / "cache", on_failure="stop")
        logging.getLogger("test").error("run failed: %s", err.value)
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(old_level)
    df = pd.read_parquet(tmp_path / "out" / "g.parquet")
    assert "Authorization=Bearer [REDACTED]" in df["reason"][0]  # the echo happened, scrubbed
    written = [p for d in ("cache", "out", "logs") for p in (tmp_path / d).rglob("*") if p.is_file()]
    assert len(written) >= 5 and log_file.stat().st_size > 0
    for path in written:
        assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in str(err.value)


KILL_SCRIPT = """
import sys
from vlselect.scoring.gpt import score_gpt
score_gpt(manifest=sys.argv[1], out=sys.argv[2], cache_dir=sys.argv[3], enabled=True, base_url=sys.argv[4],
          api_key_env=sys.argv[5], concurrency=2)
"""


def test_killed_run_resumes_without_repeating_cached_requests(tmp_path):
    n = 16
    manifest = make_manifest(tmp_path, n)
    cache = tmp_path / "cache"
    with FakeOpenAI(scripted, latency=0.2) as srv:
        env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, manifest, str(tmp_path / "g.parquet"), str(cache),
                                 srv.base_url, ENV], env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while srv.total < 6 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not (tmp_path / "g.parquet").exists()
        cached = len(list((cache / "gpt_score").glob("*/*.json")))
        before = srv.total
        assert 0 < cached < n
        df, meta = run(srv, manifest, tmp_path / "g.parquet", cache)
        assert set(df["status"]) == {"ok"} and df["score"].tolist() == [10.0 + i for i in range(n)]
        # only the uncached examples were asked again: none of the cached ones was repeated
        assert meta["requests_sent"] == srv.total - before == n - cached and meta["cache_hits"] == cached
        assert sum(c == 2 for c in srv.counts.values()) <= 2  # at most the requests in flight at the kill
