"""Metrics of the papers: EMA-smoothed curves, speedup over tuned Adam, final-loss ratios."""

import numpy as np

__all__ = ["ema", "steps_to_reach", "speedup_over", "summarize_runs"]


def ema(curve: np.ndarray, decay: float) -> np.ndarray:
    """Bias-corrected exponential moving average along the last axis (``decay=0`` is identity)."""
    curve = np.asarray(curve, np.float64)
    out = np.empty_like(curve)
    acc = np.zeros(curve.shape[:-1])
    for t in range(curve.shape[-1]):
        acc = decay * acc + (1 - decay) * curve[..., t]
        out[..., t] = acc / (1 - decay ** (t + 1)) if decay > 0 else curve[..., t]
    return out


def steps_to_reach(curve: np.ndarray, target: float) -> int | None:
    """First 1-based step at which ``curve <= target``; ``None`` if never."""
    hits = np.nonzero(np.asarray(curve) <= target)[0]
    return int(hits[0]) + 1 if hits.size else None


def speedup_over(reference: np.ndarray, candidate: np.ndarray, *, decay: float) -> dict:
    """Speedup of ``candidate`` over ``reference`` (both per-step training-loss curves, seed-averaged).

    Speedup = (steps the reference needs to reach the candidate's final smoothed training loss) /
    (the candidate's number of steps). Curves are EMA-smoothed first (Celo/VeLO protocol, decay 0.95).
    If the reference never gets there, the speedup is only known to exceed ``len(reference) /
    len(candidate)``: that value is returned with ``lower_bound=True``.
    """
    ref_s, cand_s = ema(reference, decay), ema(candidate, decay)
    target = float(cand_s[-1])
    steps = steps_to_reach(ref_s, target)
    n = len(candidate)
    if steps is None:
        return {"speedup": len(reference) / n, "lower_bound": True, "reference_steps": None, "target_loss": target}
    return {"speedup": steps / n, "lower_bound": False, "reference_steps": steps, "target_loss": target}


def summarize_runs(values: np.ndarray) -> dict:
    """Mean, std, min and max over seeds of a ``[S]`` array."""
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}
