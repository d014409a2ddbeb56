"""The MiniGPT-4 adapter: a BLIP-2-layout model (frozen ViT + Q-Former, linear projection, Llama/Vicuna) prompted
with MiniGPT-4's ``###Human: <Img><ImageHere></Img> {instruction} ###Assistant: {answer}`` template.

The image becomes ``num_query_tokens`` image tokens where ``<ImageHere>`` stands; transformers' Blip2 model puts
the projected Q-Former queries there. A conversation's turns each render the template once, the image only in the
first; the loss covers every assistant answer, the template text after it and the end-of-sequence token.
"""

from __future__ import annotations

import re

from vlselect.vlm.base import Conversation, VLMAdapter, register

DEFAULT_TEMPLATE = "###Human: <Img><ImageHere></Img> {instruction} ###Assistant: {answer}"
IMAGE_SLOT = "<ImageHere>"
# the image slot with MiniGPT-4's <Img></Img> markers, dropped from the prompt of every turn after the first
_IMAGE_MARKUP = re.compile(r"(?:<Img>)?<ImageHere>(?:</Img>)?\s*")


def split_template(template: str, instruction: str) -> tuple[str, str]:
    """Return (prompt, suffix): the template text before ``{answer}`` with the instruction filled in, and after it.

    The image goes where ``<ImageHere>`` stands (MiniGPT-4's convention); a template without it gets the image at
    the very start, where Blip-2 puts its query tokens.
    """
    if "{answer}" not in template:
        raise ValueError(f"the template {template!r} has no '{{answer}}' slot; add one where the answer goes")
    before, after = template.split("{answer}", 1)
    prompt = before.replace("{instruction}", instruction)
    if IMAGE_SLOT not in prompt:
        prompt = IMAGE_SLOT + " " + prompt
    return prompt, after


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text.strip() else []


@register
class Blip2Adapter(VLMAdapter):
    """MiniGPT-4 in transformers' Blip2 layout (``Blip2ForConditionalGeneration`` + ``Blip2Processor``)."""

    family = "minigpt4"
    model_types = ("blip-2",)
    projection = ("language_projection",)
    language_model = ("language_model",)
    # MiniGPT-4 starts every sequence with BOS; InstructBLIP (LAVIS, transformers) puts the query tokens before it
    queries_before_bos = False

    def __init__(self, model, processor, template: str | None = None):
        super().__init__(model, processor, template or DEFAULT_TEMPLATE)
        prompt, _ = split_template(self.template, "")  # a template without an answer slot fails here, not mid-training
        if self.queries_before_bos and not prompt.startswith(IMAGE_SLOT):
            raise ValueError(f"the {self.family} template must start with {IMAGE_SLOT}: its query tokens come before "
                             f"the BOS token; got {self.template!r}")

    def _first_prompt(self, question: str) -> list[int]:
        """The first turn's prompt with BOS where the family puts it (before or after the image's query tokens)."""
        prompt = self._prompt_ids(question, with_image=True)
        bos = self.processor.tokenizer.bos_token_id
        if not self.queries_before_bos:
            return [bos] + prompt
        q = self.model.config.num_query_tokens
        return prompt[:q] + [bos] + prompt[q:]

    def _prompt_ids(self, question: str, *, with_image: bool) -> list[int]:
        tok = self.processor.tokenizer
        prompt, _ = split_template(self.template, question)
        if not with_image:
            return _ids(tok, _IMAGE_MARKUP.sub("", prompt, count=1))
        head, tail = prompt.split(IMAGE_SLOT, 1)
        token = getattr(self.processor, "image_token", None) or tok.image_token
        image_id = tok.convert_tokens_to_ids(getattr(token, "content", token))
        return _ids(tok, head) + [image_id] * self.model.config.num_query_tokens + _ids(tok, tail)

    def _encode(self, rows: list[list[int]], label_rows: list[list[int]] | None, images) -> dict:
        """Pad the rows into tensors: right-padded with labels for training, left-padded (so that every row ends
        where generation starts) without."""
        import torch

        tok = self.processor.tokenizer
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, ids in enumerate(rows):
            n = len(ids)
            sl = slice(0, n) if label_rows is not None else slice(width - n, width)
            input_ids[i, sl] = torch.tensor(ids)
            attention[i, sl] = 1
            if label_rows is not None:
                labels[i, sl] = torch.tensor(label_rows[i])
        pixel_values = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        out = {"input_ids": input_ids, "attention_mask": attention, "pixel_values": pixel_values}
        if label_rows is not None:
            out["labels"] = labels
        return out

    def train_batch(self, conversations: list[Conversation]) -> dict:
        """``[bos]`` then per turn ``prompt answer suffix [eos]`` (the image's query tokens in the first prompt),
        labels on ``answer suffix [eos]`` of every turn; right-padded."""
        tok = self.processor.tokenizer
        _, suffix = split_template(self.template, "")
        rows, label_rows = [], []
        for conv in conversations:
            ids, labels = [], []
            for k, (question, answer) in enumerate(conv.turns):
                prompt = self._first_prompt(question) if k == 0 else self._prompt_ids(question, with_image=False)
                target = _ids(tok, answer + suffix) + [tok.eos_token_id]
                ids += prompt + target
                labels += [-100] * len(prompt) + target
            rows.append(ids)
            label_rows.append(labels)
        return self._encode(rows, label_rows, [c.image for c in conversations])

    def generation_batch(self, images: list, questions: list[str]) -> dict:
        """``[bos] prompt`` per (image, question), left-padded: the inputs :meth:`generate` continues."""
        return self._encode([self._first_prompt(q) for q in questions], None, images)

    def generate(self, images: list, questions: list[str], *, max_new_tokens: int) -> list[str]:
        import torch

        batch = self.generation_batch(images, questions)
        batch = {k: v.to(self.model.device) for k, v in batch.items()}
        batch["pixel_values"] = batch["pixel_values"].to(self.model.dtype)
        with torch.no_grad():
            out = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        width = batch["input_ids"].shape[1]
        # transformers returns prompt + continuation for Blip-2 with a Llama decoder; keep the continuation only
        if out.shape[1] >= width and torch.equal(out[:, :width].cpu(), batch["input_ids"].cpu()):
            out = out[:, width:]
        return [s.strip() for s in self.processor.tokenizer.batch_decode(out, skip_special_tokens=True)]
