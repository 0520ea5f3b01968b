"""Metrics of the papers: EMA-smoothed curves, speedup over tuned Adam, final-loss ratios.

The speedup follows learned_optimization's speedup-over-Adam normaliser (VeLO, Celo): Adam's runs
over the whole learning-rate grid are averaged over seeds, EMA-smoothed (0.95), reduced to their
lower envelope over learning rates and made monotone (cumulative minimum); an optimizer whose
smoothed training loss at its last step T is L gets ``speedup = steps_Adam(L) / T``, with
``steps_Adam`` the (linearly interpolated) first step at which the envelope reaches L.
"""

import numpy as np

__all__ = ["ema", "adam_envelope", "steps_to_reach", "speedup_over_adam", "final_loss_ratio", "summarize_runs"]


def ema(curve: np.ndarray, decay: float) -> np.ndarray:
    """Bias-corrected exponential moving average along the last axis (``decay=0`` is identity)."""
    curve = np.asarray(curve, np.float64)
    out = np.empty_like(curve)
    acc = np.zeros(curve.shape[:-1])
    for t in range(curve.shape[-1]):
        acc = decay * acc + (1 - decay) * curve[..., t]
        out[..., t] = acc / (1 - decay ** (t + 1)) if decay > 0 else curve[..., t]
    return out


def adam_envelope(curves: np.ndarray, decay: float) -> np.ndarray:
    """Monotone lower envelope of ``[H, T]`` seed-averaged Adam curves (one row per learning rate)."""
    smoothed = ema(np.asarray(curves, np.float64), decay)
    smoothed = np.where(np.isfinite(smoothed), smoothed, np.inf)  # a diverged LR never helps
    return np.minimum.accumulate(smoothed.min(axis=0))


def steps_to_reach(curve: np.ndarray, target: float) -> float | None:
    """First (1-based, linearly interpolated) step at which a monotone ``curve`` reaches ``target``."""
    curve = np.asarray(curve, np.float64)
    hits = np.nonzero(curve <= target)[0]
    if not hits.size:
        return None
    i = int(hits[0])
    if i == 0 or not np.isfinite(curve[i - 1]):
        return float(i + 1)
    before, after = curve[i - 1], curve[i]
    frac = (before - target) / (before - after) if before > after else 1.0
    return float(i + frac)


def speedup_over_adam(adam_curves: np.ndarray, candidate: np.ndarray, *, decay: float) -> dict:
    """Speedup of a seed-averaged per-step training-loss curve over tuned Adam (VeLO's normaliser).

    Adam's curves may be longer than the candidate's (VeLO runs Adam 10x longer: 100k vs 10k steps),
    so a candidate faster than Adam gets a finite speedup up to ``T_adam / T``.

    Args:
      adam_curves: ``[H, T_adam]`` Adam curves, one per learning rate, averaged over seeds.
      candidate: ``[T]`` the optimizer's curve, averaged over seeds.
      decay: EMA factor (0.95 in VeLO / Celo).

    Returns:
      ``speedup``; ``censored`` (True when Adam's envelope never reaches the candidate's loss within
      its ``T_adam`` steps: the speedup is then only known to be at least ``bound``, and ``speedup``
      holds that bound); ``bound`` (``T_adam / T``, the largest speedup the normaliser can measure);
      ``adam_steps``; ``target_loss``. A candidate whose final loss is not finite gets speedup 0.
    """
    envelope = adam_envelope(adam_curves, decay)
    target = float(ema(np.asarray(candidate, np.float64), decay)[-1])
    n = len(candidate)
    bound = len(envelope) / n
    if not np.isfinite(target):
        return {"speedup": 0.0, "censored": False, "bound": bound, "adam_steps": None, "target_loss": None}
    steps = steps_to_reach(envelope, target)
    if steps is None:
        return {"speedup": bound, "censored": True, "bound": bound, "adam_steps": None, "target_loss": target}
    return {"speedup": steps / n, "censored": False, "bound": bound, "adam_steps": steps, "target_loss": target}


def final_loss_ratio(adam_final: float, final: float) -> float:
    """Celo's final-loss ratio ``L_Adam(T) / L_opt(T)`` (> 1: the optimizer ends lower than tuned Adam)."""
    if not np.isfinite(final) or final <= 0:
        return 0.0 if not np.isfinite(final) else float("inf")
    return float(adam_final / final)


def summarize_runs(values: np.ndarray) -> dict:
    """Mean, std, min and max over seeds of a ``[S]`` array."""
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}
