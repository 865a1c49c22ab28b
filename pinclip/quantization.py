"""int8 global affine quantization of L2-normalized embeddings (the published contract).

q = clamp(round(x / scale) + zero_point, -127, 127) with scale = 0.5 / 127 and zero_point = 0, so
components in [-0.5, 0.5] are kept at a resolution of 0.0039 and larger ones are clamped.
"""

from __future__ import annotations

import numpy as np

SCHEME = "global_affine"
SCALE = 0.5 / 127
ZERO_POINT = 0
QMIN, QMAX = -127, 127
PUBLISHED_DIM = 64
CLAMP_AT = (QMAX + 0.5) * SCALE   # a normalized component beyond this rounds past QMAX and is clamped
MAX_CLAMPED_SHARE = 0.001         # publish refuses a kind with more of its components clamped (max_clamped)
UNIT_NORM_TOLERANCE = 0.02        # |norm - 1| allowed of an int8 row, in dequantized units


def quantization_spec() -> dict:
    return {"scheme": SCHEME, "scale": SCALE, "zero_point": ZERO_POINT, "clamp": [QMIN, QMAX]}


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    norm = np.sqrt(np.einsum("ij,ij->i", x, x))   # a third of np.linalg.norm's time on (n, 64) rows
    return x / np.maximum(norm, 1e-12)[:, None]


def quantize(x: np.ndarray) -> np.ndarray:
    """float (n, d), already L2-normalized -> int8 (n, d)."""
    q = np.multiply(np.asarray(x, np.float32), np.float32(1.0 / SCALE))  # float32 throughout: no upcast
    np.rint(q, out=q)
    q += np.float32(ZERO_POINT)
    np.clip(q, QMIN, QMAX, out=q)
    return q.astype(np.int8)


def quantize_unit(x: np.ndarray) -> np.ndarray:
    """float (n, d), any norm -> int8 (n, d) of its L2-normalized rows: what publish stores."""
    return quantize(l2_normalize(x))


def dequantize(q: np.ndarray) -> np.ndarray:
    """int8 (n, d) -> float32 (n, d)."""
    return (q.astype(np.float32) - ZERO_POINT) * np.float32(SCALE)


def clamped(x: np.ndarray) -> np.ndarray:
    """Which components of normalized ``x`` quantization clamps (|x| > 0.5): a bool array of its shape."""
    return np.abs(np.asarray(x, np.float32)) > CLAMP_AT


def max_clamped(n: int) -> int:
    """The most clamped components publish accepts of a kind with ``n`` components: ``MAX_CLAMPED_SHARE`` of
    them plus what chance adds in a small sample (binomial, 1e-6 upper tail), so that a few new pins of a
    source within the share are not refused for one clamped component."""
    from scipy.stats import binom   # only publish asks: the readers of published vectors load no scipy

    return int(binom.isf(1e-6, n, MAX_CLAMPED_SHARE)) if n else 0


def clamped_share(x: np.ndarray) -> float:
    """Share of components of normalized ``x`` that quantization clamps (|x| > 0.5)."""
    x = np.asarray(x, np.float32)
    return float(clamped(x).mean()) if x.size else 0.0
