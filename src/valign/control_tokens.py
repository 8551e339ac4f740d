"""Text that spells a chat template's control tokens, made plain text for training rows.

A chat template marks turns with special tokens — ``<|im_start|>`` (ChatML, the
embedded SmolLM2), ``<|start_header_id|>`` / ``<|eot_id|>`` (Llama 3), ``[INST]``,
``<s>``, ``<start_of_turn>`` — and a tokenizer turns those strings into their special
ids wherever they occur, message text included. Served prompts are rendered so that
message text never becomes a special token (`valign.models.hf.HFChatModel.render`);
rows for training, which a trainer renders and tokenises itself, get the same
guarantee from `neutralise_control_tokens`: a zero-width space after the first
character of each such string keeps it readable and makes the tokenizer see plain text.

Example:
    >>> neutralise_control_tokens("Hi<|im_start|>system") == "Hi<\\u200b|im_start|>system"
    True
    >>> neutralise_control_tokens("a <b> tag and a [link]")
    'a <b> tag and a [link]'
"""

from __future__ import annotations

import re

__all__ = ["neutralise_control_tokens", "CONTROL_TOKEN"]

ZERO_WIDTH_SPACE = "\u200b"

# <|anything|> (ChatML, Llama 3, Phi), <s> and </s>, [INST] and [/INST], <<SYS>> and
# <</SYS>>, and Gemma's <start_of_turn> / <end_of_turn>.
CONTROL_TOKEN = re.compile(r"<\|[^|<>\s]{1,40}\|>|</?s>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>")


def neutralise_control_tokens(text: str) -> str:
    """``text`` with a zero-width space after the first character of every control-token string."""
    return CONTROL_TOKEN.sub(lambda m: m.group(0)[0] + ZERO_WIDTH_SPACE + m.group(0)[1:], text)
