"""GPT score: an LLM rates each answer 0-100 for accuracy, detail and variety given its instruction.

The prompt follows AlpaGasus (Chen et al., 2023): a grader model reads the instruction and the response and gives a
score on a fixed scale. InstructionGPT-4 uses it as one of its quality indicators. The reply must start with a line
``Score: NN``; anything else is recorded as ``failed`` with the reply in the ``raw`` column, never turned into a
number. Requests go through :mod:`vlselect.llm` (cache, retries, concurrency, budget), so a re-run pays only for
examples that have no cached reply.
"""

from __future__ import annotations

import base64
import logging
import mimetypes
import re
from pathlib import Path

import numpy as np
import pandas as pd

from vlselect.io import write_parquet
from vlselect.llm import LLMClient, Request, host_of
from vlselect.shards import shard_rows

log = logging.getLogger(__name__)

PROMPT_VERSION = "gpt-score-v1"
SYSTEM = "You are a strict and precise grader of instruction-following data for training vision-language assistants."
TEMPLATE = (
    "We would like your feedback on the quality of an AI assistant's response to the instruction below"
    "{image_note}.\n\n"
    "[Instruction]\n{instruction}\n\n"
    "[Response]\n{answer}\n\n"
    "Rate the response from 0 to 100 for its accuracy (is everything it says true and consistent), its level of "
    "detail (does it cover what the instruction asks), and its variety (no repetition or generic filler). "
    "A higher score means a better response. Reply with a first line of exactly the form \"Score: NN\" (an integer "
    "from 0 to 100), then one short sentence explaining the score."
)
SKIP_MESSAGE = "GPT score skipped: no endpoint configured (scoring.gpt.base_url); selection will use the other indicators"
_SCORE = re.compile(r"Score:\s*(\d{1,3})")


def parse_score(text: str | None) -> float | None:
    """The integer from a first line of exactly ``Score: NN`` with 0 <= NN <= 100; None for anything else."""
    if not text:
        return None
    first = text.strip().splitlines()[0].strip().rstrip(".")
    match = _SCORE.fullmatch(first)
    if not match or not 0 <= int(match.group(1)) <= 100:
        return None
    return float(match.group(1))


def build_messages(instruction: str, answer: str, image_path: str | None = None) -> list[dict]:
    """Chat messages for one example; with ``image_path`` the image goes along as a base64 data URL."""
    text = TEMPLATE.format(instruction=instruction, answer=answer,
                           image_note=" about the attached image" if image_path else "")
    if image_path is None:
        user = text
    else:
        mime = mimetypes.guess_type(image_path)[0] or "image/png"
        data = base64.b64encode(Path(image_path).read_bytes()).decode()
        user = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def score_gpt(*, manifest: str, out: str, cache_dir: str, enabled: bool = False, base_url: str | None = None,
              model: str = "gpt-4o-mini", api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
              timeout_s: float = 60, max_retries: int = 5, max_usd: float = 5.0, usd_per_1k_input: float = 0.00015,
              usd_per_1k_output: float = 0.0006, with_image: bool = False, on_failure: str = "continue",
              backoff_s: float = 1.0, shard: int = 0, n_shards: int = 1) -> None:
    """Rate each answer 0-100 with an OpenAI-compatible LLM; writes ``out`` (sample_id, score, status, reason, raw).

    Without an endpoint (``enabled`` false or no ``base_url``) every row is NaN/"skipped" and one message says so, so
    the selection runs on the other indicators. ``with_image`` sends the image too (vision endpoints). Replies are
    cached under ``cache_dir`` by (model, prompt version, prompt text, image sha256). ``on_failure="stop"`` raises after
    the run when any example failed (the file is still written, so a re-run pays only for the failures).
    """
    if on_failure not in ("continue", "stop"):
        raise ValueError(f"scoring.gpt.on_failure must be 'continue' or 'stop', got {on_failure!r}")
    df = pd.read_parquet(manifest)
    df = df.iloc[shard_rows(len(df), shard, n_shards)].reset_index(drop=True)
    metadata = {"indicator": "gpt", "model": model, "prompt_version": PROMPT_VERSION, "with_image": with_image,
                "shard": [shard, n_shards]}
    if not enabled or not base_url:
        log.warning(SKIP_MESSAGE)
        result = pd.DataFrame({"sample_id": df["sample_id"], "score": np.nan, "status": "skipped",
                               "reason": "no_endpoint", "raw": None})
        write_parquet(result, out, metadata=metadata | {"base_url_host": None, "counts": {"skipped": len(df)},
                                                        "usd_spent": 0.0, "requests_sent": 0})
        return

    client = LLMClient(base_url=base_url, model=model, cache_dir=cache_dir, namespace="gpt_score",
                       prompt_version=PROMPT_VERSION, api_key_env=api_key_env, concurrency=concurrency,
                       timeout_s=timeout_s, max_retries=max_retries, max_usd=max_usd,
                       usd_per_1k_input=usd_per_1k_input, usd_per_1k_output=usd_per_1k_output, backoff_s=backoff_s)
    requests = []
    for row in df.itertuples(index=False):
        text_only = build_messages(row.instruction, row.answer)
        # the cache key names the image by its sha256, not its bytes, so it stays small and path-independent
        content = {"messages": text_only, "image_sha256": row.image_sha256 if with_image else None}
        messages = build_messages(row.instruction, row.answer, row.image_path) if with_image else text_only
        requests.append(Request(key=client.key(content), messages=messages, max_tokens=48))
    results = client.run(requests, desc="GPT score")
    problem = client.endpoint_problem(results)
    if problem:
        raise RuntimeError(f"GPT score: {problem}")

    scores, statuses, reasons, raws = [], [], [], []
    for r in results:
        value = parse_score(r.text) if r.status == "ok" else None
        if r.status == "ok" and value is None:
            statuses.append("failed")
            reasons.append("unparseable: the reply does not start with 'Score: NN' (0-100)")
        else:
            statuses.append(r.status)
            reasons.append(r.reason)
        scores.append(np.nan if value is None else value)
        raws.append(r.text)
    result = pd.DataFrame({"sample_id": df["sample_id"], "score": np.array(scores, dtype=float), "status": statuses,
                           "reason": reasons, "raw": raws})
    counts = {k: int(v) for k, v in result["status"].value_counts().items()}
    stats = client.stats
    metadata |= {"base_url_host": host_of(base_url), "counts": counts, "usd_spent": round(stats.usd_spent, 6),
                 "requests_sent": stats.requests_sent, "cache_hits": stats.cache_hits,
                 "input_tokens": stats.input_tokens, "output_tokens": stats.output_tokens,
                 "budget_stopped": stats.budget_stopped}
    write_parquet(result, out, metadata=metadata)
    log.info("GPT score (%s at %s): %s; %d requests, %d cache hits, $%.4f spent", model, host_of(base_url), counts,
             stats.requests_sent, stats.cache_hits, stats.usd_spent)
    if stats.budget_stopped:
        log.warning("GPT score: %s", client.budget_message(counts.get("skipped", 0), len(result)))
    failed = result[result["status"] == "failed"]
    if len(failed) and on_failure == "stop":
        why = failed["reason"].str.split(":").str[0].value_counts().to_dict()
        raise RuntimeError(f"GPT score: {len(failed)} of {len(result)} examples failed ({why}); see the 'reason' and "
                           f"'raw' columns of {out}. Fix the cause and re-run (answered examples are cached), or set "
                           "scoring.gpt.on_failure: continue to keep going without them.")
