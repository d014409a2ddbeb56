"""GPT score through the real openai client against a real local HTTP server (tests/fake_openai.py)."""

from __future__ import annotations

import json
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
import yaml
from PIL import Image

from fake_openai import FakeOpenAI
from workflow_helpers import REPO, snakemake, write_config
from vlselect.io import read_parquet_metadata, sha256_file, write_parquet
from vlselect.scoring.gpt import REASK, SKIP_MESSAGE, read_score, score_gpt

KEY = "sk-test-PLANTED-SECRET-123"
ENV = "VLSELECT_TEST_OPENAI_KEY"


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


# The forms real models reply in when asked for a score; each holds exactly one score.
FREE_TEXT = {
    "85": 85, "85.": 85, "Score: 85/100": 85, "**Score: 85**": 85, "**Score:** 85\nGood detail.": 85,
    "score: 85": 85, "SCORE = 85": 85, "The score is 85.": 85, "85 out of 100": 85, "I rate it 85/100.": 85,
    "Score: 85\nThe answer names 3 shapes.": 85, "Score: 85\nIn short, 85/100.": 85,
    '{"score": 85, "reason": "accurate"}': 85, '```json\n{"score": 85}\n```': 85,
    '{"score": 85, "reason": "accurate but cut sh': 85, '{"Score": "85"}': 85, "Score: 0": 0, "  Score:100.": 100,
}
# Replies that do not say one score on the 0-100 scale: failures, never guessed at.
AMBIGUOUS = ["Score: 80\nOn reflection, 90/100.", "Accuracy score: 90, detail score: 70", "85\nScore: 60",
             '{"score": 8.5}', "Score: 8/10", "Score: 8.5", "Score: 101", "I would give it about eighty.",
             "3 circles are red", '{"rating": 85}', '{"score": true}', "***", "```\n```", "", None]


@pytest.mark.parametrize("reply", FREE_TEXT)
def test_read_score_takes_the_usual_free_text_forms(reply):
    assert read_score(reply) == (FREE_TEXT[reply], "")


@pytest.mark.parametrize("reply", AMBIGUOUS)
def test_read_score_refuses_ambiguous_replies(reply):
    value, problem = read_score(reply)
    assert value is None and problem


def test_free_text_and_ambiguous_replies_through_the_client(tmp_path):
    """Each form as the endpoint's reply: the free-text ones are scored, the ambiguous ones fail with the reply kept."""
    forms = list(FREE_TEXT.items())[:6] + [(AMBIGUOUS[0], None), (AMBIGUOUS[4], None)]
    manifest = make_manifest(tmp_path, len(forms))
    with FakeOpenAI(lambda prompt, n: {"text": forms[number(prompt) - 10][0]}) as srv:
        df, meta = run(srv, manifest, tmp_path / "g.parquet", tmp_path / "c", max_reasks=0, max_failed_fraction=1.0)
    expected = [np.nan if v is None else float(v) for _, v in forms]
    np.testing.assert_array_equal(df["score"].to_numpy(), expected)
    assert df["status"].tolist() == ["ok"] * 6 + ["failed"] * 2
    assert df["raw"].tolist()[6:] == [AMBIGUOUS[0], AMBIGUOUS[4]]
    assert df["reason"][6] == "unparseable: different scores in one reply (80, 90)"
    assert df["reason"][7] == "unparseable: a score on another scale (8/10)"


def json_reply(prompt: str, n: int) -> dict:
    return {"text": f'{{"score": {number(prompt)}, "reason": "fine"}}'}


@pytest.mark.parametrize("refused, used", [((), "json_schema"), (("json_schema",), "json_object"),
                                           (("json_schema", "json_object"), "text")])
def test_structured_output_falls_back_when_the_endpoint_refuses_it(tmp_path, refused, used):
    manifest = make_manifest(tmp_path, 4)
    with FakeOpenAI(json_reply, refuse_formats=refused) as srv:
        df, meta = run(srv, manifest, tmp_path / "g.parquet", tmp_path / "c", concurrency=1)
    assert df["score"].tolist() == [10.0, 11.0, 12.0, 13.0] and set(df["status"]) == {"ok"}
    # each refused mode is tried once, then the next one for the rest of the run
    assert srv.formats == list(refused) + [used] * 4
    assert meta["response_format"] == used and meta["requests_sent"] == len(refused) + 4


def test_structured_false_sends_no_response_format(tmp_path):
    manifest = make_manifest(tmp_path, 2)
    with FakeOpenAI(scripted) as srv:
        df, meta = run(srv, manifest, tmp_path / "g.parquet", tmp_path / "c", structured=False)
    assert srv.formats == ["text", "text"] and meta["response_format"] == "text" and set(df["status"]) == {"ok"}


def test_unreadable_reply_is_re_asked_then_failed(tmp_path):
    """An unreadable reply gets a short follow-up; one that stays unreadable fails after max_reasks follow-ups."""
    manifest = make_manifest(tmp_path, 3)
    followups = []

    def responder(prompt, n):
        k = number(prompt)
        if REASK in prompt:
            followups.append(prompt)
            return {"text": "Still thinking about it."} if k == 12 else {"text": f'{{"score": {k}}}'}
        return {"text": scripted(prompt, n)["text"] if k == 10 else "It deserves a high mark."}

    with FakeOpenAI(responder) as srv:
        df, meta = run(srv, manifest, tmp_path / "g.parquet", tmp_path / "c", max_reasks=2, max_failed_fraction=1.0)
    assert df["status"].tolist() == ["ok", "ok", "failed"] and df["score"].tolist()[:2] == [10.0, 11.0]
    assert df["reason"][2] == "unparseable: no score found (after 2 re-asks)"
    assert df["raw"][2] == "Still thinking about it."
    assert meta["reasks"] == 3 and meta["requests_sent"] == 1 + 2 + 3 == srv.total
    assert all(p.endswith(REASK) for p in followups)


def test_cached_failures_are_asked_again_only_with_retry_failed(tmp_path):
    manifest = make_manifest(tmp_path, 4)
    model_fixed = False

    def responder(prompt, n):
        k = number(prompt)
        return scripted(prompt, n) if k < 12 or model_fixed else {"text": "Excellent answer!"}

    cache = tmp_path / "c"
    with FakeOpenAI(responder) as srv:
        df, _ = run(srv, manifest, tmp_path / "g1.parquet", cache, max_reasks=0, max_failed_fraction=1.0)
        assert df["status"].tolist() == ["ok", "ok", "failed", "failed"] and srv.total == 4
        model_fixed = True
        # the unreadable replies are cached: a plain re-run keeps them and pays nothing
        df, meta = run(srv, manifest, tmp_path / "g2.parquet", cache, max_reasks=0, max_failed_fraction=1.0)
        assert df["status"].tolist() == ["ok", "ok", "failed", "failed"]
        assert meta["requests_sent"] == 0 and srv.total == 4
        df, meta = run(srv, manifest, tmp_path / "g3.parquet", cache, max_reasks=0, retry_failed=True)
        assert df["score"].tolist() == [10.0, 11.0, 12.0, 13.0] and set(df["status"]) == {"ok"}
        assert meta["requests_sent"] == 2 == meta["retried_failed"] and meta["cache_hits"] == 2
        # the new replies replaced the failures in the cache
        _, meta = run(srv, manifest, tmp_path / "g4.parquet", cache, retry_failed=True)
        assert meta["requests_sent"] == 0 and meta["cache_hits"] == 4


def test_failure_share_over_the_limit_stops_with_what_to_do(tmp_path):
    manifest = make_manifest(tmp_path, 8)

    def responder(prompt, n):  # 2 of 8 unreadable: 25%
        return {"text": "A fine answer overall."} if number(prompt) in (11, 14) else scripted(prompt, n)

    with FakeOpenAI(responder) as srv:
        with pytest.raises(RuntimeError) as err:
            run(srv, manifest, tmp_path / "g.parquet", tmp_path / "c", max_reasks=0, max_failed_fraction=0.2)
        msg = str(err.value)
        assert "2 of 8 answered examples failed" in msg and "max_failed_fraction=0.2" in msg
        assert "'A fine answer overall.'" in msg and "s001" in msg  # the reply is quoted: Snakemake deletes the file
        assert "scoring.gpt.retry_failed: true" in msg and "scoring.gpt.enabled: false" in msg
        # at or under the limit the run goes on, the failures recorded
        df, _ = run(srv, manifest, tmp_path / "g2.parquet", tmp_path / "c", max_reasks=0, max_failed_fraction=0.25)
    assert (df["status"] == "failed").sum() == 2


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
        df, meta = run(srv, manifest, tmp_path / "g.parquet", tmp_path / "c", max_retries=2,
                       max_failed_fraction=1.0)
    assert df["status"].tolist() == ["failed", "ok", "ok", "ok"]
    assert df["reason"][0].startswith("server_error") and np.isnan(df["score"][0])
    assert set(srv.counts.values()) == {3} and meta["requests_sent"] == 12


def test_timeout_retried_then_failed(tmp_path):
    manifest = make_manifest(tmp_path, 2)

    def responder(prompt, n):
        return {"delay": 3.0, "text": "Score: 99"} if number(prompt) == 10 else scripted(prompt, n)

    with FakeOpenAI(responder) as srv:
        df, _ = run(srv, manifest, tmp_path / "g.parquet", tmp_path / "c", timeout_s=0.5, max_retries=1,
                    max_failed_fraction=1.0)
        counts = dict(srv.counts)
    assert df["status"].tolist() == ["failed", "ok"] and df["reason"][0].startswith("timeout")
    assert sorted(counts.values()) == [1, 2]


def test_malformed_replies_fail_with_raw_kept(tmp_path):
    manifest = make_manifest(tmp_path, 3)

    def responder(prompt, n):
        return {10: {"text": "I would give it about eighty."}, 11: {"malformed": True}}.get(number(prompt),
                                                                                          scripted(prompt, n))

    with FakeOpenAI(responder) as srv:
        df, meta = run(srv, manifest, tmp_path / "g.parquet", tmp_path / "c", max_failed_fraction=1.0)
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
        env = os.environ | {"PYTHONPATH": str(REPO / "src")}
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


def test_the_workflow_hands_the_reply_settings_to_the_step(tmp_path):
    settings = {"retry_failed": True, "max_failed_fraction": 0.5, "max_reasks": 1, "structured": False}
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["scoring"]["gpt"] |= settings
    write_config(tmp_path, config)
    out = snakemake(tmp_path, "-n", "-p").stdout
    command = next(line for line in out.splitlines() if "vlselect score-gpt" in line)
    params = json.loads(command.split("--params '")[1].split("'")[0])
    assert {k: params[k] for k in settings} == settings
