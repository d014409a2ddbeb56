"""Adapters for VLM families whose processor carries a chat template: LLaVA-1.5, LLaVA-NeXT, Qwen2-VL,
Qwen2.5-VL, and any other ``AutoModelForImageTextToText`` (the ``generic`` family).

A conversation is rendered with ``processor.apply_chat_template`` and encoded by the processor itself on text and
image together, so each family's image-token expansion (a fixed count for LLaVA-1.5, one that depends on the image's
shape for LLaVA-NeXT and Qwen) is the processor's, never ours. The assistant's answers are found generically: the
text rendered up to each answer's generation prompt, and up to the token that closes the answer, are prefixes of the
whole conversation, and their token counts mark where each answer starts and ends. That needs no knowledge of the
family's template beyond one probe (:meth:`ChatAdapter._closing`) that finds which token closes an answer.
"""

from __future__ import annotations

from typing import ClassVar

from vlselect.vlm.base import Conversation, VLMAdapter, register

# Parameter-name substrings of the vision-to-language projections transformers uses, for the generic family:
# LLaVA-style, Gemma 3, Mistral 3, PaliGemma, InternVL, ... (multi_modal_projector); Qwen2/2.5/3-VL (visual.merger);
# BLIP-2 and InstructBLIP (language_projection); Idefics 2/3 and SmolVLM (connector)
KNOWN_PROJECTIONS = ("multi_modal_projector", "visual.merger", "language_projection", "connector")


@register
class ChatAdapter(VLMAdapter):
    """Any image-text-to-text model whose processor has a chat template (the ``generic`` family).

    Its projection is whichever of :data:`KNOWN_PROJECTIONS` the model's parameter names hold; with none of them,
    ``trainable: projection`` finds nothing to train and fails, and ``lora``, ``full`` or a list of parameter-name
    substrings remain. ``template``, when given, is a Jinja chat template used instead of the processor's.
    """

    family: ClassVar[str] = "generic"
    model_types: ClassVar[tuple[str, ...]] = ()
    projection: ClassVar[tuple[str, ...]] = KNOWN_PROJECTIONS
    # transformers keeps the LM head beside the language model (``lm_head``) in these families
    language_model: ClassVar[tuple[str, ...]] = ("language_model", "lm_head")

    def __init__(self, model, processor, template: str | None = None):
        super().__init__(model, processor, template)
        if template and "{%" not in template and "{{" not in template:
            raise ValueError(f"the {self.family} family takes a Jinja chat template, not {template!r} (a MiniGPT-4 "
                             "style template); leave the template unset to use the processor's chat template")
        if not (template or getattr(processor, "chat_template", None)):
            raise ValueError(f"the processor of this {type(model).__name__} has no chat template; pass one as "
                             "the template, or pick the VLM family that formats its prompts itself")
        tok = processor.tokenizer
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        # a template may begin with the BOS token itself; the tokenizer must not add a second one
        probe = self._render(self._messages([("q", "a")]))
        self._add_special_tokens = not (tok.bos_token and probe.startswith(tok.bos_token))
        self.closing, self._append_closing = self._closing()

    # ---------------------------------------------------------------------------------------------------------
    # rendering

    def _messages(self, turns: list[tuple[str, str | None]]) -> list[dict]:
        """Chat messages for ``turns`` (an answer of None ends with that user turn); the image goes with the first
        user turn."""
        messages = []
        for i, (user, answer) in enumerate(turns):
            content = ([{"type": "image"}] if i == 0 else []) + [{"type": "text", "text": user}]
            messages.append({"role": "user", "content": content})
            if answer is not None:
                messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return messages

    def _render(self, messages: list[dict], *, generation_prompt: bool = False) -> str:
        return self.processor.apply_chat_template(messages, chat_template=self.template,
                                                  add_generation_prompt=generation_prompt)

    def _closing(self) -> tuple[str, bool]:
        """(the token that closes an answer, whether this adapter appends it to answers itself).

        Most templates close an assistant turn with a special token (Qwen's ``<|im_end|>``, Mistral's ``</s>``);
        llava-hf's LLaVA-1.5 template closes it with a space only, and LLaVA itself was trained with ``</s>`` after
        each answer, so there the EOS token is appended: the model learns to stop, and generation stops there.
        """
        tok = self.processor.tokenizer
        answer = "Probe answer."
        prompt = self._render(self._messages([("Probe question?", None)]), generation_prompt=True)
        full = self._render(self._messages([("Probe question?", answer)]))
        start = full.find(answer, len(prompt))
        if not full.startswith(prompt) or start < 0:
            raise ValueError("the chat template renders a conversation's beginning differently from its generation "
                             f"prompt, so answers cannot be located: {prompt!r} vs {full!r}")
        after = full[start + len(answer):].lstrip()
        specials = set(tok.all_special_tokens) | {t.content for t in tok.added_tokens_decoder.values() if t.special}
        for token in sorted(specials, key=len, reverse=True):  # the longest of tokens that share a beginning
            if after.startswith(token):
                return token, False
        return tok.eos_token, True

    # ---------------------------------------------------------------------------------------------------------
    # training

    def _count(self, text: str) -> list[int]:
        return self.processor.tokenizer(text, add_special_tokens=self._add_special_tokens)["input_ids"]

    def _answer_spans(self, conversation: Conversation) -> tuple[str, int, list[tuple[int, int]]]:
        """(the rendered conversation, its length in tokens, the token spans [start, end) of each answer and its
        closing token), counted without the image's expansion (which precedes every answer and shifts them all
        alike)."""
        # stripped, as many templates do themselves: the answer must be found verbatim in the rendered text
        answers = [answer.strip() for _, answer in conversation.turns]
        suffix = self.closing if self._append_closing else ""
        turns = [(user, answer + suffix) for (user, _), answer in zip(conversation.turns, answers)]
        full = self._render(self._messages(turns))
        full_ids = self._count(full)
        spans = []
        for k, ((user, _), answer) in enumerate(zip(turns, answers)):
            prompt = self._render(self._messages(turns[:k] + [(user, None)]), generation_prompt=True)
            start_char = full.find(answer, len(prompt))
            close_char = full.find(self.closing, start_char + len(answer))
            if not full.startswith(prompt) or start_char < 0 or close_char < 0:
                raise ValueError(f"answer {k} of a conversation is not where the chat template's generation prompt "
                                 f"ends: {prompt!r} is not followed by it in {full!r}")
            bounds = []
            for prefix in (prompt, full[:close_char + len(self.closing)]):
                ids = self._count(prefix)
                # the prefix must tokenize as the conversation's beginning, else its length is not a position
                if full_ids[:len(ids)] != ids:
                    raise ValueError(f"the tokenizer splits {prefix[-20:]!r} differently inside the conversation; "
                                     "the answer's tokens cannot be located by prefix length")
                bounds.append(len(ids))
            spans.append((bounds[0], bounds[1]))
        return full, len(full_ids), spans

    def train_batch(self, conversations: list[Conversation]) -> dict:
        import torch

        rendered = [self._answer_spans(c) for c in conversations]
        batch = self.processor(text=[text for text, _, _ in rendered], images=[[c.image] for c in conversations],
                               padding=True, padding_side="right", add_special_tokens=self._add_special_tokens,
                               return_tensors="pt")
        labels = torch.full_like(batch["input_ids"], -100)
        for i, (_, n_tokens, spans) in enumerate(rendered):
            # every answer comes after the image, so the processor's expansion shifts each one by the same amount
            shift = int(batch["attention_mask"][i].sum()) - n_tokens
            for start, end in spans:
                labels[i, start + shift:end + shift] = batch["input_ids"][i, start + shift:end + shift]
        batch["labels"] = labels
        return dict(batch)

    # ---------------------------------------------------------------------------------------------------------
    # generation

    def generate(self, images: list, questions: list[str], *, max_new_tokens: int) -> list[str]:
        import torch

        tok = self.processor.tokenizer
        prompts = [self._render(self._messages([(q, None)]), generation_prompt=True) for q in questions]
        batch = self.processor(text=prompts, images=[[im] for im in images], padding=True, padding_side="left",
                               add_special_tokens=self._add_special_tokens, return_tensors="pt")
        batch = batch.to(self.model.device, dtype=self.model.dtype)
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        stop = list(dict.fromkeys(eos + [tok.convert_tokens_to_ids(self.closing), tok.eos_token_id]))
        with torch.no_grad():
            out = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                      eos_token_id=stop, pad_token_id=tok.pad_token_id)
        new = out[:, batch["input_ids"].shape[1]:]
        return [text.strip() for text in tok.batch_decode(new, skip_special_tokens=True)]


@register
class LlavaAdapter(ChatAdapter):
    """LLaVA-1.5: CLIP ViT, a two-layer MLP projection, Vicuna; a fixed number of image tokens per image."""

    family = "llava"
    model_types = ("llava",)
    projection = ("multi_modal_projector",)


@register
class LlavaNextAdapter(ChatAdapter):
    """LLaVA-NeXT (1.6): LLaVA-1.5's layout with "anyres" tiling, so the image-token count follows the image's
    shape (``pixel_values`` hold the tiles, ``image_sizes`` the original sizes)."""

    family = "llava_next"
    model_types = ("llava_next",)
    projection = ("multi_modal_projector",)


@register
class Qwen2VLAdapter(ChatAdapter):
    """Qwen2-VL: a native-resolution ViT whose patch merger (``visual.merger``, an MLP over 2x2 patches) is the
    projection into the language model; ``pixel_values`` are flattened patches with ``image_grid_thw``."""

    family = "qwen2_vl"
    model_types = ("qwen2_vl",)
    projection = ("visual.merger",)


@register
class Qwen25VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL: Qwen2-VL's interface with a window-attention ViT."""

    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
