"""The settings of PinCLIP's training commands (``pinclip train``, ``pinclip pretrain-image|text``) and their
recipes, the YAML files ``pinclip/configs/<kind>_<name>.yaml``. Loads no torch: ``pinclip --help`` lists them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationInfo, field_validator
from pydantic.dataclasses import dataclass

from pinlift.core.config import COMMAND_LINE, S, Settings, load_settings, recipe_path
from pinlift.core.errors import input_error
from pinlift.core.runs import RunName

if TYPE_CHECKING:
    from pinworld.world import World

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
VOCAB_SIZE = 8000   # of a from-scratch text tower and the tokenizer trained for it
TOWERS = ("image", "text")


def load_recipe(model: type[S], kind: str, items: list[str], defaults: dict | None = None) -> S:
    """``model`` from ``[RECIPE] [key=value ...]``: a recipe name (``pinclip/configs/<kind>_<name>.yaml``) or a
    YAML file, then the overrides (after ``defaults``)."""
    files = [x for x in items if "=" not in x]
    if len(files) > 1:
        raise input_error(COMMAND_LINE, "config", "one recipe or YAML file, then key=value overrides",
                          ", ".join(map(repr, files)))
    path = recipe_path(files[0], CONFIG_DIR, f"{kind}_") if files else None
    return load_settings(model, path, [x for x in items if "=" in x], defaults)


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class WalkConfig:
    """Random walks with restart from every query pin, and how many visited pins to keep (``walk``)."""

    num_walks: int = Field(32, ge=1)
    walk_length: int = Field(4, ge=1)
    restart_prob: float = Field(0.3, ge=0, lt=1)
    top_k: int = Field(50, ge=1)
    seed: int = 0


# keys that only extend a run: it may resume with other values; any other key defines what is trained, and a
# run started with another value is refused (or started over with --restart)
EXTENDS = ("workdir", "run", "steps", "checkpoint_every")


class TrainConfig(Settings):
    """A training run; the recipes ``pinclip/configs/train_*.yaml`` hold these keys."""

    workdir: str = Field("pinwork", description="the workspace")
    run: RunName = Field("pinclip", description="the run, under W/pinclip/runs/")
    model: str = Field("tiny", description="model config name (pinclip/configs/model_*.yaml) or YAML path")
    model_overrides: dict = Field({}, description="model config fields to replace (image, text, fusion: partial)")
    cutoff_day: int | None = Field(None, description="T (None: the workspace's default cutoff)")
    heldout_share: float = Field(0.1, ge=0, lt=1, description="older pins also held out for evaluation "
                                                               "(a random share; unused with split)")
    split: str = Field("", description="a supplied split: a Parquet/CSV file of pin_id, split (train, validation, "
                                       "test) or a column of the pins table; only train pins are trained on")
    steps: int = Field(600, ge=0, description="training steps (0: the initial weights)")
    batch_size: int = Field(128, ge=1, description="image–text pairs per rank per step")
    neighbor_batch_size: int = Field(0, ge=0, description="Pin-to-Pin pairs per rank per step "
                                                          "(0: the paper's 1/8 of batch_size)")
    neighbor_group: int = Field(0, ge=0, description="0: uniform Pin-to-Pin batches; >= 2: batches of graph "
                                                     "neighbourhoods, this many queries per anchor (hard negatives)")
    corpus_negatives: int = Field(0, ge=0, description="Pin-to-Pin negatives per query per rank per step drawn from "
                                                       "all training pins (0: in-batch only)")
    annotation_weight: float = Field(0.0, ge=0, description="weight of the auxiliary annotation loss on the 64-d "
                                                            "fusion prefix (not in the paper; 0: off)")
    annotation_labels: int = Field(256, ge=1, description="its labels: the most frequent annotation terms before T")
    lr: float = Field(2e-4, gt=0, description="peak learning rate")
    optimizer: Literal["lion", "adamw"] = Field("lion", description="timm's optimizer (the paper's Lion, or AdamW)")
    text_lr_scale: float = Field(0.1, ge=0, description="LR multiplier of the text tower")
    image_lr_scale: float = Field(1.0, ge=0, description="LR multiplier of the image tower")
    loss_lr_scale: float = Field(1.0, ge=0, description="LR multiplier of the losses' temperatures and biases")
    weight_decay: float = Field(5e-4, ge=0, description="weight decay of the image tower, fusion and heads")
    text_weight_decay: float = Field(0.5, ge=0, description="weight decay of the text tower")
    warmup_steps: int = Field(50, ge=0, description="linear warmup steps, then cosine to 0")
    trainable_image_blocks: int = Field(-1, ge=-1, description="-1: all; N: freeze all image blocks but the last N")
    grad_checkpointing: bool = Field(False, description="activation checkpointing")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: autocast")
    pin_pin: bool = Field(True, description="the Pin-to-Pin neighbor loss")
    fusion: bool = Field(True, description="False: the image–text baseline (no fusion, no Pin-to-Pin)")
    matryoshka: bool = Field(True, description="False: only the 256-d term (the no-MRL ablation)")
    positives_per_query: int = Field(5, ge=1, description="neighbor positives sampled per query pin")
    walk: dict = Field({}, description="random-walk settings (WalkConfig: num_walks, walk_length, "
                                            "restart_prob, top_k, seed)")
    session_pairs: bool = Field(False, description="also neighbors: pins repinned by one user on one day before T")
    align_reference: str = Field("", description="a trained run scoring image–text alignment")
    align_threshold: float = Field(0.0, description="with it, texts scored below this cosine are dropped")
    pretrained_image: str = Field("", description="a pretrain-image run whose image tower to start from, or a "
                                                   "tower shipped in pinclip/towers/ (image_pinworld)")
    pretrained_text: str = Field("", description="a pretrain-text run whose text tower and tokenizer to start from")
    pretrained: str = Field("", description="a whole PinCLIP model to start from, shipped in pinclip/towers/ "
                                            "(pinclip_pinworld): its weights, tokenizer and the losses' scales "
                                            "(not with pretrained_image, pretrained_text or tokenizer)")
    vocab_size: int = Field(VOCAB_SIZE, ge=1, description="of the tokenizer trained on the corpus")
    tokenizer: str = Field("", description="reuse this tokenizer.json instead of training one (WordPiece "
                                           "training breaks ties differently per run)")
    augment_scale: tuple[float, float] = Field((1.0, 1.0), description="random resized crop of training images: "
                                               "[min, max] share of the area (open_clip: [0.9, 1.0]; [1, 1]: off)")
    augment_flip: float = Field(0.0, ge=0, le=1, description="probability of a horizontal flip of a training image")
    checkpoint_every: int = Field(200, ge=1, description="steps between checkpoints")
    seed: int = Field(0, description="seed of the initialization, the split and the batches")

    @field_validator("walk")
    @classmethod
    def _walk(cls, v: dict) -> dict:
        WalkConfig(**v)   # its errors name the key: walk.restart_prob
        return v

    @field_validator("model_overrides")
    @classmethod
    def _model_overrides(cls, v: dict, info: ValidationInfo) -> dict:
        from pinclip.models.config import PinCLIPConfig, load_config, merged

        if "model" in info.data:   # else the model name itself is refused
            TypeAdapter(PinCLIPConfig).validate_python(merged(load_config(info.data["model"]), v))
        return v

    @field_validator("pretrained")
    @classmethod
    def _pretrained(cls, v: str, info: ValidationInfo) -> str:
        from pinclip.loading import shipped_towers

        if not v:
            return v
        if v not in shipped_towers("model"):
            raise ValueError(f"expected a PinCLIP model shipped in pinclip/towers/ "
                             f"({', '.join(shipped_towers('model')) or 'none'}), found {v!r}")
        given = [k for k in ("pretrained_image", "pretrained_text", "tokenizer") if info.data.get(k)]
        if given:
            raise ValueError(f"expected no {given[0]} beside it (the model brings its towers and tokenizer), "
                             f"found {given[0]}={info.data[given[0]]!r}")
        return v

    @field_validator("augment_scale")
    @classmethod
    def _augment_scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError(f"expected [min, max] with 0 < min <= max <= 1, found {list(v)}")
        return v

    @field_validator("neighbor_group")
    @classmethod
    def _group(cls, v: int) -> int:
        if v == 1:
            raise ValueError("expected 0 or an integer >= 2, found 1")
        return v

    def resolved(self, world: World) -> TrainConfig:
        """The settings with the cutoff checked against the workspace's log window, or its default."""
        return self.model_copy(update={"cutoff_day": world.cutoff(self.cutoff_day)})


def load_train_config(items: list[str]) -> TrainConfig:
    """A ``TrainConfig`` from ``[RECIPE] [key=value ...]`` (``pinclip/configs/train_<name>.yaml`` or a path)."""
    return load_recipe(TrainConfig, "train", items)


class PretrainConfig(Settings):
    """A pretraining run of one tower, under ``W/pinclip/pretrain/<run>``."""

    workdir: str = Field("pinwork", description="the workspace")
    tower: Literal[TOWERS] = Field("image", description="the tower pretrained")  # type: ignore[valid-type]
    run: RunName | None = Field(None, description="the run, under W/pinclip/pretrain/ (None: the tower's name)")
    model: str = Field("tiny", description="model config name (pinclip/configs/model_*.yaml) or YAML path")
    cutoff_day: int | None = Field(None, description="T (None: the workspace's default cutoff)")
    labels: int = Field(256, ge=1, description="the most frequent annotation terms before T")
    steps: int = Field(400, ge=0, description="training steps")
    batch_size: int = Field(128, ge=1, description="examples per step")
    lr: float = Field(1e-3, gt=0, description="AdamW peak learning rate")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(30, ge=0, description="linear warmup steps, then cosine")
    eval_pins: int = Field(2000, ge=1, description="held-out pins scored")
    checkpoint_every: int = Field(250, ge=1, description="steps between checkpoints")
    top_labels: int = Field(32, ge=1, description="also report the mAP over this many most frequent labels")
    vocab_size: int = Field(VOCAB_SIZE, ge=1, description="text: of the tokenizer trained on the corpus before T")
    seed: int = Field(0, description="seed of the initialization, the batches and the evaluation pins")

    @field_validator("run", mode="before")
    @classmethod
    def _run(cls, v: str | None, info: ValidationInfo) -> str:
        return v or info.data.get("tower", "")
