"""World configuration: every knob of the simulation, with named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

GENERATOR_VERSION = "pinworld-1.1"


@dataclass(frozen=True)
class EngagementConfig:
    """Weights of the ground-truth engagement model (see docs/pinworld.md)."""

    w_topic: float = 1.0          # on log of the user's (drifting) topic share
    w_style: float = 1.0          # pixel-only factor: user's preference for the pin's visual style
    w_attr: float = 1.0           # text-only factor: user's preference for the described attribute
    w_quality: float = 0.7        # per-pin latent quality, invisible in the content
    w_trend: float = 0.5          # popularity: the topic's trend on that day
    w_novelty: float = 0.3        # freshness bump, decays with age (tau_novelty days)
    tau_novelty: float = 7.0
    w_related: float = 1.5        # Related Pins: relevance of the candidate to the query pin
    position_decay: float = 0.7   # examination = 1 / (1 + position) ** position_decay
    base_repin: float = -3.4
    base_click: float = -3.1
    base_hide: float = -5.0
    base_ad_click: float = -3.6
    w_ad_quality: float = 0.8


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and rates of one world. ``days`` is the length of the organic log window [0, days)."""

    preset: str = "tiny"
    seed: int = 0
    n_pins: int = 3_000
    n_users: int = 400
    n_advertisers: int = 20
    days: int = 40
    backcatalog_days: int = 180     # organic pins before day 0 are created in [-backcatalog_days, 0)
    new_pin_share: float = 0.35     # share of organic pins created during the log window
    ad_share: float = 0.08          # share of pins that are ads
    ad_lifetime_days: tuple[int, int] = (30, 90)
    image_size: int = 64
    slate_homefeed: int = 10
    slate_related: int = 8
    slate_ads: int = 3
    requests_homefeed: float = 1.6  # mean requests per active user per day
    requests_related: float = 0.8
    requests_ads: float = 0.6
    activity: float = 0.35          # mean daily activity probability of a user
    history_saves_per_pin: float = 2.5
    taste_concentration: float = 0.15   # Dirichlet concentration: lower -> fewer topics per user
    taste_drift: float = 0.5        # share of the taste that moves to a new mixture over the window
    pref_spread: float = 0.8        # sd of a user's own style / attribute preferences: higher -> boards
                                    # (a user's saves on one topic) share style and attribute more often
    curated_board_share: float = 0.0   # users who split each topic's saves into boards by one visual style
                                       # or one described attribute (the rest keep one board per topic)
    style_annotation_share: float = 0.0   # pins whose annotations also name their visual style, as an image
                                          # classifier's aesthetic labels would (else style is pixel-only)
    visible_quality_share: float = 0.0    # share of a pin's quality variance its image shows (sharpness and
                                          # exposure, as photo quality does); the rest stays hidden. The
                                          # style-annotated pins' annotations then also grade it
    languages: dict[str, float] = field(
        default_factory=lambda: {"en": 0.74, "es": 0.08, "fr": 0.06, "de": 0.05, "it": 0.035, "pt": 0.035}
    )
    text_missing_share: float = 0.12    # no title and no description
    text_title_missing_share: float = 0.08
    text_irrelevant_share: float = 0.06
    text_noisy_share: float = 0.04
    search_save_share: float = 0.25     # share of saves that came from a search query
    engagement: EngagementConfig = field(default_factory=EngagementConfig)
    surface_names: dict[str, str] = field(default_factory=dict)  # pinworld's surfaces renamed (old -> new name)

    def __post_init__(self):
        for name in _COUNTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"pinworld: WorldConfig field {name!r}: expected a positive integer, found {value!r}")
        for name in _SHARES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"pinworld: WorldConfig field {name!r}: expected a share in [0, 1], found {value!r}")
        text = sum(getattr(self, name) for name in _TEXT_SHARES)
        if text > 1.0:
            raise ValueError(f"pinworld: WorldConfig fields {', '.join(_TEXT_SHARES)}: expected shares summing to "
                             f"at most 1, found {text:g}")

    def with_overrides(self, **kw) -> "WorldConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WorldConfig":
        d = dict(d)
        d["engagement"] = EngagementConfig(**d.get("engagement", {}))
        d["ad_lifetime_days"] = tuple(d.get("ad_lifetime_days", (30, 90)))
        return cls(**d)


_COUNTS = ("n_pins", "n_users", "n_advertisers", "days", "image_size", "slate_homefeed", "slate_related",
           "slate_ads")
_TEXT_SHARES = ("text_missing_share", "text_title_missing_share", "text_irrelevant_share", "text_noisy_share")
_SHARES = ("new_pin_share", "ad_share", "activity", "curated_board_share", "style_annotation_share",
           "visible_quality_share", "search_save_share") + _TEXT_SHARES

PRESETS: dict[str, WorldConfig] = {
    "tiny": WorldConfig(),
    "small": WorldConfig(preset="small", n_pins=20_000, n_users=3_000, n_advertisers=60, days=60),
    # the demo world curates boards by style or attribute and names the style in half the pins' annotations
    # (docs/pinworld.md): without both, no PinCLIP objective learned style (fusion probe 0.22 against 0.88).
    # Its images show 60% of the quality variance: with quality wholly hidden, no content feature, not even
    # the oracle, lifted ranking more on fresh pins than on old ones (docs/pinworld.md, "why cold start")
    "demo": WorldConfig(preset="demo", n_pins=100_000, n_users=12_000, n_advertisers=200, days=60,
                        curated_board_share=1.0, style_annotation_share=0.5, visible_quality_share=0.6),
    # the quick demo's world: the demo world's content (curated boards, style annotations, visible quality) at a
    # fifth of its pins, for the PinCLIP model shipped in pinclip/towers/ to be fine-tuned on in minutes
    "quick": WorldConfig(preset="quick", n_pins=20_000, n_users=5_000, n_advertisers=60, days=60,
                         curated_board_share=1.0, style_annotation_share=0.5, visible_quality_share=0.6),
    "large": WorldConfig(preset="large", n_pins=1_000_000, n_users=100_000, n_advertisers=1_000, days=90),
}


def preset(name: str, seed: int = 0, **overrides) -> WorldConfig:
    """A preset's config with the seed and any overrides applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: expected one of {', '.join(PRESETS)}")
    return PRESETS[name].with_overrides(preset=name, seed=seed, **overrides)
