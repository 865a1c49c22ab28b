"""Feature assembly: impressions -> examples with point-in-time sparse IDs, dense counts and content.

Sparse features (into TorchRec ``EmbeddingBagCollection``s as a ``KeyedJaggedTensor``): user, candidate
pin, the pin's boards, advertiser, query pin (Related Pins) and the user's recent saves (multi-hot).
IDs are mapped through vocabularies fit on the training examples; an id never seen in training maps to
row 0, an explicit unknown row, never to another id's row. A hashed share of the ids seen in training maps
there too (``Vocabs.holding_out``), so that the unknown row is trained.

Dense features: position, content age, counts from events strictly before the example's day, the surface
(one-hot over the surfaces the workspace declares, ``pinlift.core.vocabulary``) and the
candidate's co-engagement cosines with the user and the query pin (``ranking.coengagement``: the save
graph as of a snapshot before the day, what old pins' IDs know and fresh pins lack); with
a content embedding (``embeddings=NAME@VERSION``) also the dequantized 64-d fusion embedding of the
candidate, of the query pin and the mean over the user's other recent saves (the candidate's own left
out), each with a missing indicator, then the candidate's dot product with the query pin's vector and
with that mean (zero where one is missing): the similarity features a content embedding is trained to serve, which an MLP over the
concatenated vectors would otherwise have to learn as a product.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
from torchrec import KeyedJaggedTensor
from torchrec.datasets.utils import Batch

from pinclip.embeddings import PublishedEmbeddings, embeddings_dir, open_embeddings
from pinlift.core.errors import input_error
from pinlift.core.hashing import uniform_hash
from pinlift.core.schema import TABLES
from pinlift.core.vocabulary import CLICK, REPIN, Vocabulary
from pinworld.world import World
from ranking.coengagement import CoEngagement
from ranking.history import History, entity_day_keys, gather_jagged
from ranking.vocab import Vocab

SPARSE_FEATURES = ("user", "pin", "pin_boards", "advertiser", "query_pin", "user_history")
TABLE_OF_FEATURE = {"user": "user", "pin": "pin", "query_pin": "pin", "user_history": "pin",
                    "pin_boards": "board", "advertiser": "advertiser"}
COUNT_DENSE = ("position", "log_age", "is_ad", "pin_impressions", "pin_repins", "pin_clicks", "pin_saves",
               "pin_repin_rate", "user_saves", "user_impressions")
COENGAGEMENT_DENSE = ("coeng_user_cosine", "coeng_query_cosine", "coeng_pin_known", "coeng_query_known")
CONTENT_DIM = 64


def base_dense(vocab: Vocabulary) -> tuple[str, ...]:
    """The dense features before content: counts, a one-hot of the declared surfaces, co-engagement."""
    return (*COUNT_DENSE, *(f"surface_{s}" for s in vocab.names), *COENGAGEMENT_DENSE)


@dataclass
class Examples:
    """Columnar examples; jagged features are CSR (values, offsets)."""

    user_id: np.ndarray
    pin_id: np.ndarray
    query_pin_id: np.ndarray      # -1 where not Related Pins
    advertiser_id: np.ndarray     # -1 for organic pins
    surface: np.ndarray           # index into the vocabulary's surfaces
    day: np.ndarray
    created_day: np.ndarray
    is_ad: np.ndarray
    dense: np.ndarray             # float32 (n, len(base_dense(vocab)))
    labels: np.ndarray            # float32 (n, len(vocab.tasks)), NaN where the task does not apply
    boards: tuple[np.ndarray, np.ndarray]
    history: tuple[np.ndarray, np.ndarray]   # the user's recent saves before the day: equal for equal (user_id, day)

    def __len__(self) -> int:
        return len(self.pin_id)


def _csr(values: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return values, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


class FeatureSource:
    """Everything features are computed from: logs, saves and (optionally) published embeddings; the
    surfaces and tasks are ``vocab``'s (default: the ones the workspace declares). With ``impressions=False``
    the impression log is not read: ``ranking.counts`` sets the impression counts a day range at a time."""

    def __init__(self, world: World, max_boards: int = 5, max_history: int = 10, coengagement_dim: int = 64,
                 coengagement_every: int = 7, vocab: Vocabulary | None = None, impressions: bool = True):
        self.world = world
        self.vocab = vocab or world.vocabulary
        self.max_boards, self.max_history = max_boards, max_history
        unlabelled = sorted({t for _, t in self.vocab.tasks} & world.filled_columns("impressions"))
        if unlabelled and world.has("impressions"):
            raise input_error(world.workdir / TABLES["impressions"].path, unlabelled[0],
                              "a bool column (a task of a declared surface)", "no such column (or only nulls)")
        pins = world.table("pins").select("pin_id", "created_day", "is_ad", "advertiser_id")
        self.pins = pins.sort("pin_id")
        edges = world.table("pin_board")
        if impressions:
            imp = world.impressions().select("day", "user_id", "pin_id", REPIN, CLICK)
            d, u, p = imp["day"].to_numpy(), imp["user_id"].to_numpy(), imp["pin_id"].to_numpy()
            self.pin_impressions = History(p, d)
            self.pin_repins = History(p, d, weight=imp[REPIN].to_numpy())
            self.pin_clicks = History(p, d, weight=imp[CLICK].to_numpy())
            self.user_impressions = History(u, d)
        self.pin_saves = History(edges["pin_id"].to_numpy(), edges["day"].to_numpy())
        self.pin_boards = History(edges["pin_id"].to_numpy(), edges["day"].to_numpy(), item=edges["board_id"].to_numpy())
        self.user_saves = History(edges["user_id"].to_numpy(), edges["day"].to_numpy(), item=edges["pin_id"].to_numpy())
        self.coengagement = CoEngagement(edges["user_id"].to_numpy(), edges["pin_id"].to_numpy(), edges["day"].to_numpy(),
                                         dim=coengagement_dim, every=coengagement_every)

    def examples(self, impressions: pl.DataFrame) -> Examples:
        """Examples for impression rows (labels from their action columns)."""
        if impressions.height == 0:
            raise ValueError("ranking: no impressions for the requested days and surfaces (empty logs?)")
        imp = impressions.join(self.pins, on="pin_id", how="left")
        if imp["created_day"].null_count():
            missing = imp.filter(pl.col("created_day").is_null())["pin_id"][0]
            raise ValueError(f"ranking: impressions: pin_id {missing} not found in pins")
        day = imp["day"].to_numpy()
        user = imp["user_id"].to_numpy()
        pin = imp["pin_id"].to_numpy()
        created = imp["created_day"].to_numpy()
        names = self.vocab.names
        surface = _surface_index(imp["surface"], names)
        impr = self.pin_impressions.count_before(pin, day)
        repins = self.pin_repins.count_before(pin, day)
        query = imp["query_pin_id"].fill_null(-1).to_numpy().astype(np.int64)
        dense = np.concatenate([np.stack([
            imp["position"].to_numpy() / 10.0,
            np.log1p(np.maximum(day - created, 0)) / 5.0,
            imp["is_ad"].to_numpy().astype(np.float32),
            np.log1p(impr) / 5.0, np.log1p(repins) / 5.0,
            np.log1p(self.pin_clicks.count_before(pin, day)) / 5.0,
            np.log1p(self.pin_saves.count_before(pin, day)) / 5.0,
            (repins + 0.1) / (impr + 1.0),
            np.log1p(self.user_saves.count_before(user, day)) / 5.0,
            np.log1p(self.user_impressions.count_before(user, day)) / 5.0,
            *(surface == i for i in range(len(names))),
        ], 1), self.coengagement.features(user, pin, query, day)], 1).astype(np.float32)
        labels = np.full((len(pin), len(self.vocab.tasks)), np.nan, np.float32)
        for j, (s, task) in enumerate(self.vocab.tasks):
            rows = surface == names.index(s)
            labels[rows, j] = imp[task].to_numpy()[rows]
        boards = _csr(*self.pin_boards.recent_before(pin, day, self.max_boards))
        history = _csr(*self.user_saves.recent_before(user, day, self.max_history))
        return Examples(
            user_id=user.astype(np.int64), pin_id=pin.astype(np.int64),
            query_pin_id=query,
            advertiser_id=imp["advertiser_id"].fill_null(-1).to_numpy().astype(np.int64),
            surface=surface, day=day.astype(np.int32), created_day=created.astype(np.int32),
            is_ad=imp["is_ad"].to_numpy(), dense=dense, labels=labels, boards=boards, history=history)


def _surface_index(col: pl.Series, names: tuple[str, ...]) -> np.ndarray:
    unknown = set(col.unique().to_list()) - set(names)
    if unknown:
        raise ValueError(f"ranking: impressions: column 'surface': expected one of {', '.join(names)}, "
                         f"found {sorted(unknown)[0]!r}")
    return col.replace_strict(list(names), list(range(len(names))), return_dtype=pl.Int8).to_numpy()


class ContentFeatures:
    """Dense per-pin content vectors from a published embedding, as float rows by pin id."""

    def __init__(self, emb: PublishedEmbeddings, shuffle_seed: int | None = None):
        look = emb.lookup(emb.pin_ids, "fusion", dequantize_values=True)
        self.embedding = embedding_record(emb)
        self.ids = emb.pin_ids
        vectors = look.values.astype(np.float32)
        self.present = look.found
        if shuffle_seed is not None:
            # the control arm: the same vectors, assigned to the wrong pins
            perm = np.random.default_rng(shuffle_seed).permutation(len(self.ids))
            vectors, self.present = vectors[perm], self.present[perm]
        # one extra all-zero row that every missing pin maps to, so a lookup is a single gather
        self.missing_row = len(self.ids)
        self.table = np.zeros((len(self.ids) + 1, CONTENT_DIM), np.float32)
        self.table[:-1][self.present] = vectors[self.present]
        self.vectors = self.table[:-1]   # zero where the pin has no embedding
        self.ref = emb.ref + (f"+shuffled({shuffle_seed})" if shuffle_seed is not None else "")

    @classmethod
    def empty(cls) -> "ContentFeatures":
        """No pin has a vector: the content inputs of an IDs-only arm whose widths equal the content arms'."""
        self = cls.__new__(cls)
        self.embedding = None
        self.ids, self.present = np.zeros(0, np.int64), np.zeros(0, bool)
        self.missing_row = 0
        self.table = np.zeros((1, CONTENT_DIM), np.float32)
        self.vectors = self.table[:0]
        self.ref = "none"
        return self

    def index(self, pin_ids) -> np.ndarray:
        """Rows of ``table`` for pin ids; an unknown pin or one without an embedding -> ``missing_row``."""
        ids = np.asarray(pin_ids, np.int64)
        if len(self.ids) == 0:
            return np.zeros(len(ids), np.int64)
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return np.where((self.ids[pos] == ids) & self.present[pos], pos, self.missing_row)

    def rows(self, pin_ids) -> tuple[np.ndarray, np.ndarray]:
        """Vectors (zero where missing) and whether each pin has an embedding."""
        idx = self.index(pin_ids)
        return self.table[idx], idx != self.missing_row


def content_shuffle_seed(seed: int, shuffled: bool) -> int | None:
    """The permutation seed of a run whose embedding is shuffled across pins (training and serving must agree)."""
    return seed + 1 if shuffled else None


# keys of a manifest's source that say which pins a version adds, not how they were embedded
ADDED_PINS = ("pins", "lag_days")


def embedding_record(emb: PublishedEmbeddings) -> dict:
    """What a run records of the vectors it is trained on: ``name@version``, the manifest's source and, for a
    PinCLIP run's vectors, that run and its config hash (``pinclip publish`` records them in the source)."""
    source = emb.manifest["source"]
    run = ({"run": source["run"], "config_hash": source.get("config_hash")} if source.get("kind") == "pinclip"
           else None)
    return {"ref": emb.ref, "source": source, "pinclip_run": run}


def check_same_space(trained: dict, emb: PublishedEmbeddings, workdir) -> None:
    """Refuse, in one line, vectors other than those a run was trained on: the same version, or one with the
    same name and source (the same PinCLIP run and config hash, the same file, ...) that, beside the trained
    version, descends from it through incremental publishes (a copy published elsewhere, as the A/B
    simulator's daily versions, is judged by its name and source alone)."""
    name, version = trained["ref"].split("@")
    space = lambda source: {k: v for k, v in source.items() if k not in ADDED_PINS}  # noqa: E731
    same = emb.name == name and space(emb.manifest["source"]) == space(trained["source"])
    root = embeddings_dir(workdir, name)
    if same and emb.directory.parent.resolve() == root.resolve():
        v = emb.version
        while v not in (version, None):
            v = json.loads((root / v / "manifest.json").read_text()).get("parent")
        same = v == version
    if not same:
        raise input_error(emb.directory, "embeddings", f"{trained['ref']} or an incremental version of it from "
                          f"the same source (the run was trained on it)", f"{emb.ref} ({emb.manifest['source']})")


def load_content(workdir, embeddings: str | None, *, seed: int = 0, shuffled: bool = False,
                 empty: bool = False) -> ContentFeatures | None:
    """The content feature of a run: a published embedding (``NAME[@VERSION]``, permuted across pins when
    ``shuffled``), the empty one (``empty``: IDs only, same widths) or none at all."""
    if embeddings:
        return content_of(open_embeddings(workdir, embeddings), seed=seed, shuffled=shuffled)
    return ContentFeatures.empty() if empty else None


def content_of(emb: PublishedEmbeddings, *, seed: int = 0, shuffled: bool = False) -> ContentFeatures:
    """The content feature of a run's seed from a published version (permuted across pins when ``shuffled``)."""
    return ContentFeatures(emb, shuffle_seed=content_shuffle_seed(seed, shuffled))


@dataclass
class Vocabs:
    user: Vocab
    pin: Vocab
    board: Vocab
    advertiser: Vocab

    @classmethod
    def fit(cls, ex: Examples) -> "Vocabs":
        """Ids seen in the training examples (candidates, query pins, histories, boards)."""
        pins = np.concatenate([ex.pin_id, ex.query_pin_id[ex.query_pin_id >= 0], ex.history[0]])
        return cls(Vocab(ex.user_id), Vocab(pins), Vocab(ex.boards[0]), Vocab(ex.advertiser_id[ex.advertiser_id >= 0]))

    def holding_out(self, share: float) -> "Vocabs":
        """The vocabularies without a hashed ``share`` of each table's ids: those map to the unknown row in
        training as in serving, so that row learns what to predict for an id the model has not learned (an id
        first seen after training lands there too; untrained, that row's output is arbitrary)."""
        if share <= 0:
            return self
        kept = [(v.ids[uniform_hash(v.ids, salt) >= share]) for salt, v in enumerate(self.tables())]
        return Vocabs(*(Vocab(ids) for ids in kept))

    def tables(self) -> tuple[Vocab, Vocab, Vocab, Vocab]:
        return self.user, self.pin, self.board, self.advertiser

    def union(self, other: "Vocabs") -> "Vocabs":
        """The ids either knows: ``fit`` of two parts together is the union of their fits."""
        return Vocabs(*(Vocab(np.concatenate([getattr(self, k).ids, getattr(other, k).ids]))
                        for k in ("user", "pin", "board", "advertiser")))

    def sizes(self) -> dict[str, int]:
        return {"user": len(self.user), "pin": len(self.pin), "board": len(self.board), "advertiser": len(self.advertiser)}

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k).ids for k in ("user", "pin", "board", "advertiser")}

    @classmethod
    def from_arrays(cls, arrays) -> "Vocabs":
        return cls(*(Vocab(arrays[k]) for k in ("user", "pin", "board", "advertiser")))


def dense_width(vocab: Vocabulary, content: bool) -> int:
    return len(base_dense(vocab)) + (CONTENT_WIDTH if content else 0)


def make_batch(ex: Examples, rows: np.ndarray, vocabs: Vocabs, content: ContentFeatures | None) -> Batch:
    """A TorchRec ``Batch`` for example rows."""
    base = ex.dense[rows]
    dense = base if content is None else np.concatenate([base, _content_dense(ex, rows, content)], 1)
    dense_t = torch.from_numpy(dense)
    b_vals, b_len = gather_jagged(ex.boards[0], ex.boards[1], rows)
    h_vals, h_len = gather_jagged(ex.history[0], ex.history[1], rows)
    n = len(rows)
    ones = np.ones(n, np.int64)
    q = ex.query_pin_id[rows]
    a = ex.advertiser_id[rows]
    feats = {
        "user": (vocabs.user.rows(ex.user_id[rows]), ones),
        "pin": (vocabs.pin.rows(ex.pin_id[rows]), ones),
        "pin_boards": (vocabs.board.rows(b_vals), b_len),
        "advertiser": (vocabs.advertiser.rows(a[a >= 0]), (a >= 0).astype(np.int64)),
        "query_pin": (vocabs.pin.rows(q[q >= 0]), (q >= 0).astype(np.int64)),
        "user_history": (vocabs.pin.rows(h_vals), h_len),
    }
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=list(SPARSE_FEATURES),
        values=torch.from_numpy(np.concatenate([feats[k][0] for k in SPARSE_FEATURES]).astype(np.int64)),
        lengths=torch.from_numpy(np.concatenate([feats[k][1] for k in SPARSE_FEATURES]).astype(np.int32)))
    return Batch(dense_features=dense_t, sparse_features=kjt, labels=torch.from_numpy(ex.labels[rows]))


# candidate, query pin and pooled history vectors with their missing indicators; two similarities
CONTENT_WIDTH = 3 * (CONTENT_DIM + 1) + 2


def _content_dense(ex: Examples, rows: np.ndarray, content: ContentFeatures) -> np.ndarray:
    """Candidate, query pin and pooled history vectors, each followed by its missing indicator, then the
    candidate's dot products with the query pin and with the pooled history (n, 3 * 65 + 2)."""
    out = np.empty((len(rows), CONTENT_WIDTH), np.float32)
    q = ex.query_pin_id[rows]
    for j, idx in enumerate((content.index(ex.pin_id[rows]),
                             np.where(q >= 0, content.index(q), content.missing_row))):
        o = j * (CONTENT_DIM + 1)
        out[:, o:o + CONTENT_DIM] = content.table[idx]
        out[:, o + CONTENT_DIM] = idx == content.missing_row
    cand = out[:, :CONTENT_DIM]
    o = 2 * (CONTENT_DIM + 1)
    pooled, count = _other_saves(ex, rows, cand, out[:, CONTENT_DIM] == 0, *pooled_history(ex, rows, content))
    out[:, o:o + CONTENT_DIM] = pooled
    out[:, o + CONTENT_DIM] = count == 0
    out[:, -2] = np.einsum("nd,nd->n", cand, out[:, CONTENT_DIM + 1:2 * CONTENT_DIM + 1])
    out[:, -1] = np.einsum("nd,nd->n", cand, pooled)
    return out


def _other_saves(ex: Examples, rows: np.ndarray, cand: np.ndarray, cand_present: np.ndarray, pooled: np.ndarray,
                 count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pooled history without the candidate's own saves, and how many saves are left. A pin always
    matches itself, so its own saves would tell "saved before" (an identity, which even vectors shuffled
    across pins carry) rather than what the user's other pins look like."""
    vals, lengths = gather_jagged(ex.history[0], ex.history[1], rows)
    owner = np.repeat(np.arange(len(rows)), lengths)
    # a candidate without a vector was never counted in its pooled history
    own = np.bincount(owner[vals == ex.pin_id[rows][owner]], minlength=len(rows)).astype(np.float32) * cand_present
    others = count - own
    summed = pooled * count[:, None] - own[:, None] * cand
    return np.where(others[:, None] > 0, summed / np.maximum(others, 1)[:, None], 0.0).astype(np.float32), others


def pooled_history(ex: Examples, rows: np.ndarray, content: ContentFeatures) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the mean content vector over the user's recent saves that have one (zero if none) and how
    many had one. A history is a function of (user, day), so each distinct one is pooled once: a slate
    of one request pools a single history, not one per candidate."""
    key = entity_day_keys(ex.user_id[rows], ex.day[rows])
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    vals, lengths = gather_jagged(ex.history[0], ex.history[1], rows[first])
    # histories padded to (distinct, longest) with the zero row; a missing save is the zero row too
    owner = np.repeat(np.arange(len(first)), lengths)
    slot = np.arange(len(vals)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    padded = np.full((len(first), int(lengths.max(initial=0))), content.missing_row)
    padded[owner, slot] = content.index(vals)
    count = (padded != content.missing_row).sum(1).astype(np.float32)
    summed = np.zeros((len(first), CONTENT_DIM), np.float32)
    for j in range(padded.shape[1]):
        # one save position at a time: each history is summed in order, as a running sum would
        summed += content.table[padded[:, j]]
    return (summed / np.maximum(count, 1)[:, None])[inverse], count[inverse]
