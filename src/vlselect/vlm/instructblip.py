"""The InstructBLIP adapter: BLIP-2's layout (ViT, Q-Former, linear projection, Vicuna) whose Q-Former also reads
the instruction, so the visual tokens it hands the language model depend on the question.

The language model's input is MiniGPT-4-style plain text, as in LAVIS's InstructBLIP (Vicuna): the image's query
tokens, the instruction, the answer and the end-of-sequence token, with no conversation markup. The Q-Former's text
goes through its own (BERT) tokenizer, ``processor.qformer_tokenizer``, as ``InstructBlipProcessor`` does: it gets
the question that comes with the image (a conversation's first user turn).

As in ``InstructBlipProcessor`` and LAVIS, the query tokens come before the BOS token (``queries_before_bos``).
"""

from __future__ import annotations

from vlselect.vlm.base import Conversation, register
from vlselect.vlm.blip2 import Blip2Adapter

DEFAULT_TEMPLATE = "<ImageHere>{instruction} {answer}"


@register
class InstructBlipAdapter(Blip2Adapter):
    """InstructBLIP in transformers' layout (``InstructBlipForConditionalGeneration`` + ``InstructBlipProcessor``)."""

    family = "instructblip"
    model_types = ("instructblip",)
    queries_before_bos = True

    def __init__(self, model, processor, template: str | None = None):
        super().__init__(model, processor, template or DEFAULT_TEMPLATE)

    def _qformer_inputs(self, questions: list[str]) -> dict:
        enc = self.processor.qformer_tokenizer(
            questions, padding=True, truncation=True, return_tensors="pt",
            max_length=self.model.config.qformer_config.max_position_embeddings)
        return {"qformer_input_ids": enc["input_ids"], "qformer_attention_mask": enc["attention_mask"]}

    def train_batch(self, conversations: list[Conversation]) -> dict:
        return super().train_batch(conversations) | self._qformer_inputs([c.turns[0][0] for c in conversations])

    def generation_batch(self, images: list, questions: list[str]) -> dict:
        return super().generation_batch(images, questions) | self._qformer_inputs(questions)
