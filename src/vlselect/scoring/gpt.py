"""GPT score: an LLM rates each answer 0-100 for accuracy, detail and variety given its instruction.

The prompt follows AlpaGasus (Chen et al., 2023): a grader model reads the instruction and the response and gives a
score on a fixed scale. InstructionGPT-4 uses it as one of its quality indicators. Requests go through
:mod:`vlselect.llm` (cache, retries, concurrency, budget), so a re-run pays only for examples that have no cached reply.

Real models drift from a requested format, so the reply is asked for as JSON (a JSON schema where the endpoint takes
one, else JSON mode, else plain text) and read by :func:`read_score`, which takes the usual free-text forms too
(``85``, ``Score: 85/100``, ``**Score: 85**``, ``score: 85``) but never guesses: a reply with no score, two different
scores or a score on another scale is re-asked briefly (``max_reasks``), and only then recorded as ``failed`` with
the reply in the ``raw`` column. Such replies are cached like any other; ``retry_failed`` asks them again. When more
than ``max_failed_fraction`` of the answered examples failed, the step stops rather than hand the selection an
indicator that is mostly missing.
"""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pandas as pd

from vlselect.io import write_parquet
from vlselect.llm import LLMClient, Request, host_of, image_part
from vlselect.shards import shard_rows

log = logging.getLogger(__name__)

PROMPT_VERSION = "gpt-score-v2"
SYSTEM = "You are a strict and precise grader of instruction-following data for training vision-language assistants."
TEMPLATE = (
    "We would like your feedback on the quality of an AI assistant's response to the instruction below"
    "{image_note}.\n\n"
    "[Instruction]\n{instruction}\n\n"
    "[Response]\n{answer}\n\n"
    "Rate the response from 0 to 100 for its accuracy (is everything it says true and consistent), its level of "
    "detail (does it cover what the instruction asks), and its variety (no repetition or generic filler). "
    "A higher score means a better response. Reply with only a JSON object of the form "
    "{{\"score\": NN, \"reason\": \"...\"}}, where NN is an integer from 0 to 100 and the reason one short sentence."
)
REASK = ("Your reply could not be read as one score. Reply with only a JSON object {\"score\": NN}, where NN is an "
         "integer from 0 to 100.")
# OpenAI's structured outputs; the parser checks the range, since not every endpoint's schema support knows bounds
SCORE_SCHEMA = {"type": "json_schema", "json_schema": {"name": "score", "strict": True, "schema": {
    "type": "object", "properties": {"score": {"type": "integer"}, "reason": {"type": "string"}},
    "required": ["score", "reason"], "additionalProperties": False}}}
RESPONSE_FORMATS = (SCORE_SCHEMA, {"type": "json_object"})
SKIP_MESSAGE = "GPT score skipped: no endpoint configured (scoring.gpt.base_url); selection will use the other indicators"

_NUMBER = r"(\d+(?:\.\d+)?)"
_SCALE = r"(?:\s*(?:/|out of)\s*(\d+(?:\.\d+)?))?"
# "Score: 85", "score = 85", "\"score\": 85" (JSON cut short), "The score is 85", each with an optional "/100"
_LABELLED = re.compile(r"\bscore\"?\s*(?:[:=]|\bis\b)\s*\"?" + _NUMBER + _SCALE, re.IGNORECASE)
# "85/100" or "85 out of 100" anywhere: a score without a label
_OUT_OF_100 = re.compile(r"(?<![\d.])" + _NUMBER + r"\s*(?:/|out of)\s*100\b", re.IGNORECASE)
# a first line that is only a number: "85", "85.", "85/100"
_BARE = re.compile(_NUMBER + _SCALE + r"\s*[.!]?")
_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL | re.IGNORECASE)


def read_score(text: str | None) -> tuple[float | None, str]:
    """(score, "") for a reply that holds exactly one score from 0 to 100, else (None, what is wrong).

    A JSON object (bare or in a code fence) is read by its ``score`` key alone. Other replies are read leniently but
    never guessed at: every labelled score (``Score: 85``, any case, markdown emphasis ignored, an optional ``/100``),
    every ``NN/100`` and a first line holding only a number are candidates, and they must agree on one integer in
    range. A decimal (``8.5``) or another scale (``8/10``) is refused rather than rescaled.
    """
    if not text or not text.strip():
        return None, "empty reply"
    body = text.strip()
    fenced = _FENCE.fullmatch(body)
    body = fenced.group(1) if fenced else body
    if body.startswith("{"):
        try:
            obj = json.loads(body)
        except json.JSONDecodeError:
            obj = None  # cut short, say by max_tokens: read as free text below
        if isinstance(obj, dict):
            value = next((v for k, v in obj.items() if k.lower() == "score"), None)
            if isinstance(value, str) and re.fullmatch(r"\d+", value.strip()):
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return None, "a JSON reply without a numeric 'score'"
            return _in_range([(str(value), None)])
    plain = re.sub(r"[*_`#]", "", body)
    candidates = [m.groups() for m in _LABELLED.finditer(plain)]
    candidates += [(m.group(1), "100") for m in _OUT_OF_100.finditer(plain)]
    lines = plain.strip().splitlines()  # none when the reply was only markup
    bare = _BARE.fullmatch(lines[0].strip()) if lines else None
    if bare:
        candidates.append(bare.groups())
    if not candidates:
        return None, "no score found"
    return _in_range(candidates)


def _in_range(candidates: list[tuple[str, str | None]]) -> tuple[float | None, str]:
    """The one integer 0-100 that all (number, scale) candidates agree on; a scale other than 100 is refused."""
    values = set()
    for number, scale in candidates:
        value = float(number)
        if scale is not None and float(scale) != 100:
            return None, f"a score on another scale ({number}/{scale})"
        if not value.is_integer() or not 0 <= value <= 100:
            return None, f"{number} is not an integer from 0 to 100"
        values.add(value)
    if len(values) > 1:
        return None, f"different scores in one reply ({', '.join(f'{v:g}' for v in sorted(values))})"
    return values.pop(), ""


def build_messages(instruction: str, answer: str, image_path: str | None = None) -> list[dict]:
    """Chat messages for one example; with ``image_path`` the image goes along as a base64 data URL."""
    text = TEMPLATE.format(instruction=instruction, answer=answer,
                           image_note=" about the attached image" if image_path else "")
    if image_path is None:
        user = text
    else:
        user = [{"type": "text", "text": text}, image_part(image_path)]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def score_gpt(*, manifest: str, out: str, cache_dir: str, enabled: bool = False, base_url: str | None = None,
              model: str = "gpt-4o-mini", api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
              timeout_s: float = 60, max_retries: int = 5, max_usd: float = 5.0, usd_per_1k_input: float = 0.00015,
              usd_per_1k_output: float = 0.0006, with_image: bool = False, on_failure: str = "continue",
              structured: bool = True, max_reasks: int = 2, retry_failed: bool = False,
              max_failed_fraction: float = 0.2, backoff_s: float = 1.0, shard: int = 0, n_shards: int = 1) -> None:
    """Rate each answer 0-100 with an OpenAI-compatible LLM; writes ``out`` (sample_id, score, status, reason, raw).

    Without an endpoint (``enabled`` false or no ``base_url``) every row is NaN/"skipped" and one message says so, so
    the selection runs on the other indicators. ``with_image`` sends the image too (vision endpoints). Replies are
    cached under ``cache_dir`` by (model, prompt version, prompt text, image sha256). ``structured`` asks for JSON
    output (schema, then JSON mode, then plain text, as the endpoint allows); an unreadable reply is re-asked up to
    ``max_reasks`` times; ``retry_failed`` asks cached unreadable replies again. After writing ``out``, the step
    raises when more than ``max_failed_fraction`` of the answered examples failed, or with ``on_failure="stop"``
    when any did (a re-run pays only for the failures).
    """
    if on_failure not in ("continue", "stop"):
        raise ValueError(f"scoring.gpt.on_failure must be 'continue' or 'stop', got {on_failure!r}")
    if not 0 <= max_failed_fraction <= 1:
        raise ValueError(f"scoring.gpt.max_failed_fraction must be from 0 to 1, got {max_failed_fraction}")
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
                       usd_per_1k_input=usd_per_1k_input, usd_per_1k_output=usd_per_1k_output, backoff_s=backoff_s,
                       response_formats=RESPONSE_FORMATS if structured else ())
    requests = []
    for row in df.itertuples(index=False):
        text_only = build_messages(row.instruction, row.answer)
        # the cache key names the image by its sha256, not its bytes, so it stays small and path-independent
        content = {"messages": text_only, "image_sha256": row.image_sha256 if with_image else None}
        messages = build_messages(row.instruction, row.answer, row.image_path) if with_image else text_only
        requests.append(Request(key=client.key(content), messages=messages, max_tokens=64))
    results = client.run(requests, desc="GPT score", accept=lambda text: read_score(text)[0] is not None,
                         reask=REASK, max_reasks=max_reasks, retry_failed=retry_failed)
    problem = client.endpoint_problem(results)
    if problem:
        raise RuntimeError(f"GPT score: {problem}")

    scores, statuses, reasons, raws = [], [], [], []
    for r in results:
        value, why = read_score(r.text) if r.status == "ok" else (None, "")
        if r.status == "ok" and value is None:
            statuses.append("failed")
            reasons.append(f"unparseable: {why}" + (f" (after {r.reasks} re-asks)" if r.reasks else ""))
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
                 "budget_stopped": stats.budget_stopped, "response_format": stats.response_format,
                 "reasks": stats.reasks, "retried_failed": stats.retried_failed}
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
    answered = int(result["status"].isin(["ok", "failed"]).sum())
    if answered and len(failed) / answered > max_failed_fraction:
        raise RuntimeError(_too_many_failed(failed, answered, max_failed_fraction))


def _too_many_failed(failed: pd.DataFrame, answered: int, max_failed_fraction: float) -> str:
    """The failure-share stop's message: how many failed and why, one raw reply, and what to do next.

    It quotes a reply because under Snakemake the output file with the ``raw`` column is removed with the failed job.
    """
    why = failed["reason"].str.split(":").str[0].value_counts().to_dict()
    first = failed.iloc[0]
    example = f"{first['sample_id']}: {first['reason']}" + (f"; reply {first['raw'][:200]!r}" if first["raw"] else "")
    return (f"GPT score: {len(failed)} of {answered} answered examples failed ({why}), more than "
            f"scoring.gpt.max_failed_fraction={max_failed_fraction:g}; e.g. {example}. "
            "Every reply is cached. If the replies hold no readable score, change scoring.gpt.model (or the "
            "endpoint), then re-run with scoring.gpt.retry_failed: true to ask those examples again; HTTP failures "
            "(server errors, timeouts) are asked again on any re-run. To go on without the failed examples, raise "
            "scoring.gpt.max_failed_fraction, or set scoring.gpt.enabled: false to select on the other indicators.")
