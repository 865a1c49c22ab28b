"""`pinworld` command line: generate, import, validate, summary, catalog, export-oracle."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pinlift.core.cli import add_debug_flag, add_quiet_flag, run_command
from pinworld.config import PRESETS, preset


def _generate(args) -> int:
    from pinworld.generate import generate_world

    workdir = Path(args.workdir)
    meta = workdir / "world" / "world.json"
    if meta.exists() and not args.force:
        m = json.loads(meta.read_text())
        size = args.image_size or PRESETS[args.preset].image_size
        if (m.get("preset"), m.get("seed"), m.get("config", {}).get("image_size")) == (args.preset, args.seed, size):
            print(f"pinworld: {workdir / 'world'} already holds preset {args.preset!r} seed {args.seed}; skipping")
            return 0
        print(f"pinworld: {workdir / 'world'} holds preset {m.get('preset')!r} seed {m.get('seed')} "
              f"image size {m.get('config', {}).get('image_size')}; "
              "use --force to replace it", file=sys.stderr)
        return 2
    summary = generate_world(preset(args.preset, args.seed, **_overrides(args)), workdir, force=True,
                             progress=not args.quiet)
    print(json.dumps({k: summary[k] for k in ("preset", "seed", "generator_version", "counts", "seconds")}, indent=2))
    return 0


def _overrides(args) -> dict:
    out = {}
    if args.image_size:
        out["image_size"] = args.image_size
    return out


def _import_openclipart(args) -> int:
    from pinworld.importers import import_openclipart

    counts = import_openclipart(args.workdir, args.source, args.deb or (), args.force, progress=not args.quiet,
                                max_side=args.max_side)
    print(json.dumps({"workdir": args.workdir, "counts": counts}, indent=2))
    return 0


def _import_folder(args) -> int:
    from pinworld.importers import import_folder

    counts = import_folder(args.folder, args.workdir, args.texts, args.force, progress=not args.quiet,
                           max_side=args.max_side)
    print(json.dumps({"workdir": args.workdir, "counts": counts}, indent=2))
    return 0


def _validate(args) -> int:
    from pinworld.validate import validate_workdir

    problems = validate_workdir(args.workdir, check_images=not args.skip_images)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 2
    print(f"pinworld validate: {args.workdir}: all tables valid")
    return 0


def _summary(args) -> int:
    from pinworld.summary import world_summary

    print(world_summary(args.workdir))
    return 0


def _catalog(args) -> int:
    from pinworld.catalog import build_catalog

    print(build_catalog(args.workdir))
    return 0


def _export_oracle(args) -> int:
    from pinworld.oracle import export_oracle
    from pinworld.world import World

    print(export_oracle(World(args.workdir), args.out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pinworld", description="The simulated Pinterest behind pinlift.")
    add_debug_flag(ap)
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate a world: tables, images, organic logs")
    g.add_argument("--workdir", default="pinwork")
    g.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--image-size", type=int, default=None, help="image side in pixels (default 64)")
    g.add_argument("--force", action="store_true", help="replace an existing world")
    add_quiet_flag(g)
    g.set_defaults(func=_generate)
    i = sub.add_parser("import", help="import a catalog of images and texts (no users or logs)")
    kinds = i.add_subparsers(dest="source_kind", required=True)
    oc = kinds.add_parser("openclipart", help="the Open Clip Art Library (Debian openclipart-png and -svg)")
    where = oc.add_mutually_exclusive_group()
    where.add_argument("--from", dest="source", default=None,
                       help="a folder holding the library's png/ and svg/ (default: /usr/share/openclipart)")
    where.add_argument("--deb", action="append", help="openclipart-png and openclipart-svg .deb files (twice)")
    oc.set_defaults(func=_import_openclipart)
    fo = kinds.add_parser("folder", help="every image under a folder; its category is its folder's path")
    fo.add_argument("folder")
    fo.add_argument("--texts", default=None,
                    help="sidecar CSV or JSON lines: file, title, description, keywords, category, language")
    fo.set_defaults(func=_import_folder)
    for k in (oc, fo):
        k.add_argument("--workdir", default="pinwork")
        k.add_argument("--force", action="store_true", help="replace an existing world/ (and remove logs/)")
        k.add_argument("--max-side", type=int, default=None, metavar="N",
                       help="store each image as a PNG whose longest side is at most N px, transparency kept "
                            "(default: the files copied unchanged)")
        add_quiet_flag(k)
    v = sub.add_parser("validate", help="check user-supplied tables against the schema")
    v.add_argument("--workdir", default="pinwork")
    v.add_argument("--skip-images", action="store_true", help="do not check that image files exist")
    add_quiet_flag(v)
    v.set_defaults(func=_validate)
    s = sub.add_parser("summary", help="print a world's summary")
    s.add_argument("--workdir", default="pinwork")
    add_quiet_flag(s)
    s.set_defaults(func=_summary)
    c = sub.add_parser("catalog", help="(re)build catalog.duckdb")
    c.add_argument("--workdir", default="pinwork")
    add_quiet_flag(c)
    c.set_defaults(func=_catalog)
    o = sub.add_parser("export-oracle", help="write the oracle features of every pin to Parquet")
    o.add_argument("--workdir", default="pinwork")
    o.add_argument("--out", required=True)
    add_quiet_flag(o)
    o.set_defaults(func=_export_oracle)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prog = " ".join(filter(None, ("pinworld", args.command, getattr(args, "source_kind", None))))
    return run_command(prog, lambda: args.func(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
