"""PinCLIP model configs: small dataclasses, loaded from ``pinclip/configs/model_<name>.yaml``.

A config is plain data: ``asdict(cfg)`` is what a run saves beside its outputs, and
``PinCLIPConfig.from_dict`` turns it (or a YAML file) back into the same config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError

from pinclip.settings import CONFIG_DIR, VOCAB_SIZE
from pinlift.core.config import validation_error

TEXT_PRETRAINED = ("", "minilm")


@dataclass(frozen=True)
class ImageTowerConfig:
    """Hybrid image encoder: a strided conv stem, then a funnel ViT trunk of ``modules`` x ``depth`` blocks.

    Each stem stage halves the resolution, so the token grid is ``img_size / 2**len(stem_channels)``;
    between two modules the grid is 2x2 average-pooled (``modules - 1`` funneling steps).
    """

    __pydantic_config__ = ConfigDict(extra="forbid")   # from_dict: unknown keys are errors

    img_size: int = 64
    stem_channels: tuple[int, ...] = (32, 64, 128)
    width: int = 128
    depth: int = 2
    modules: int = 3
    heads: int = 4
    mlp_ratio: float = 4.0
    layer_scale_init: float | None = None   # LayerScale (timm Block init_values): None = off


@dataclass(frozen=True)
class TextTowerConfig:
    """Text encoder: a BERT encoder from scratch, or ``pretrained="minilm"`` (all-MiniLM-L6-v2, offline).

    ``vocab_size``, ``width``, ``layers``, ``heads`` and ``mlp_dim`` shape the from-scratch encoder and
    ``tokenizer`` names its trained ``tokenizer.json``; a pretrained encoder brings its own shape and
    tokenizer. ``max_length`` (tokens, truncation) and ``dropout`` apply to both.
    """

    __pydantic_config__ = ConfigDict(extra="forbid")

    pretrained: str = ""
    tokenizer: str = ""
    vocab_size: int = VOCAB_SIZE
    width: int = 128
    layers: int = 2
    heads: int = 4
    mlp_dim: int = 512
    max_length: int = 64
    dropout: float = 0.0

    def __post_init__(self):
        if self.pretrained not in TEXT_PRETRAINED:
            raise ValueError(f"expected text.pretrained one of {TEXT_PRETRAINED}, found {self.pretrained!r}")


@dataclass(frozen=True)
class FusionConfig:
    """The fusion aggregator: ``depth`` transformer layers over [visual | text] tokens, then an attention pooler."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class PinCLIPConfig:
    """The whole model. ``width`` is the shared token width the towers project to; ``embed_dim`` the
    pooled embedding, whose prefixes ``matryoshka_dims`` (ending at ``embed_dim``) each get a head."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    width: int = 128
    embed_dim: int = 256
    pool_heads: int = 4
    matryoshka_dims: tuple[int, ...] = (64, 128, 256)
    image_pool: Literal["attention", "mean"] = "attention"   # how the image tower's tokens become f(x)
    center: bool = True          # BatchNorm centring of the image and text embeddings (see PinCLIP)
    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)

    def __post_init__(self):
        dims = tuple(self.matryoshka_dims)
        if list(dims) != sorted(set(dims)) or dims[-1] != self.embed_dim:
            raise ValueError(f"expected matryoshka_dims increasing prefixes ending at embed_dim {self.embed_dim}, "
                             f"found {dims}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model") -> PinCLIPConfig:
        """Build a config from nested dicts (a parsed YAML file); unknown keys and wrong types are InputErrors."""
        try:
            return TypeAdapter(cls).validate_python(data)
        except ValidationError as exc:
            raise validation_error(exc, lambda loc: where) from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def merged(cfg: PinCLIPConfig, overrides: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` as a dict with fields replaced; a sub-config (image, text, fusion) may be overridden by a
    partial dict."""
    out = cfg.to_dict()
    for name, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(name), dict):
            out[name] = {**out[name], **value}
        else:
            out[name] = asdict(value) if is_dataclass(value) else value
    return out


def with_overrides(cfg: PinCLIPConfig, overrides: dict[str, Any]) -> PinCLIPConfig:
    """``cfg`` with fields replaced (see ``merged``)."""
    return PinCLIPConfig.from_dict(merged(cfg, overrides))


def list_configs() -> list[str]:
    """Names of the model configs shipped in ``pinclip/configs``."""
    return sorted(p.stem.removeprefix("model_") for p in CONFIG_DIR.glob("model_*.yaml"))


def load_config(name_or_path: str | Path) -> PinCLIPConfig:
    """A config by name (``tiny``, ``base``) or from a YAML file path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / f"model_{name_or_path}.yaml"
        if not path.exists():
            raise ValueError(f"pinclip: unknown model config {name_or_path!r}; expected one of {list_configs()} "
                             "or a path to a .yaml file")
    with open(path) as f:
        return PinCLIPConfig.from_dict(yaml.safe_load(f) or {}, str(path))
