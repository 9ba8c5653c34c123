"""Token-level cross-entropy fused with the output projection: the LM head's loss when it is given
targets (`LanguageModel.forward`), an implementation detail of that head.

A language model's last matmul produces (tokens x vocabulary) logits, the largest tensor of the
whole step; the usual log_softmax + nll then reads and writes it four more times. Here the
projection and the loss are computed together over chunks of rows, and the gradients for the
hidden states and the head weight are formed during the forward pass while each chunk of
logits is still in cache. Full logits never exist, so peak memory drops by N*V floats and the
step gets faster; the matmul work is unchanged (one product forward, two backward).

Every loss here is a SUM over scored positions, never a mean: the training loop divides by the
number of target tokens across all micro-batches, which is what makes gradient accumulation equal
to one large batch.
"""

from __future__ import annotations

import torch

from graft.data.records import IGNORE_INDEX

_CHUNK_ROWS = 512  # rows of logits alive at once (512 x 50k fp32 = 100 MB); fastest measured on CPU


class _LinearCrossEntropySum(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,  # (N, C)
        weight: torch.Tensor,  # (V, C)
        targets: torch.Tensor,  # (N,), IGNORE_INDEX where not scored
        needs_grad: bool,
    ) -> torch.Tensor:
        # At least fp32 for the softmax and the sums (bf16 logits under autocast lose too much).
        acc = torch.promote_types(hidden.dtype, torch.float32)
        # The products' dtype: autocast's where it is on (in-place addmm_ would escape it and run
        # the weight gradient's V x C x N product in fp32, many times slower on a GPU), else acc.
        device = hidden.device.type
        low = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        grad_hidden = torch.zeros_like(hidden) if needs_grad else None
        grad_weight = torch.zeros_like(weight, dtype=acc) if needs_grad else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        for start in range(0, hidden.shape[0], _CHUNK_ROWS):
            h = hidden[start : start + _CHUNK_ROWS]
            t = targets[start : start + _CHUNK_ROWS]
            scored = t != IGNORE_INDEX
            if not scored.any():
                continue
            logits = (h @ weight.T).to(acc)  # (n, V)
            # In place: one vectorised pass, and the only (n, V) buffer of the chunk.
            log_probs = torch.log_softmax(logits, dim=-1, out=logits)
            safe_t = t.clamp_min(0).unsqueeze(1)
            total -= (log_probs.gather(1, safe_t).squeeze(1) * scored).sum()
            if grad_hidden is not None and grad_weight is not None:  # i.e. needs_grad
                # d(loss)/d(logits) = softmax - one_hot(target), on scored rows only.
                grad_logits = log_probs.exp_()
                grad_logits.scatter_add_(
                    1, safe_t, torch.full_like(safe_t, -1, dtype=grad_logits.dtype)
                )
                if not bool(scored.all()):
                    grad_logits.mul_(scored.unsqueeze(1))
                grad_logits = grad_logits.to(h.dtype)
                grad_hidden[start : start + _CHUNK_ROWS] = grad_logits @ weight
                if low is None:
                    grad_weight.addmm_(grad_logits.T.to(acc), h.to(acc))
                else:  # each chunk's product in `low`, as autograd's, summed in acc
                    grad_weight += grad_logits.T.to(low) @ h.to(low)
        if grad_hidden is not None and grad_weight is not None:  # i.e. needs_grad
            ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        # torch's FunctionCtx stub omits saved_tensors, which autograd's ctx object does have.
        grad_hidden, grad_weight = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad_hidden * grad_output, grad_weight * grad_output, None, None


def linear_cross_entropy_sum(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Sum over scored positions of -log softmax(hidden @ weight.T)[target].

    hidden (..., C), weight (V, C), targets (...) with IGNORE_INDEX at unscored positions.
    Equal (to float rounding) to F.cross_entropy(hidden @ weight.T, targets, reduction="sum").
    """
    # Decided here: inside Function.forward grad mode is always off. Under no_grad (evaluation)
    # the gradient work is skipped entirely.
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _LinearCrossEntropySum.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1), needs_grad
    )
