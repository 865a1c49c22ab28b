"""The tables of a workspace: columns, types, keys and foreign keys. Real data plugs in by writing them.

Types are logical kinds (any integer width is an ``int``), so user tables need not match pinworld's
widths exactly. This module is the one source for writing, validating and documenting the tables: the
column tables of docs/data.md and docs/abtest.md are generated from it (``pinlift.core.docs``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from pinlift.core.vocabulary import ACTIONS

ADS_TABLE = "ads"        # the table of ad campaigns (a table's name, not a surface's)
ACTION_DOCS = dict(zip(ACTIONS, ("saved", "clicked through", "hidden")))


@dataclass(frozen=True)
class Column:
    name: str
    kind: str            # int | float | string | bool
    nullable: bool = False
    doc: str = ""
    default: bool | int | float | str | None = None   # what an absent column holds

    @property
    def fillable(self) -> bool:
        """A file may leave the column out (or all-null, Arrow type null): it reads as nulls or the default."""
        return self.nullable or self.default is not None


@dataclass(frozen=True)
class Table:
    name: str
    path: str            # relative to the workdir; a directory means a partitioned dataset
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()
    foreign_keys: dict[str, str] = field(default_factory=dict)   # column -> "table.column"
    doc: str = ""
    required: bool = True   # an optional table is still needed when a present table's rows refer to it

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


C = Column
TABLES: dict[str, Table] = {t.name: t for t in (
    Table("pins", "world/pins.parquet", (
        C("pin_id", "int", doc="unique pin id"),
        C("created_day", "int", doc="day the pin was created (negative: before the log window)"),
        C("image_uri", "string", True, "image location: `images/shard-K.npy#ROW` or a file path relative to `world/` "
          "(see [Images](#images)); null for a pin without an image (PinCLIP trains only on pins with one)"),
        C("title", "string", True, "title, null when missing"),
        C("description", "string", True, "description, null when missing"),
        C("caption", "string", True, "synthetic caption from a captioning model (English)"),
        C("language", "string", True, "language of title/description (ISO 639-1), null when unknown"),
        C("is_ad", "bool", doc="the pin is an ad creative", default=False),
        C("advertiser_id", "int", True, "advertiser of an ad, null for organic pins"),
    ), key=("pin_id",), foreign_keys={"advertiser_id": "advertisers.advertiser_id"},
        doc="Every pin: static content known when it is created."),
    Table("users", "world/users.parquet", (
        C("user_id", "int", doc="unique user id"),
        C("signup_day", "int", True, "day the user joined, null when unknown"),
        C("language", "string", True, "the user's language (ISO 639-1), null when unknown"),
    ), key=("user_id",), doc="Users.", required=False),
    Table("advertisers", "world/advertisers.parquet", (
        C("advertiser_id", "int", doc="unique advertiser id"),
        C("name", "string", doc="display name"),
    ), key=("advertiser_id",), doc="Advertisers.", required=False),
    Table(ADS_TABLE, "world/ads.parquet", (
        C("pin_id", "int", doc="the ad's pin (its creative)"),
        C("advertiser_id", "int", doc="who pays"),
        C("bid", "float", doc="bid per click, in cents"),
        C("created_day", "int", doc="first day the ad can serve"),
        C("end_day", "int", doc="first day the ad no longer serves"),
    ), key=("pin_id",), foreign_keys={"pin_id": "pins.pin_id", "advertiser_id": "advertisers.advertiser_id"},
        doc="Ad campaigns, one per ad pin.", required=False),
    Table("boards", "world/boards.parquet", (
        C("board_id", "int", doc="unique board id"),
        C("user_id", "int", True, "owner; null for a board no user owns (a catalog's category)"),
        C("name", "string", doc="board name: pinworld's in the owner's language, a catalog's its category path"),
        C("created_day", "int", doc="day of the board's first save"),
    ), key=("board_id",), foreign_keys={"user_id": "users.user_id"}, doc="Boards (collections of saved pins).",
        required=False),
    Table("pin_board", "world/pin_board.parquet", (
        C("pin_id", "int", doc="saved pin"),
        C("board_id", "int", doc="board it was saved to"),
        C("user_id", "int", True, "who saved it; null for an edge no user made (a catalog's category)"),
        C("day", "int", doc="day of the save"),
    ), key=("pin_id", "board_id"), foreign_keys={"pin_id": "pins.pin_id", "board_id": "boards.board_id"},
        doc="Pin-Board edges from saves, one per (pin, board): the first save.", required=False),
    Table("pin_search_queries", "world/pin_search_queries.parquet", (
        C("pin_id", "int", doc="saved pin"),
        C("day", "int", doc="day of the save"),
        C("query", "string", doc="the search query that led to the save"),
    ), foreign_keys={"pin_id": "pins.pin_id"}, doc="Search queries that led to saves.", required=False),
    Table("pin_annotations", "world/pin_annotations.parquet", (
        C("pin_id", "int", doc="annotated pin"),
        C("day", "int", doc="day the annotation was mined"),
        C("annotation", "string", doc="annotation term (English)"),
        C("score", "float", doc="confidence in [0, 1]"),
    ), foreign_keys={"pin_id": "pins.pin_id"}, doc="Annotations mined from content and engagement.",
        required=False),
    Table("impressions", "logs/impressions", (
        C("request_id", "int", doc="request (one slate) id"),
        C("day", "int", doc="day of the request"),
        C("surface", "string", doc="a surface the workspace declares (pinworld: `homefeed` \\| `related` \\| `ads`)"),
        C("user_id", "int", doc="viewer"),
        C("query_pin_id", "int", True, "Related Pins: the query pin; null elsewhere"),
        C("pin_id", "int", doc="pin shown"),
        C("position", "int", doc="0-based slot in the slate"),
        *(C(a, "bool", doc=ACTION_DOCS[a] + " (a column a declared task needs)", default=False) for a in ACTIONS),
    ), key=("request_id", "position"), foreign_keys={"user_id": "users.user_id", "pin_id": "pins.pin_id",
                                                    "query_pin_id": "pins.pin_id"},
        doc="Organic logs: one row per impression with its labels; Parquet under day=D/surface=S/.",
        required=False),
)}

# An experiment's logs, under experiments/<name>/ (simulated by `abtest simulate`, or a team's own)
EXPERIMENT_TABLES: dict[str, Table] = {t.name: t for t in (
    Table("exposures", "experiments/<name>/exposures", (
        C("experiment", "string", doc="experiment name"),
        C("user_id", "int", doc="the randomisation unit (→ `users.user_id`)"),
        C("variant", "string", doc="`control` \\| `treatment`"),
        C("first_exposure_day", "int",
          doc="day of the user's first request in the experiment; events before it are excluded and counted"),
    ), key=("user_id",), doc="One row per exposed user."),
    Table("events", "experiments/<name>/events", (
        C("day", "int", doc="day of the request"),
        C("user_id", "int", doc="viewer (→ `exposures.user_id`)"),
        C("surface", "string", doc="a surface the workspace declares"),
        C("request_id", "int", doc="request (one slate) id, unique across days and surfaces"),
        C("pin_id", "int", doc="pin shown (→ `pins.pin_id`)"),
        C("position", "int", doc="0-based slot in the slate"),
        C("action", "string", doc="`impression` or an action the workspace declares"),
        C("value", "float", True, "cost of an ad click in cents (second price); null for other rows"),
    ), key=("request_id", "position", "action"), doc="One row per impression and one per action."),
)}


# A published embedding version, under embeddings/<name>/<version>/ (written by `pinclip publish`); its
# fields are JSON kinds (mapping, list) and its vectors fixed-size int8 lists
EMBEDDING_TABLES: dict[str, Table] = {t.name: t for t in (
    Table("embedding_parts", "embeddings/<name>/<version>/part-NNNNN.parquet", (
        C("pin_id", "int", doc="the pin (→ `pins.pin_id`), once across the version's parts"),
        C("fusion", "int8[64]", doc="the multimodal embedding: its L2-normalized 64-d prefix, quantized"),
        C("image", "int8[64]", True, "the image tower's, where the manifest's `kinds` lists it"),
        C("text", "int8[64]", True, "the text tower's, where listed; null for pins without text"),
    ), key=("pin_id",), doc="The vectors: `pin_id` and one column per kind the manifest lists."),
    Table("manifest", "embeddings/<name>/<version>/manifest.json", (
        C("name", "string", doc="the embedding's name"),
        C("version", "string", doc="`vNNNN`, one more than the last"),
        C("parent", "string", True, "the version an incremental publish extends"),
        C("source", "mapping", doc="what made it: `kind` (pinclip, oracle, topic, topic_objects, parquet), the run, "
                                   "its config hash (`config_hash`) and generator version, or a vector file's `file` and `sha256`; `pins` (file, "
                                   "sha256) when new pins were published from a table"),
        C("created", "string", doc="UTC time, ISO 8601"),
        C("dim", "int", doc="64"),
        C("dtype", "string", doc="`int8`"),
        C("kinds", "list", doc="the vector columns of the parts: `fusion`, and `image`, `text` where published"),
        C("l2_normalized", "bool", doc="every vector has unit norm before quantization"),
        C("quantization", "mapping", doc="`{scheme: global_affine, scale: 0.5/127, zero_point: 0, clamp: [-127, 127]}`"),
        C("as_of_day", "int", True, "the day whose knowledge of each pin was embedded"),
        C("rows", "int", doc="rows over all parts"),
        C("parts", "list", doc="per part: `file`, `rows`, `sha256`, `min_pin_id`, `max_pin_id`, `reused_from` (the "
                               "version an incremental publish hard-linked it from)"),
    ), doc="The version's description, written last; the reader checks it and every part against it."),
)}


def table_schema(table: str) -> Table:
    """Any table of a workspace, an experiment or a published embedding, by name."""
    return TABLES.get(table) or EXPERIMENT_TABLES.get(table) or EMBEDDING_TABLES[table]


def column_kinds(table: str) -> dict[str, str]:
    """Column name → logical kind, for any table of the workspace, an experiment or a published embedding."""
    return {c.name: c.kind for c in table_schema(table).columns}


def markdown_table(table: str) -> str:
    """The documentation table of ``table``'s columns: name, type, null? and meaning."""
    t = table_schema(table)
    rows = ["| name | type | null? | meaning |", "|---|---|---|---|"]
    rows += [f"| `{c.name}` | {c.kind} | {_null_cell(c)} | {c.doc} |" for c in t.columns]
    return "\n".join(rows)


def _null_cell(c: Column) -> str:
    if c.nullable:
        return "yes"
    return "no" if c.default is None else f"no (absent: `{str(c.default).lower()}`)"


KIND_CHECKS = {
    "int": pa.types.is_integer,
    "float": lambda t: pa.types.is_floating(t) or pa.types.is_integer(t),
    "string": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    "bool": pa.types.is_boolean,
}
KIND_TYPES = {"int": pa.int64(), "float": pa.float32(), "string": pa.string(), "bool": pa.bool_()}


def arrow_schema(table: str, widths: dict[str, pa.DataType] | None = None) -> pa.Schema:
    """The Arrow schema pinworld writes for ``table`` (ints are int64 unless ``widths`` says otherwise)."""
    widths = widths or {}
    return pa.schema([pa.field(c.name, widths.get(c.name, KIND_TYPES[c.kind]), nullable=c.nullable)
                      for c in TABLES[table].columns])
