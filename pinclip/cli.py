"""`pinclip` command line: train, pretrain-image|text, ablate, publish embeddings, build/query the candidate index."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from pinclip.settings import EXTENDS, TOWERS, PretrainConfig, TrainConfig, load_recipe, load_train_config
from pinlift.core.cli import add_debug_flag, add_quiet_flag, run_command
from pinlift.core.config import add_field_options, fields_help, given_fields
from pinlift.core.runs import check_name, removed_on_error

# Each command imports what it runs when it runs: the index commands and publishing an oracle load no torch,
# and publishing a run loads the library alone, never the training program (pinclip.training); the settings
# of the training commands (pinclip.settings, for --help) load neither.


def _publish(args) -> int:
    from pinworld.oracle import ORACLE_KINDS

    if args.source not in ("run", *ORACLE_KINDS):
        raise ValueError(f"pinclip publish: --source {args.source!r}: expected one of run, {', '.join(ORACLE_KINDS)}")
    if args.source == "run" and not args.run:
        raise ValueError("pinclip publish: --source run: expected --run RUN (a trained run under pinclip/runs/)")
    bar = tqdm(desc=f"publish {args.name}", unit="part", disable=args.quiet)

    def on_part(i, n):
        bar.total = n
        bar.update(1)

    if args.source == "run":
        from pinclip.run_source import publish_run

        manifest = publish_run(args.workdir, args.run, args.name, as_of_day=args.as_of_day, since_day=args.since_day,
                               progress=not args.quiet, on_part=on_part)
    else:
        from pinclip.oracle_source import publish_oracle

        manifest = publish_oracle(args.workdir, args.name, as_of_day=args.as_of_day, since_day=args.since_day,
                                  kind=args.source, on_part=on_part)
    bar.close()
    from pinworld.catalog import build_catalog

    build_catalog(args.workdir)   # the new version appears in the catalog's `embeddings` view
    print(json.dumps({k: manifest[k] for k in ("name", "version", "parent", "rows", "kinds", "as_of_day")}))
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
                           progress=not args.quiet)
    print(format_table(results))
    return 0


def _export_tower(args) -> int:
    from pinclip.loading import export_tower

    out = export_tower(args.workdir, args.run, args.out)
    print(json.dumps({"tower": str(out), "report": str(out.with_suffix(".json"))}))
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
    x = sub.add_parser("export-tower", help="write a pretrain run's tower as safetensors (e.g. into pinclip/towers/, "
                                            "for `pretrained_image=NAME`) with its report beside it")
    x.add_argument("--workdir", default="pinwork")
    x.add_argument("--run", required=True, help="the pretrain run, under W/pinclip/pretrain/")
    x.add_argument("--out", required=True, help="the .safetensors file to write")
    add_quiet_flag(x)
    x.set_defaults(func=_export_tower)
    e = sub.add_parser("eval", help="Recall@K on the five tasks, held-out pins vs distractors -> eval.json")
    e.add_argument("--workdir", default="pinwork")
    e.add_argument("--run", required=True)
    e.add_argument("--max-queries", type=int, default=5000)
    e.add_argument("--distractors", type=int, default=50000)
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
    p.add_argument("--name", default="pinclip")
    p.add_argument("--source", default="run", help="run: a trained PinCLIP run (--run); oracle: pinworld's true "
                   "content latents; topic: the latent true topic alone (a reference); topic_objects: the topic the pin's "
                   "objects show (the floor)")
    p.add_argument("--run", default=None, help="the PinCLIP run to publish (with --source run)")
    p.add_argument("--as-of-day", type=int, default=None, help="only pins created before this day")
    p.add_argument("--since-day", type=int, default=None,
                   help="incremental: add the pins created since this day that LATEST lacks")
    add_quiet_flag(p)
    p.set_defaults(func=_publish)
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
    args = build_parser().parse_args(argv)

    def command() -> int:
        if getattr(args, "run", None) is not None:
            check_name(args.run, "--run")   # a run is a name under W/pinclip, never a path
        return args.func(args)

    return run_command(f"pinclip {args.command}", command, args.debug)


if __name__ == "__main__":
    sys.exit(main())
