"""`pinclip` command line: train, pretrain-image|text, ablate, publish embeddings, embed new content, build/query
the candidate index."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from pinclip.settings import EXTENDS, TOWERS, PretrainConfig, TrainConfig, load_recipe, load_train_config
from pinlift.core.cli import add_debug_flag, add_quiet_flag, run_command
from pinlift.core.config import add_field_options, fields_help, given_fields
from pinlift.core.errors import input_error
from pinlift.core.runs import check_name, removed_on_error

# Each command imports what it runs when it runs: the index commands and publishing an oracle load no torch,
# and publishing a run loads the library alone, never the training program (pinclip.training); the settings
# of the training commands (pinclip.settings, for --help) load neither.


def _publish(args) -> int:
    from pinworld.oracle import ORACLE_KINDS

    if args.source not in ("run", "parquet", *ORACLE_KINDS):
        raise ValueError(f"pinclip publish: --source {args.source!r}: expected one of run, parquet, "
                         f"{', '.join(ORACLE_KINDS)}")
    for flag, value, source in (("--pins", args.pins, "run"), ("--vectors", args.vectors, "parquet")):
        if value and args.source != source:
            raise ValueError(f"pinclip publish: {flag}: expected --source {source}, found --source {args.source}")
    if args.source == "run" and not args.run and args.commit is None:
        raise ValueError("pinclip publish: --source run: expected --run RUN (a trained run under pinclip/runs/)")
    if args.source == "parquet" and not (args.vectors and args.name):
        raise ValueError("pinclip publish: --source parquet: expected --vectors FILE.parquet and --name NAME")
    if (args.pins or args.source == "parquet") and (args.as_of_day is not None or args.since_day is not None):
        raise ValueError(f"pinclip publish: {'--pins' if args.pins else '--source parquet'}: expected no "
                         "--as-of-day or --since-day")
    if args.shard and (args.source != "run" or args.pins):
        raise input_error("pinclip publish", "--shard", "--source run publishing a full version (a catalog worth "
                          "splitting)", f"--source {args.source}" + (" --pins" if args.pins else ""))
    if args.commit is not None and args.shard:
        raise input_error("pinclip publish", "--commit", "no --shard (run once, after every shard)",
                          f"--shard {args.shard}")
    name = args.name or "pinclip"
    bar = tqdm(desc=f"publish {name}", unit="part", disable=args.quiet)

    def on_part(i, n):
        bar.total = n
        bar.update(1)

    if args.commit is not None:
        from pinclip.publish import commit_shards

        manifest = commit_shards(args.workdir, name, args.commit or None)
    elif args.shard:
        from pinclip.publish import Shard
        from pinclip.run_source import publish_run

        record = publish_run(args.workdir, args.run, name, as_of_day=args.as_of_day, since_day=args.since_day,
                             shard=Shard.parse(args.shard), progress=not args.quiet, on_part=on_part)
        bar.close()
        print(json.dumps({k: record[k] for k in ("name", "key", "shard", "shards", "rows", "total_rows")}))
        return 0
    elif args.source == "run" and args.pins:
        from pinclip.run_source import publish_new_pins

        manifest = publish_new_pins(args.workdir, args.run, args.pins, name, progress=not args.quiet, on_part=on_part)
    elif args.source == "run":
        from pinclip.run_source import publish_run

        manifest = publish_run(args.workdir, args.run, name, as_of_day=args.as_of_day, since_day=args.since_day,
                               progress=not args.quiet, on_part=on_part)
    elif args.source == "parquet":
        from pinclip.vector_source import publish_vectors

        manifest = publish_vectors(args.workdir, args.vectors, name, on_part=on_part)
    else:
        from pinclip.oracle_source import publish_oracle

        manifest = publish_oracle(args.workdir, name, as_of_day=args.as_of_day, since_day=args.since_day,
                                  kind=args.source, on_part=on_part)
    bar.close()
    from pinworld.catalog import build_catalog

    build_catalog(args.workdir)   # the new version appears in the catalog's `embeddings` view
    print(json.dumps({k: manifest[k] for k in ("name", "version", "parent", "rows", "kinds", "as_of_day")}))
    return 0


def _embed(args) -> int:
    from pinclip.embed import embed

    out = embed(args.workdir, args.run, images=args.images, texts=args.texts, pins=args.pins,
                batch_size=args.batch_size, progress=not args.quiet).write(args.out, int8=args.int8)
    print(out)
    return 0


def _index_build(args) -> int:
    from pinclip.index import HNSWConfig, build_index

    path = build_index(args.workdir, args.embeddings, HNSWConfig(args.m, args.ef_construction, args.ef_search))
    print(path)
    return 0


def _index_query(args) -> int:
    from pinclip.embeddings import open_embeddings
    from pinclip.index import CandidateIndex, index_dir

    emb = open_embeddings(args.workdir, args.embeddings)
    index = CandidateIndex.load(index_dir(args.workdir, emb))
    ids = index.related(emb, args.pin_id, args.k)
    for q, row in zip(args.pin_id, ids):
        print(json.dumps({"query_pin_id": q, "candidates": [int(x) for x in row if x >= 0]}))
    return 0


def _train(args) -> int:
    from pinclip.training.train import Trainer

    cfg = load_train_config([*args.settings, *given_fields(args)])
    with removed_on_error(Path(cfg.workdir) / "pinclip" / "runs" / cfg.run, args.restart):
        trainer = Trainer(cfg, progress=not args.quiet, restart=args.restart)
        log = trainer.fit()
    if trainer.env.is_main and log:
        print(json.dumps({"run": trainer.cfg.run, "steps": trainer.step, "final_loss": log[-1]["loss"],
                          "run_dir": str(trainer.run_dir)}))
    return 0


def _pretrain(args) -> int:
    from pinclip.training.pretrain import pretrain

    cfg = load_recipe(PretrainConfig, "pretrain", [*args.settings, *given_fields(args)],
                      defaults={"tower": args.tower})
    with removed_on_error(Path(cfg.workdir) / "pinclip" / "pretrain" / cfg.run, args.restart):
        report = pretrain(cfg, progress=not args.quiet, restart=args.restart)
    print(json.dumps({k: v for k, v in report.items() if k != "config"}))
    return 0


def _settings_command(sub, name: str, help: str, model, kind: str, skip=()) -> argparse.ArgumentParser:
    """A command whose settings are ``model``'s keys: ``[RECIPE] [key=value ...]``, ``--key`` options,
    ``--restart``; its ``--help`` lists every key with its type, default and help."""
    p = sub.add_parser(name, help=help, description=help, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=f"keys (key=value or --key; type, default):\n{fields_help(model, skip)}")
    p.add_argument("settings", nargs="*", metavar="RECIPE | key=value",
                   help=f"a recipe (pinclip/configs/{kind}_NAME.yaml) or YAML file, then key=value overrides")
    add_field_options(p, model, skip)
    p.add_argument("--restart", action="store_true", help="start the run over (a run resumes only with the "
                   f"settings it was started with, except {', '.join(EXTENDS)})")
    add_quiet_flag(p)
    return p


def _ablate(args) -> int:
    from pinclip.training.ablations import ABLATIONS, describe_check, run_ablations

    names = args.only.split(",") if args.only else list(ABLATIONS)
    out = run_ablations(args.workdir, args.reference, names, max_queries=args.max_queries,
                        distractors=args.distractors, progress=not args.quiet)
    print("\n".join(out["table"]))
    for k, checks in out["checks"].items():
        for c in checks:
            print(f"{k}: {'holds' if c['holds'] else 'FAILS'}: {describe_check(c)}")
    return 0


def _eval(args) -> int:
    from pinclip.training.evaluate import evaluate_run, format_table

    results = evaluate_run(args.workdir, args.run, max_queries=args.max_queries, distractors=args.distractors,
                           split=args.split, split_name=args.split_name, progress=not args.quiet)
    print(format_table(results))
    return 0


def _export_tower(args) -> int:
    from pinclip.loading import export_tower

    out = export_tower(args.workdir, args.run, args.out)
    print(json.dumps({"tower": str(out), "report": str(out.with_suffix(".json"))}))
    return 0


def _export_model(args) -> int:
    from pinclip.loading import export_model

    out = export_model(args.workdir, args.run, args.out)
    print(json.dumps({"model": str(out), "tokenizer": str(out.with_suffix(".tokenizer.json")),
                      "how": str(out.with_suffix(".json"))}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pinclip", description="PinCLIP embeddings: publish and candidate generation.")
    add_debug_flag(ap)
    sub = ap.add_subparsers(dest="command", required=True)
    _settings_command(sub, "train", "train PinCLIP", TrainConfig, "train").set_defaults(func=_train)
    for tower in TOWERS:
        _settings_command(sub, f"pretrain-{tower}", f"weakly-supervised multi-label pretraining of the {tower} "
                          "tower on the pins' annotations", PretrainConfig, "pretrain", skip=("tower",)
                          ).set_defaults(func=_pretrain, tower=tower)
    exports = (("export-tower", "write a pretrain run's tower as safetensors (e.g. into pinclip/towers/, for "
                "`pretrained_image=NAME`) with its report beside it", "the pretrain run, under W/pinclip/pretrain/",
                _export_tower),
               ("export-model", "write a trained PinCLIP run (weights, tokenizer, the losses' scales) as safetensors "
                "(e.g. into pinclip/towers/, for `pretrained=NAME`)", "the PinCLIP run, under W/pinclip/runs/",
                _export_model))
    for name, what, run, func in exports:
        x = sub.add_parser(name, help=what)
        x.add_argument("--workdir", default="pinwork")
        x.add_argument("--run", required=True, help=run)
        x.add_argument("--out", required=True, help="the .safetensors file to write")
        add_quiet_flag(x)
        x.set_defaults(func=func)
    e = sub.add_parser("eval", help="Recall@K on the five tasks (a catalog: image->text and image->image by "
                                    "board), held-out pins vs distractors -> eval.json")
    e.add_argument("--workdir", default="pinwork")
    e.add_argument("--run", required=True)
    e.add_argument("--max-queries", type=int, default=5000)
    e.add_argument("--distractors", type=int, default=50000, help="distractor pins (a catalog: evaluated pins)")
    e.add_argument("--split", default="", help="evaluate these pins: a Parquet/CSV file of pin_id, split, a column "
                   "of the pins table, or a list of pin ids (.txt, or a table of pin_id) (default: the run's split, "
                   "else its held-out pins)")
    e.add_argument("--split-name", default="validation", choices=("validation", "test"),
                   help="which rows of --split")
    add_quiet_flag(e)
    e.set_defaults(func=_eval)
    a = sub.add_parser("ablate", help="train and evaluate the baselines and ablations of a reference run "
                                      "-> pinclip/ablations.json")
    a.add_argument("--workdir", default="pinwork")
    a.add_argument("--reference", required=True, help="the trained, evaluated run the ablations change")
    a.add_argument("--only", default="", help="comma-separated subset of the ablations")
    a.add_argument("--max-queries", type=int, default=5000)
    a.add_argument("--distractors", type=int, default=50000)
    add_quiet_flag(a)
    a.set_defaults(func=_ablate)

    p = sub.add_parser("publish", help="publish 64-d int8 embeddings as a new version")
    p.add_argument("--workdir", default="pinwork")
    p.add_argument("--name", default=None,
                   help="the embeddings' name (default pinclip; required with --source parquet)")
    p.add_argument("--source", default="run", help="run: a trained PinCLIP run (--run); parquet: your own vectors "
                   "(--vectors); oracle: pinworld's true content latents; topic: the latent true topic alone (a "
                   "reference); topic_objects: the topic the pin's objects show (the floor)")
    p.add_argument("--run", default=None, help="the PinCLIP run to publish (with --source run)")
    p.add_argument("--pins", default=None, help="with --source run: a table of new pins (pins schema, image_uri "
                   "relative to its folder) to add to LATEST as an incremental version")
    p.add_argument("--vectors", default=None, help="with --source parquet: a Parquet file of pin_id and one vector "
                   "column (64 floats, or int8 codes)")
    p.add_argument("--as-of-day", type=int, default=None, help="only pins created before this day")
    p.add_argument("--since-day", type=int, default=None,
                   help="incremental: add the pins created since this day that LATEST lacks")
    p.add_argument("--shard", default=None, metavar="I/N", help="with --source run: embed only share I of N (a "
                   "contiguous range of the sorted pin ids) and stage it; `env` takes torchrun's $RANK/$WORLD_SIZE. "
                   "Run every share (any machines sharing the workdir), then --commit")
    p.add_argument("--commit", nargs="?", const="", default=None, metavar="KEY",
                   help="publish the version the --shard processes staged, once every share is complete (KEY: the "
                        "build each shard printed, when several are staged)")
    add_quiet_flag(p)
    p.set_defaults(func=_publish)
    m = sub.add_parser("embed", help="embed image files (and texts) or a table of new pins with a trained run: "
                                     "fusion, image and text vectors at every Matryoshka prefix -> Parquet")
    m.add_argument("--workdir", default="pinwork")
    m.add_argument("--run", required=True, help="the PinCLIP run, under W/pinclip/runs/")
    what = m.add_mutually_exclusive_group(required=True)
    what.add_argument("--images", nargs="+", metavar="FILE|DIR", help="image files, or folders of them (any "
                      "format PIL reads)")
    what.add_argument("--pins", metavar="TABLE.parquet", help="new pins (pins schema: pin_id, image_uri relative to "
                      "the table's folder, title/description/caption)")
    m.add_argument("--texts", default=None, help="with --images: .txt (one line per image, in order) or .csv/.jsonl "
                   "with file (relative to it) and text")
    m.add_argument("--out", required=True, help="the Parquet file to write")
    m.add_argument("--int8", action="store_true",
                   help="add <kind>_64_int8: the published 64-d, quantized as publish does")
    m.add_argument("--batch-size", type=int, default=256)
    add_quiet_flag(m)
    m.set_defaults(func=_embed)
    ix = sub.add_parser("index", help="HNSW candidate index over published fusion embeddings")
    ixs = ix.add_subparsers(dest="index_command", required=True)
    b = ixs.add_parser("build")
    b.add_argument("--workdir", default="pinwork")
    b.add_argument("--embeddings", default="pinclip", help="NAME[@VERSION], default LATEST")
    b.add_argument("--m", type=int, default=32)
    b.add_argument("--ef-construction", type=int, default=200)
    b.add_argument("--ef-search", type=int, default=64)
    add_quiet_flag(b)
    b.set_defaults(func=_index_build)
    q = ixs.add_parser("query", help="Related Pins candidates for query pins")
    q.add_argument("--workdir", default="pinwork")
    q.add_argument("--embeddings", default="pinclip")
    q.add_argument("--pin-id", type=int, nargs="+", required=True)
    q.add_argument("--k", type=int, default=10)
    add_quiet_flag(q)
    q.set_defaults(func=_index_query)
    return ap


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides after an option (`train tiny --run R steps=10`), which argparse does not take as the
    # settings positional once an option has ended it
    if extra and hasattr(args, "settings") and all("=" in x and not x.startswith("-") for x in extra):
        args.settings += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")

    def command() -> int:
        if getattr(args, "run", None) is not None:
            check_name(args.run, "--run")   # a run is a name under W/pinclip, never a path
        return args.func(args)

    return run_command(f"pinclip {args.command}", command, args.debug)


if __name__ == "__main__":
    sys.exit(main())
