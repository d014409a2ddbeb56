"""A small OpenAI-compatible chat client shared by the GPT score and the pairwise judge.

Why not call ``openai`` directly from each step: both steps need the same guarantees, and they are easy to get
subtly wrong. This module gives them

* concurrency: at most ``concurrency`` requests in flight (an ``asyncio.Semaphore`` over ``AsyncOpenAI``);
* retries: 429, 5xx, timeouts and connection errors are retried with exponential backoff and jitter, honouring the
  server's ``Retry-After``; the ``openai`` client's own retries are off (``max_retries=0``) so ours are the only ones
  and ``requests_sent`` counts every HTTP attempt exactly;
* a persistent cache: one JSON file per request under ``cache_dir/<namespace>/<first2>/<sha256>.json``, written
  atomically (temp file + rename), so concurrent processes and killed runs never leave a half-written entry and a
  re-run never pays twice; the key is the sha256 of (model, prompt_version, request content);
* a budget: tokens and dollars are counted from the replies' ``usage``; before each request the worst-case cost
  (input estimated from its length, output ``max_tokens``) is reserved, and once the budget would be exceeded no new
  request is sent: in-flight ones finish, the rest come back ``skipped`` with reason ``budget``;
* secrecy: the API key is read only from the environment variable named by ``api_key_env`` and is scrubbed from
  every error text this module returns or logs; it is never part of a cache key or a cache file;
* structured output: ``response_formats`` (best first) are sent as the request's ``response_format``; one the endpoint
  refuses (HTTP 400 or 422) is dropped for the rest of the run, and after the last one the request goes as plain text,
  so an endpoint without JSON modes still answers;
* re-asks: :meth:`LLMClient.run` with ``accept`` checks each reply and, when it is unusable, asks again with a short
  follow-up (the reply and ``reask``) up to ``max_reasks`` times; the final reply is cached either way, and
  ``retry_failed`` asks again for cached replies that ``accept`` refuses.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import random
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

log = logging.getLogger(__name__)
# httpx logs one INFO line per request; at thousands of requests that buries the messages that matter
for _name in ("httpx", "httpx2"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# failure reasons that mean "the endpoint itself is unusable", not "this one example went wrong"
ENDPOINT_REASONS = ("connection", "timeout", "auth", "not_found")


@dataclass(frozen=True)
class Request:
    """One chat request. ``key`` is the cache key (see :meth:`LLMClient.key`)."""

    key: str
    messages: list[dict]
    max_tokens: int = 64


@dataclass
class Result:
    status: str  # ok | failed | skipped
    text: str | None = None  # the reply (kept for failed parses too: never invent a value)
    reason: str = ""  # "" when ok; budget | rate_limit | server_error | timeout | connection | auth | ... + detail
    cached: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    reasks: int = 0  # follow-ups sent because ``accept`` refused a reply


@dataclass
class Stats:
    requests_sent: int = 0  # HTTP attempts, retries included
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usd_spent: float = 0.0
    budget_stopped: bool = False
    by_reason: dict = field(default_factory=dict)
    reasks: int = 0  # follow-up requests sent for unusable replies
    retried_failed: int = 0  # cached unusable replies asked again (``retry_failed``)
    response_format: str = "text"  # the structured-output mode in use at the end of the run


def host_of(base_url: str) -> str:
    """The host[:port] of ``base_url``: safe to log and store (no path, query or credentials)."""
    parsed = urlparse(base_url)
    return parsed.hostname + (f":{parsed.port}" if parsed.port else "") if parsed.hostname else "?"


class ResponseCache:
    """One JSON file per key; writes are atomic, so readers never see partial files, even across processes."""

    def __init__(self, root: str | os.PathLike, namespace: str):
        self.root = Path(root) / namespace

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self.path(key)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:  # cannot happen with atomic writes; an edited file is treated as absent
            log.warning("cache entry %s is not valid JSON; asking again", path)
            return None

    def put(self, key: str, entry: dict) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(entry, fh)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


class LLMClient:
    """Cached, budgeted, retrying chat completions against an OpenAI-compatible ``base_url``."""

    def __init__(self, *, base_url: str, model: str, cache_dir: str, namespace: str, prompt_version: str,
                 api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8, timeout_s: float = 60,
                 max_retries: int = 5, max_usd: float = 5.0, usd_per_1k_input: float = 0.00015,
                 usd_per_1k_output: float = 0.0006, backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                 config_prefix: str = "scoring.gpt", response_formats: tuple[dict, ...] = ()):
        if not base_url:
            raise ValueError(f"no endpoint: set {config_prefix}.base_url (an OpenAI-compatible URL ending in /v1)")
        if concurrency < 1:
            raise ValueError(f"{config_prefix}.concurrency must be at least 1, got {concurrency}")
        key = os.environ.get(api_key_env)
        if not key:
            raise ValueError(
                f"the environment variable {api_key_env} ({config_prefix}.api_key_env) is not set; export your API key "
                "there (for a local server without authentication any non-empty value such as EMPTY works)")
        self._api_key = key  # kept out of repr, logs, cache keys and files; see scrub()
        self.base_url, self.model, self.prompt_version = base_url, model, prompt_version
        self.api_key_env, self.config_prefix = api_key_env, config_prefix
        self.concurrency, self.timeout_s, self.max_retries = concurrency, timeout_s, max_retries
        self.max_usd, self.usd_in, self.usd_out = max_usd, usd_per_1k_input, usd_per_1k_output
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.cache = ResponseCache(cache_dir, namespace)
        self.stats = Stats()
        self._reserved = 0.0  # worst-case cost of the requests in flight
        self._formats = tuple(response_formats) + (None,)  # None: plain text, which every endpoint takes
        self._format_index = 0
        self.stats.response_format = _format_name(self._formats[0])

    def __repr__(self) -> str:
        return f"LLMClient(host={host_of(self.base_url)!r}, model={self.model!r})"

    def key(self, content: dict) -> str:
        """sha256 of (model, prompt_version, content); ``content`` holds what identifies the request (prompt text,
        image sha256), never secrets or bulky image bytes."""
        blob = json.dumps({"model": self.model, "prompt_version": self.prompt_version, "content": content},
                          sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def scrub(self, text: str) -> str:
        """Remove the API key from ``text`` (error bodies may echo headers back)."""
        return text.replace(self._api_key, "[REDACTED]") if text else text

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return input_tokens / 1000 * self.usd_in + output_tokens / 1000 * self.usd_out

    def _worst_case(self, messages: list[dict], max_tokens: int) -> float:
        # ~3 characters per token is on the generous side for English; images are counted at 1000 tokens
        chars, images = 0, 0
        for m in messages:
            parts = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
            for p in parts:
                chars += len(p.get("text", "")) if p.get("type") == "text" else 0
                images += p.get("type") == "image_url"
        return self.cost(math.ceil(chars / 3) + 1000 * images + 8, max_tokens)

    # ------------------------------------------------------------------------------------------------------------
    def run(self, requests: list[Request], desc: str = "LLM", *, accept: Callable[[str], bool] | None = None,
            reask: str = "", max_reasks: int = 0, retry_failed: bool = False) -> list[Result]:
        """Answer ``requests`` (cache first, then the endpoint); results come back in the same order.

        ``accept`` tells a usable reply from one that is not; an unusable reply is followed up with the user message
        ``reask`` (after the original messages and that reply) up to ``max_reasks`` times. The last reply is what
        comes back and is cached, usable or not, so a re-run does not pay for it again, unless ``retry_failed``:
        then cached replies that ``accept`` refuses are asked again from the start.
        """
        if max_reasks and (accept is None or not reask):
            raise ValueError("re-asking needs both accept and reask")
        return asyncio.run(self._run_all(requests, desc, accept, reask, max_reasks, retry_failed))

    async def _run_all(self, requests: list[Request], desc: str, accept, reask: str, max_reasks: int,
                       retry_failed: bool) -> list[Result]:
        from openai import AsyncOpenAI
        from tqdm import tqdm

        results: list[Result | None] = [None] * len(requests)
        todo = []
        for i, req in enumerate(requests):
            entry = self.cache.get(req.key)
            if entry is not None and retry_failed and accept is not None and not accept(entry["text"]):
                self.stats.retried_failed += 1
                entry = None
            if entry is not None:
                self.stats.cache_hits += 1
                results[i] = Result("ok", entry["text"], cached=True, input_tokens=entry.get("input_tokens", 0),
                                    output_tokens=entry.get("output_tokens", 0))
            else:
                todo.append(i)
        if todo:
            client = AsyncOpenAI(base_url=self.base_url, api_key=self._api_key, max_retries=0, timeout=self.timeout_s)
            sem = asyncio.Semaphore(self.concurrency)
            lock = asyncio.Lock()
            bar = tqdm(total=len(todo), desc=desc, file=sys.stderr)

            async def one(i: int) -> None:
                async with sem:
                    results[i] = await self._one(client, requests[i], lock, accept, reask, max_reasks)
                bar.update(1)

            try:
                # tasks start in order and the semaphore is FIFO, so the budget stops at a clean prefix
                await asyncio.gather(*(one(i) for i in todo))
            finally:
                bar.close()
                await client.close()
        for r in results:
            if r.status != "ok":
                kind = r.reason.split(":")[0]
                self.stats.by_reason[kind] = self.stats.by_reason.get(kind, 0) + 1
        return results

    async def _one(self, client, req: Request, lock: asyncio.Lock, accept, reask: str, max_reasks: int) -> Result:
        messages, n_in, n_out = req.messages, 0, 0
        for n_reasks in range(max_reasks + 1):
            result = await self._budgeted(client, messages, req.max_tokens, lock)
            n_in, n_out = n_in + result.input_tokens, n_out + result.output_tokens
            if result.status != "ok":
                if n_reasks:  # a follow-up went wrong: keep the unusable reply it followed, cache nothing
                    result.text = result.text or messages[-2]["content"]
                return result
            if accept is None or accept(result.text) or n_reasks == max_reasks:
                break
            self.stats.reasks += 1
            # always the original conversation plus the latest reply, so a follow-up stays short
            messages = req.messages + [{"role": "assistant", "content": result.text},
                                       {"role": "user", "content": reask}]
        result.reasks, result.input_tokens, result.output_tokens = n_reasks, n_in, n_out
        self.cache.put(req.key, {"model": self.model, "prompt_version": self.prompt_version, "text": result.text,
                                 "input_tokens": n_in, "output_tokens": n_out})
        return result

    async def _budgeted(self, client, messages: list[dict], max_tokens: int, lock: asyncio.Lock) -> Result:
        """One request within the budget: its worst-case cost is reserved first, or it is skipped."""
        worst = self._worst_case(messages, max_tokens)
        async with lock:
            if self.stats.budget_stopped or self.stats.usd_spent + self._reserved + worst > self.max_usd:
                self.stats.budget_stopped = True
                return Result("skipped", reason="budget")
            self._reserved += worst
        try:
            return await self._with_retries(client, messages, max_tokens)
        finally:
            self._reserved -= worst

    async def _with_retries(self, client, messages: list[dict], max_tokens: int) -> Result:
        import openai

        reason = ""
        attempt = 0
        while True:
            retry_after = None
            response_format = self._formats[self._format_index]
            extra = {"response_format": response_format} if response_format else {}
            self.stats.requests_sent += 1
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model=self.model, messages=messages, max_tokens=max_tokens, temperature=0, **extra)
            except openai.APITimeoutError:
                reason = f"timeout: no reply within {self.timeout_s} s ({self.config_prefix}.timeout_s)"
            except openai.APIConnectionError as exc:
                reason = f"connection: cannot reach {self.base_url} ({self.scrub(str(exc))})"
            except openai.APIStatusError as exc:
                status = exc.status_code
                detail = self.scrub(f"HTTP {status}: {str(exc)[:300]}")
                if status == 429:
                    reason, retry_after = f"rate_limit: {detail}", _retry_after(exc.response.headers)
                elif status >= 500:
                    reason, retry_after = f"server_error: {detail}", _retry_after(exc.response.headers)
                elif status in (401, 403):
                    return Result("failed", reason=f"auth: {detail}; check the key in ${self.api_key_env}")
                elif status == 404:
                    return Result("failed", reason=f"not_found: {detail}; check {self.config_prefix}.base_url "
                                                   f"and .model ({self.model})")
                elif status in (400, 422) and response_format:
                    self._drop_format(response_format, detail)
                    continue  # the same request in the next format: a refusal is not a transient failure
                else:
                    return Result("failed", reason=f"bad_request: {detail}")
            else:
                try:
                    resp = raw.parse()
                except (openai.APIResponseValidationError, ValueError):  # HTTP 200 whose body is not a completion
                    return Result("failed", text=self.scrub(raw.http_response.text)[:2000],
                                  reason="malformed_response: the body is not a chat completion")
                return self._parse(resp)
            if attempt == self.max_retries:
                return Result("failed", reason=f"{reason} (after {self.max_retries + 1} attempts)")
            delay = retry_after if retry_after is not None else min(
                self.max_backoff_s, self.backoff_s * 2 ** attempt * random.uniform(1.0, 1.5))
            log.debug("attempt %d failed (%s); retrying in %.2f s", attempt + 1, reason, delay)
            await asyncio.sleep(delay)
            attempt += 1

    def _drop_format(self, refused: dict, detail: str) -> None:
        """Stop asking for ``refused`` (and any format before it) for the rest of the run."""
        index = self._formats.index(refused) + 1
        if index > self._format_index:  # requests in flight may report the same refusal more than once
            self._format_index = index
            now = self._formats[index]
            self.stats.response_format = _format_name(now)
            log.warning("%s refused response_format %s (%s); asking for %s instead", host_of(self.base_url),
                        _format_name(refused), detail[:200], _format_name(now) if now else "plain text")

    def _parse(self, resp) -> Result:
        usage = getattr(resp, "usage", None)
        n_in = int(getattr(usage, "prompt_tokens", 0) or 0)
        n_out = int(getattr(usage, "completion_tokens", 0) or 0)
        self.stats.input_tokens += n_in
        self.stats.output_tokens += n_out
        self.stats.usd_spent += self.cost(n_in, n_out)
        choices = getattr(resp, "choices", None) or []
        text = getattr(getattr(choices[0], "message", None), "content", None) if choices else None
        if not isinstance(text, str):
            raw = resp.model_dump_json() if hasattr(resp, "model_dump_json") else str(resp)
            return Result("failed", text=self.scrub(raw)[:2000], reason="malformed_response: no message content",
                          input_tokens=n_in, output_tokens=n_out)
        return Result("ok", text, input_tokens=n_in, output_tokens=n_out)

    def budget_message(self, n_skipped: int, n_total: int) -> str:
        return (f"budget {self.config_prefix}.max_usd=${self.max_usd:g} reached: spent ${self.stats.usd_spent:.4f} "
                f"in {self.stats.requests_sent} requests; {n_total - n_skipped} of {n_total} examples answered, "
                f"{n_skipped} skipped (status skipped, reason budget). To continue, raise {self.config_prefix}.max_usd "
                "and re-run: cached answers are reused, so nothing is paid twice.")

    def endpoint_problem(self, results: list[Result]) -> str | None:
        """A clear message when no request reached a working endpoint (down, wrong URL, bad key), else None."""
        attempted = [r for r in results if r.status != "skipped" and not r.cached]
        if not attempted or any(r.status == "ok" for r in results):
            return None
        kinds = {r.reason.split(":")[0] for r in attempted}
        if not kinds <= set(ENDPOINT_REASONS):
            return None
        example = attempted[0].reason
        return (f"no request to {self.base_url} succeeded ({len(attempted)} failed; e.g. {example}). Check that the "
                f"server is running and reachable, that {self.config_prefix}.base_url is right (it usually ends in "
                f"/v1), that {self.config_prefix}.model ({self.model}) exists there, and that ${self.api_key_env} "
                "holds a valid key. Nothing was written; re-run when the endpoint is up.")


def _format_name(response_format: dict | None) -> str:
    return response_format["type"] if response_format else "text"


def _retry_after(headers) -> float | None:
    """Seconds from ``Retry-After`` (or ``retry-after-ms``); None when absent or an HTTP date (then we back off)."""
    try:
        if headers.get("retry-after-ms") is not None:
            return float(headers["retry-after-ms"]) / 1000
        if headers.get("retry-after") is not None:
            return min(float(headers["retry-after"]), 600.0)
    except (TypeError, ValueError):
        pass
    return None


def image_part(image_path: str) -> dict:
    """A chat message part carrying the image as a base64 data URL, for vision-capable endpoints (no upload step)."""
    import base64
    import mimetypes

    mime = mimetypes.guess_type(image_path)[0] or "image/png"
    data = base64.b64encode(Path(image_path).read_bytes()).decode()
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}
