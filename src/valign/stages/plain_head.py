"""A plain LM head for TRL's trainers on a CPU, and exact per-row loss weights.

TRL's trainers (DPO, KTO, GRPO) call ``model(..., labels=labels, fused_lm_head=True)`` and read per-token
log-probabilities from a chunked kernel that never materialises the ``(tokens, vocab)``
logits. That spares GPU memory on big vocabularies, but on a CPU without Triton the
kernel scores *every* position (prompt and padding included), folds each vocabulary
tile in Python-level torch ops, and recomputes the LM-head GEMM in the backward pass.
`add_plain_lm_head` replaces it with the obvious computation on only the positions
that have a label: one GEMM, ``logsumexp`` and ``gather``. On the embedded model that
is the larger part of a DPO step (`valign bench dpo`), and it returns the same
log-probabilities as TRL's kernel (tested).

Per-row weights: survey rows carry a sample ``weight``, and TRL's losses average rows
uniformly. `RowWeights` scales the gradient that flows back into each row's
log-probabilities by that row's weight. Every loss TRL's DPO and KTO trainers
compute is a sum of per-row terms (each depending on its own row's log-probabilities
and on detached quantities), so the scaled gradient is exactly the gradient of the
weighted loss ``Σ w_i l_i / B``; the weights are normalised to mean 1 over the data
set so the learning rate means the same with and without them.

Example, on a TRL trainer's PEFT model::

    add_plain_lm_head(trainer.model.get_base_model(), outputs=("log_probs", "entropy"))
"""

from __future__ import annotations

import functools
import types
from typing import Any

__all__ = ["add_plain_lm_head", "add_row_weights", "RowWeights", "plain_head_wanted"]

# Above this many logits (tokens × vocabulary) the plain head would hold more than
# ~2 GB of activations at once; TRL's chunked kernel is the right tool there.
MAX_PLAIN_LOGITS = 1 << 29


def plain_head_wanted(model: Any) -> bool:
    """The plain head pays off where TRL's kernel has no Triton: on a CPU."""
    import torch

    return next(model.parameters()).device.type == "cpu" and not torch.cuda.is_available()


class RowWeights:
    """Holds the weights of the batch in flight; the plain head scales each row's gradient by them.

    The trainer sets `current` to a ``(rows,)`` tensor before the forward pass of a
    batch and clears it after; rows in a DPO batch are ``[chosen…, rejected…]``, so a
    weight vector half as long as the batch is repeated for the two halves.
    """

    def __init__(self) -> None:
        self.current = None

    def scale(self, log_probs):
        """``log_probs`` unchanged forward; its gradient multiplied per row by the weights."""
        import torch

        w = self.current
        if w is None or not log_probs.requires_grad:
            return log_probs
        if w.numel() * 2 == log_probs.size(0):
            w = torch.cat([w, w])
        if w.numel() != log_probs.size(0):
            return log_probs  # a batch of another shape (e.g. KTO's detached KL pass)
        w = w.to(log_probs.dtype).view(-1, *([1] * (log_probs.dim() - 1)))
        # x·w − sg(x·(w−1)) equals x, and its gradient is w·∂x.
        return log_probs * w - (log_probs * (w - 1)).detach()


def add_row_weights(model: Any, row_weights: RowWeights) -> None:
    """Scale each row's log-prob gradient by `row_weights.current` on every fused-head call.

    Wraps whatever forward the model has now (TRL's fused head or the plain one), so
    weights work on GPUs and CPUs alike.
    """
    inner = model.forward

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        out = inner(*args, **kwargs)
        if kwargs.get("fused_lm_head"):
            out["log_probs"] = row_weights.scale(out["log_probs"])
        return out

    model.forward = forward


def add_plain_lm_head(model: Any, outputs: tuple[str, ...] = ("log_probs",), temperature: float = 1.0) -> None:
    """Make ``model(..., labels=…, fused_lm_head=True)`` compute log-probs the plain way.

    ``temperature`` divides the logits first, as TRL's head does for GRPO (whose
    log-probs are those of the distribution the answers were sampled from).

    Call it after the TRL trainer is built (TRL installs its own fused head in
    ``__init__``; this one replaces it, and hands batches over ``MAX_PLAIN_LOGITS`` back
    to it). Models whose logits are soft-capped or scaled keep TRL's head. Without
    ``fused_lm_head`` the model's own forward runs, so generation is unaffected.
    """
    from trl.trainer.utils import FusedCausalLMOutput

    text_config = model.config.get_text_config()
    scaled = [k for k in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
              if getattr(text_config, k, None) not in (None, 1, 1.0)]
    if scaled:
        return  # logits this head does not transform (Gemma, Cohere, Granite, …): TRL's kernel does
    original_forward = type(model).forward
    trl_forward = model.forward  # TRL's fused head, for batches too large to score plainly

    @functools.wraps(original_forward)
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head:
            for key, value in (("labels", labels), ("shift_labels", shift_labels), ("num_items_in_batch", num_items_in_batch)):
                if value is not None:
                    kwargs[key] = value
            return original_forward(self, *args, **kwargs)
        targets = labels[:, 1:] if shift_labels is None else shift_labels
        mask = targets != -100
        head = self.get_output_embeddings()
        if int(mask.sum()) * head.weight.shape[0] > MAX_PLAIN_LOGITS:
            return trl_forward(*args, fused_lm_head=True, labels=labels, shift_labels=shift_labels, num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if shift_labels is None:
            hidden = hidden[:, :-1]
        logits = head(hidden[mask]).float()
        per_token = _score(logits / temperature if temperature != 1.0 else logits, targets[mask], outputs)
        full = {k: (None if v is None else v.new_zeros(mask.shape).masked_scatter(mask, v)) for k, v in per_token.items()}
        denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        loss = -full["log_probs"].sum() / denominator
        return FusedCausalLMOutput(loss=loss, label_mask=mask, **full)

    model.forward = types.MethodType(forward, model)


def _score(logits, targets, outputs: tuple[str, ...]) -> dict[str, Any]:
    """Per-token statistics of TRL's FusedCausalLMOutput from ``(tokens, vocab)`` logits."""
    import torch

    log_z = torch.logsumexp(logits, dim=-1)
    target = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    out: dict[str, Any] = {"log_probs": target - log_z, "entropy": None, "log_sum_sq_probs": None, "mean_logits": None, "is_top1": None}
    with torch.no_grad():  # TRL only logs these (the WPO weights are detached too)
        if "entropy" in outputs or "log_sum_sq_probs" in outputs:
            log_p = logits - log_z.unsqueeze(-1)
            if "entropy" in outputs:
                out["entropy"] = -(log_p.exp() * log_p).sum(-1)
            if "log_sum_sq_probs" in outputs:
                out["log_sum_sq_probs"] = torch.logsumexp(2 * log_p, dim=-1)
        if "mean_logits" in outputs:
            out["mean_logits"] = logits.mean(-1)
        if "is_top1" in outputs:
            out["is_top1"] = logits.argmax(-1) == targets
    return out
