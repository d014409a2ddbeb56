"""Pairwise judge with the LLaVA-Bench protocol: compare two models' answers question by question, in both orders.

An LLM judge favours whichever answer it reads first or second, so each question is judged twice, once with model
A's answer first and once with B's first, and the two verdicts (from A's side) are combined by
:func:`combine_verdicts`. Backends:

* ``openai``: an OpenAI-compatible LLM rates both answers 1-10 (LLaVA-Bench's prompt), through :mod:`vlselect.llm`
  (cached, budgeted, retried). With ``rules`` (LLaVA-Bench's ``rule.json``) the request is laid out as LLaVA-Bench's
  review: the image's context (captions), the question, the two answers and the rule of the question's category;
  with ``images`` the image itself goes along as a data URL, for a vision-capable endpoint;
* ``oracle`` (toy world only): each answer's attribute F1 against the image's true objects
  (``vlselect.toy.world.attribute_f1``), read from the suite file; order does not matter to it, but both orders are
  still recorded so the output has the same shape;
* ``none``: no judging; the file records that it was skipped.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from vlselect.io import read_json, write_json

log = logging.getLogger(__name__)

PROMPT_VERSION = "judge-llava-bench-v1"
SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
TEMPLATE = (
    "[Question]\n{question}\n\n[Reference answer]\n{reference}\n\n"
    "[Assistant 1]\n{first}\n\n[End of Assistant 1]\n\n[Assistant 2]\n{second}\n\n[End of Assistant 2]\n\n"
    "[System]\nWe would like to request your feedback on the performance of two AI assistants in response to the "
    "user question displayed above. The reference answer is given for context.\n"
    "Please rate the helpfulness, relevance, accuracy and level of detail of their responses. Each assistant receives "
    "an overall score on a scale of 1 to 10, where a higher score indicates better overall performance.\n"
    "Please first output a single line containing only two values indicating the scores for Assistant 1 and 2, "
    "respectively. The two scores are separated by a space. In the subsequent line, please provide a comprehensive "
    "explanation of your evaluation, avoiding any potential bias and ensuring that the order in which the responses "
    "were presented does not affect your judgment."
)
# LLaVA-Bench's review layout around its rule prompts (rule.json gives the role name and the prompt per category)
RULE_TEMPLATE = ("[Context]\n{context}\n\n[Question]\n{question}\n\n"
                 "[{role} 1]\n{first}\n\n[End of {role} 1]\n\n[{role} 2]\n{second}\n\n[End of {role} 2]\n\n"
                 "[System]\n{prompt}\n\n")
_TWO_SCORES = re.compile(r"(\d+(?:\.\d+)?)[ ,]+(\d+(?:\.\d+)?)")
VERDICTS = ("win", "tie", "loss")


def combine_verdicts(first: str, second: str) -> str:
    """Combine model A's verdicts from the two orders: two wins or a win and a tie -> win; two ties or a win and a
    loss (the judge contradicts itself) -> tie; anything else (a loss and a tie, two losses) -> loss."""
    for v in (first, second):
        if v not in VERDICTS:
            raise ValueError(f"a verdict must be one of {VERDICTS}, got {v!r}")
    pair = sorted((first, second))
    if pair in (["win", "win"], ["tie", "win"]):
        return "win"
    if pair in (["tie", "tie"], ["loss", "win"]):
        return "tie"
    return "loss"


def parse_pair(text: str | None) -> tuple[float, float] | None:
    """The two scores on the reply's first line ("8 6"); None when it is not exactly two numbers."""
    if not text or not text.strip():
        return None
    match = _TWO_SCORES.fullmatch(text.strip().splitlines()[0].strip())
    return (float(match.group(1)), float(match.group(2))) if match else None


def _verdict(a: float, b: float, eps: float = 0.0) -> str:
    return "win" if a > b + eps else "loss" if b > a + eps else "tie"


def _load_items(eval_a: str, eval_b: str, suite: str, n_questions: int) -> tuple[list[dict], list[dict], str]:
    ea, eb = read_json(eval_a), read_json(eval_b)
    for path, ev in ((eval_a, ea), (eval_b, eb)):
        if suite not in ev.get("suites", {}):
            raise ValueError(f"{path} has no suite {suite!r} (it has {sorted(ev.get('suites', {}))}); "
                             "set judge.suite to one that both evaluations contain")
    items_a = ea["suites"][suite]["items"][:n_questions]
    by_id_b = {it["id"]: it for it in eb["suites"][suite]["items"]}
    missing = [it["id"] for it in items_a if it["id"] not in by_id_b]
    if missing:
        raise ValueError(f"{eval_b} lacks {len(missing)} of the judged items of {eval_a} (e.g. {missing[0]}); "
                         "both must be evaluations of the same suite split")
    return items_a, [by_id_b[it["id"]] for it in items_a], ea.get("split", "test")


def judge(*, eval_a: str, eval_b: str, out: str, backend: str = "oracle", suite: str = "toy-caption",
          suite_root: str | None = None, n_questions: int = 40, cache_dir: str | None = None,
          base_url: str | None = None, model: str = "gpt-4o-mini", api_key_env: str = "OPENAI_API_KEY",
          max_usd: float = 5.0, concurrency: int = 8, timeout_s: float = 60, max_retries: int = 5,
          usd_per_1k_input: float = 0.00015, usd_per_1k_output: float = 0.0006, backoff_s: float = 1.0,
          name_a: str | None = None, name_b: str | None = None, images: bool = False,
          rules: str | None = None) -> dict:
    """Judge model A (``eval_a``) against model B (``eval_b``) on the first ``n_questions`` items of ``suite``, both
    answer orders; writes ``out`` with counts {win, tie, loss} from A's side and per-question verdicts.

    Model names default to the eval files' stems. Questions whose judgement failed or was skipped (budget) are listed
    with verdict null and counted as "unjudged", never guessed. ``relative_score`` is LLaVA-Bench's: 100 x A's total
    score / B's total score over the questions judged in both orders (each answer's score averaged over the orders).
    ``images`` and ``rules`` apply to the openai backend (module docstring). Returns the written dict.
    """
    if backend not in ("oracle", "openai", "none"):
        raise ValueError(f"judge.backend must be oracle, openai or none, got {backend!r}")
    name_a, name_b = name_a or Path(eval_a).stem, name_b or Path(eval_b).stem
    report = {"a": name_a, "b": name_b, "backend": backend, "suite": suite}
    if backend == "none":
        log.warning("judge skipped (judge.backend: none)")
        write_json(report | {"counts": dict.fromkeys(VERDICTS, 0), "unjudged": 0, "questions": [],
                             "skipped": "judge.backend is none"}, out)
        return report
    items_a, items_b, split = _load_items(eval_a, eval_b, suite, n_questions)
    if backend == "oracle":
        firsts, seconds, extra = _oracle(items_a, items_b, suite, suite_root, split)
    else:
        firsts, seconds, extra = _openai(items_a, items_b, cache_dir=cache_dir, base_url=base_url, model=model,
                                         api_key_env=api_key_env, max_usd=max_usd, concurrency=concurrency,
                                         timeout_s=timeout_s, max_retries=max_retries,
                                         usd_per_1k_input=usd_per_1k_input, usd_per_1k_output=usd_per_1k_output,
                                         backoff_s=backoff_s, images=images, rules=rules)
    counts = dict.fromkeys(VERDICTS, 0)
    questions = []
    for it_a, it_b, first, second, info in zip(items_a, items_b, firsts, seconds, extra.pop("per_question")):
        verdict = combine_verdicts(first, second) if first and second else None
        if verdict:
            counts[verdict] += 1
        questions.append({"id": it_a["id"], "question": it_a["question"], "answer_a": it_a["prediction"],
                          "answer_b": it_b["prediction"], "verdict_a_first": first, "verdict_b_first": second,
                          "verdict": verdict} | info)
    unjudged = sum(q["verdict"] is None for q in questions)
    scored = [q for q in questions if q.get("score_a") is not None]
    total_b = sum(q["score_b"] for q in scored)
    relative = round(100 * sum(q["score_a"] for q in scored) / total_b, 1) if scored and total_b else None
    report |= {"split": split, "n_questions": len(questions), "counts": counts, "unjudged": unjudged,
               "relative_score": relative, "questions": questions} | extra
    write_json(report, out)
    log.info("judge %s vs %s (%s, %s): %s, %d unjudged", name_a, name_b, backend, suite, counts, unjudged)
    return report


def _oracle(items_a, items_b, suite, suite_root, split):
    from vlselect.toy.world import attribute_f1

    if suite_root is None:
        raise ValueError("the oracle judge reads the items' true objects from the suite files; give suite_root")
    from vlselect.suites import load_toy_suite

    objects = {it.id: it.objects for it in load_toy_suite(suite, suite_root, split)}
    firsts, per_question = [], []
    for it_a, it_b in zip(items_a, items_b):
        if objects.get(it_a["id"]) is None:
            raise ValueError(f"suite {suite} ({split}) has no objects for item {it_a['id']}; "
                             "the oracle judge works on toy suites only (use judge.backend: openai)")
        fa = float(attribute_f1(it_a["prediction"], objects[it_a["id"]]))
        fb = float(attribute_f1(it_b["prediction"], objects[it_a["id"]]))
        firsts.append(_verdict(fa, fb, eps=1e-9))
        per_question.append({"f1_a": fa, "f1_b": fb, "score_a": fa, "score_b": fb})
    # the oracle does not see an order, so the second-order verdict is the same measurement
    return firsts, list(firsts), {"per_question": per_question}


def _judge_messages(it_a: dict, first: str, second: str, rules: dict | None, images: bool) -> list[dict]:
    """The judge's chat messages for one order: LLaVA-Bench's review layout with its category's rule when ``rules``
    is given, else the built-in prompt; with ``images`` the item's image as a second part of the user message."""
    meta = it_a.get("meta") or {}
    if rules is not None:
        category = f"llava_bench_{meta.get('category')}"
        rule = rules.get(category) or rules.get("default")
        if rule is None:
            raise ValueError(f"judge.rules has no rule {category!r} nor 'default' (it has {sorted(rules)})")
        text = RULE_TEMPLATE.format(context=meta.get("context", ""), question=it_a["question"], role=rule["role"],
                                    first=first, second=second, prompt=rule["prompt"])
    else:
        text = TEMPLATE.format(question=it_a["question"], reference=it_a.get("reference", ""), first=first,
                               second=second)
    if not images:
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    from vlselect.llm import image_part

    if not it_a.get("image"):
        raise ValueError(f"judge.images is set but the eval item {it_a['id']} records no image; re-run the "
                         "evaluation (it writes each item's image path)")
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": [{"type": "text", "text": text}, image_part(it_a["image"])]}]


def _openai(items_a, items_b, *, cache_dir, base_url, model, images=False, rules=None, **client_kwargs):
    from vlselect.llm import LLMClient, Request, host_of

    if not base_url:
        raise ValueError("judge.backend is openai but judge.base_url is not set; set it to an OpenAI-compatible "
                         "endpoint, or use judge.backend: oracle (toy) or none")
    if not cache_dir:
        raise ValueError("the openai judge needs a cache_dir (config cache_dir) so a re-run never pays twice")
    client = LLMClient(base_url=base_url, model=model, cache_dir=cache_dir, namespace="judge",
                       prompt_version=PROMPT_VERSION, config_prefix="judge", **client_kwargs)
    rule_dict = json.loads(Path(rules).read_text()) if rules else None
    requests = []
    for it_a, it_b in zip(items_a, items_b):
        for first, second in ((it_a["prediction"], it_b["prediction"]), (it_b["prediction"], it_a["prediction"])):
            messages = _judge_messages(it_a, first, second, rule_dict, images)
            requests.append(Request(key=client.key({"messages": messages}), messages=messages, max_tokens=256))
    results = client.run(requests, desc="judge")
    problem = client.endpoint_problem(results)
    if problem:
        raise RuntimeError(f"judge: {problem}")
    firsts, seconds, per_question = [], [], []
    for k in range(len(items_a)):
        r1, r2 = results[2 * k], results[2 * k + 1]
        s1 = parse_pair(r1.text) if r1.status == "ok" else None
        s2 = parse_pair(r2.text) if r2.status == "ok" else None
        firsts.append(_verdict(s1[0], s1[1]) if s1 else None)  # A was assistant 1
        seconds.append(_verdict(s2[1], s2[0]) if s2 else None)  # A was assistant 2
        both = s1 is not None and s2 is not None
        per_question.append({"scores_a_first": list(s1) if s1 else None, "scores_b_first": list(s2) if s2 else None,
                             "score_a": (s1[0] + s2[1]) / 2 if both else None,
                             "score_b": (s1[1] + s2[0]) / 2 if both else None,
                             "problems": [f"{r.status}: {r.reason or 'unparseable reply'}"
                                          for r, s in ((r1, s1), (r2, s2)) if s is None],
                             "raw": [r1.text, r2.text]})
    stats = client.stats
    if stats.budget_stopped:
        log.warning("judge: %s", client.budget_message(sum(r.status == "skipped" for r in results), len(results)))
    return firsts, seconds, {"per_question": per_question, "model": model, "prompt_version": PROMPT_VERSION,
                             "base_url_host": host_of(base_url), "usd_spent": round(stats.usd_spent, 6),
                             "requests_sent": stats.requests_sent, "cache_hits": stats.cache_hits}


def merge_judgements(*, inputs: list[str], out: str) -> None:
    """Collect the per-pair judge files into final/judge.json: {"comparisons": [...]} in the given order."""
    if not inputs:
        raise ValueError("no judge files to merge; the final comparison has no pairs (see final.methods)")
    write_json({"comparisons": [read_json(p) for p in inputs]}, out)
