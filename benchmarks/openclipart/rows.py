"""What each row of the Open Clip Art table trains, and on which split it is scored.

Every row is trained from scratch on the train split at 64 px with the same augmentation and a budget of
``PAIRS`` image–caption pairs, unless it says otherwise; the learning rates are chosen on the validation
split (the ``val_*_lr*`` rows, seed 0, best sum of image→text and image→image R@10). Rows scored on the test
split are reported once each, as the mean of ``SEEDS``; hypothesis rows (``hyp_*``) change one thing in the
work-matched PinCLIP row and are scored on the validation split only, beside ``val_pinclip_lr*`` (the same
row on validation) and ``val_pinclip_init`` (its floor there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

PAIRS = 30_000              # image–caption pairs of the work-matched rows: steps x batch
BATCH = 128
WORK_STEPS = PAIRS // BATCH     # 234 steps (29,952 pairs)
SEEDS = (0, 1)
AUGMENT = {"augment_scale": [0.9, 1.0], "augment_flip": 0.0}   # open_clip's training default, both models
WARMUP = 20                 # steps of linear warmup, then cosine to 0, both models

# PinCLIP: the `tiny` recipe (pinclip/configs/train_tiny.yaml) trained on the split's train rows, image–text
# losses only; `split` is filled in by the harness
PINCLIP_RECIPE = "tiny"
PINCLIP = {"batch_size": BATCH, "pin_pin": False, "heldout_share": 0.0, "warmup_steps": WARMUP,
           "checkpoint_every": 50, **AUGMENT}
PINCLIP_LRS = (1e-4, 2e-4, 5e-4, 1e-3)  # Lion; the recipe's is 2e-4
# the open_clip baseline: open_clip_train's AdamW defaults (betas 0.9/0.98, eps 1e-6, weight decay 0.2 on
# matrices only), SigLIP init (logit scale 10, bias -10, in the model config)
OPENCLIP = {"model_config": "ViT-T-8-64.json", "batch_size": BATCH, "weight_decay": 0.2, "warmup_steps": WARMUP,
            "checkpoint_every": 50, **AUGMENT}
OPENCLIP_LRS = (3e-4, 1e-3, 3e-3, 1e-2)  # AdamW


@dataclass(frozen=True)
class Row:
    name: str
    kind: str                   # pinclip | openclip
    about: str                  # one line for the docs
    split: str = "test"         # the split it is scored on
    seeds: tuple[int, ...] = SEEDS
    steps: int | str = WORK_STEPS   # an int, or "time": as many as fit in the baseline's wall time
    settings: dict = field(default_factory=dict)   # on top of PINCLIP / OPENCLIP (and the chosen lr)
    lr: float | None = None     # None: the one chosen on validation
    table: str = "main"         # main | choice | hypothesis


def _lr_name(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")


def _choice_rows() -> list[Row]:
    rows = [Row(f"val_openclip_lr{_lr_name(lr)}", "openclip", f"open_clip baseline, AdamW lr {lr:g}",
                split="validation", seeds=(0,), lr=lr, table="choice") for lr in OPENCLIP_LRS]
    rows += [Row(f"val_pinclip_lr{_lr_name(lr)}", "pinclip", f"PinCLIP tiny, Lion lr {lr:g}",
                 split="validation", seeds=(0,), lr=lr, table="choice") for lr in PINCLIP_LRS]
    rows.append(Row("val_pinclip_init", "pinclip", "PinCLIP tiny at random init (the floor)", split="validation",
                    seeds=(0,), steps=0, table="choice"))
    return rows


MAIN = [
    Row("openclip", "openclip", "open_clip SigLIP ViT baseline (ViT-T-8-64.json), work-matched"),
    Row("pinclip", "pinclip", "PinCLIP tiny, image–text losses, work-matched"),
    Row("pinclip_time", "pinclip", "PinCLIP tiny, image–text losses, time-matched to the baseline", steps="time"),
    Row("pinclip_init", "pinclip", "PinCLIP tiny at random init (the floor)", steps=0),
    Row("pinclip_boards", "pinclip", "PinCLIP tiny + Pin-to-Pin on boards from categories, work-matched "
        "(image–text pairs; plus the recipe's 128 neighbour pairs a step)", settings={"pin_pin": True}),
]


def _hyp(name: str, about: str, **settings) -> Row:
    return Row(f"hyp_{name}", "pinclip", about, split="validation", seeds=(0,), settings=settings,
               table="hypothesis")


# one change each to the work-matched PinCLIP row, scored on validation (seed 0)
HYPOTHESES = [
    _hyp("no_augment", "augmentation: none", augment_scale=[1.0, 1.0], augment_flip=0.0),
    _hyp("strong_augment", "augmentation: crops of 50-100% of the area, flips", augment_scale=[0.5, 1.0],
         augment_flip=0.5),
    _hyp("no_layer_scale", "trunk: no LayerScale (the recipe starts every block at 1e-4, near identity)",
         model_overrides={"image": {"layer_scale_init": None}}),
    _hyp("no_funnel", "trunk: one module of 6 blocks on the 8x8 grid (no funnel pooling)",
         model_overrides={"image": {"modules": 1, "depth": 6}}),
    _hyp("stem_2stage", "conv stem: two stages (16x16 grid, 4x the tokens)",
         model_overrides={"image": {"stem_channels": [64, 128]}}),
    _hyp("img_96", "image size 96 px (12x12 grid)", model_overrides={"image": {"img_size": 96}}),
    _hyp("text_lr_0.1", "text tower at 0.1x the LR", text_lr_scale=0.1),
    _hyp("loss_lr_1", "temperatures and biases at 1x the LR (recipe: 10x)", loss_lr_scale=1.0),
    _hyp("no_matryoshka", "the 256-d loss term only", matryoshka=False),
    _hyp("no_center", "no BatchNorm centring of the tower embeddings", model_overrides={"center": False}),
    _hyp("mean_pool", "image tokens mean-pooled instead of the attention pooler", model_overrides={"image_pool": "mean"}),
    _hyp("image_lr_x5", "image tower at 5x the LR", image_lr_scale=5.0),
    _hyp("adamw", "AdamW instead of Lion (lr 1e-3)", optimizer="adamw", lr=1e-3),
]

ROWS: dict[str, Row] = {r.name: r for r in MAIN + _choice_rows() + HYPOTHESES}
# what a plain run trains: the table's rows (which bring the LR choices they depend on) and the validation floor
DEFAULT_ROWS = [r.name for r in MAIN] + ["val_pinclip_init"]


def custom_hypothesis(name: str, settings: dict) -> Row:
    """A hypothesis row given on the command line (``--only hyp_NAME key=value ...``)."""
    if not name.startswith("hyp_"):
        raise ValueError(f"openclipart: {name!r}: a row given by key=value settings must be named hyp_NAME")
    lr = settings.pop("lr", None)
    return Row(name, "pinclip", "custom: " + ", ".join(f"{k}={v}" for k, v in settings.items()),
               split="validation", seeds=(0,), settings=settings, lr=lr, table="hypothesis")


def lr_choices(kind: str) -> list[Row]:
    """The validation rows an LR of ``kind`` is chosen from."""
    return [r for r in ROWS.values() if r.table == "choice" and r.kind == kind and r.lr is not None]
