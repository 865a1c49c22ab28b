"""Surface, kind and action names are literals in exactly one module, pinlift.core.vocabulary.

Every other module reads them from there (the constants) or from the workspace (its declared surfaces), so
a team whose surfaces are called ``search`` and ``shop`` changes no code. ``ads`` is also the name of a
table: ``pinlift.core.schema`` names it once, as ``ADS_TABLE``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from pinlift.core.vocabulary import EVENTS, PINWORLD, SURFACE_KINDS

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pinworld", "pinclip", "ranking", "abtest", "pinlift")
NAMES = set(PINWORLD.names) | set(SURFACE_KINDS) | set(EVENTS)
HOME = "pinlift/core/vocabulary.py"
TABLE_NAME = ("pinlift/core/schema.py", "ads")


def literal_uses(root: Path = ROOT) -> dict[str, list[str]]:
    """module path -> the vocabulary names it writes as string literals (with their line)."""
    found: dict[str, list[str]] = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            for node in ast.walk(ast.parse(path.read_text(), rel)):
                if isinstance(node, ast.Constant) and node.value in NAMES:
                    found.setdefault(rel, []).append(f"{node.value!r} (line {node.lineno})")
    return found


def test_names_are_literals_in_one_module():
    uses = literal_uses()
    assert {u.split(" ")[0] for u in uses[HOME]} == {repr(n) for n in NAMES}
    schema = uses.pop(TABLE_NAME[0], [])
    assert len(schema) == 1 and schema[0].startswith(repr(TABLE_NAME[1])), schema
    uses.pop(HOME, None)
    assert not uses, "vocabulary names written outside pinlift.core.vocabulary:\n" + "\n".join(
        f"{m}: {', '.join(v)}" for m, v in uses.items())


def test_the_check_finds_a_planted_literal(tmp_path):
    (tmp_path / "ranking").mkdir()
    (tmp_path / "ranking" / "x.py").write_text('SURFACE = "homefeed"\n')
    assert literal_uses(tmp_path) == {"ranking/x.py": ["'homefeed' (line 1)"]}
