"""The ranking arms: what content feature each adds to the IDs, registered once.

An arm trains the same ranker with one published embedding as its content feature (or none). Registering an
arm adds it to ``ranking.compare`` (``--arms``) and, with a ``floor``, to the cold-start claims a content
embedding is checked against (``ranking.claims``). An embedding that a registered source publishes by name
(``pinlift.core.registry``) is published by ``ranking.compare`` when the arm needs it. Any published vectors
make an arm of their own on the command line: ``NAME=EMBEDDING[@VERSION]`` (``parse_arm``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pinlift.core.errors import input_error
from pinlift.core.runs import NAME_RE


@dataclass(frozen=True)
class Arm:
    name: str
    embeddings: str | None          # the published embedding it reads (None: IDs only, content inputs empty)
    shuffled: bool = False          # a control: the embedding permuted across pins
    floor: str | None = None        # the claim a content embedding makes against it on cold content
    reference: bool = False         # that comparison is reported with its figures and never judged


ARMS: dict[str, Arm] = {}


def register_arm(arm: Arm) -> Arm:
    """Add ``arm`` (by its name) to the arms every ranking comparison knows."""
    ARMS[arm.name] = arm
    return arm


register_arm(Arm("ids", None))
register_arm(Arm("pinclip", "pinclip"))
register_arm(Arm("pinclip_shuffled", "pinclip", shuffled=True))
# The floor a content embedding must beat is the topic one-hot of the topic the pin's objects show, all a reader
# of the content could know of it; pinworld's latent true topic is a reference: no reader of the content observes
# it (it differs from the objects' topic on ~2% of pins), and it is the main term of Related relevance
register_arm(Arm("topic", "topic", floor="against the latent true topic one-hot", reference=True))
register_arm(Arm("topic_objects", "topic_objects", floor="beats the topic one-hot its objects show"))
register_arm(Arm("oracle", "oracle"))


def parse_arm(spec: str) -> Arm:
    """A registered arm by name, or ``NAME=EMBEDDING[@VERSION]``: an arm (named NAME, no registered one's
    name) whose content feature is that published embedding."""
    name, eq, ref = spec.partition("=")
    if not eq:
        if spec not in ARMS:
            raise input_error("--arms", spec, f"a registered arm ({', '.join(ARMS)}) or NAME=EMBEDDING[@VERSION]",
                              "no such arm")
        return ARMS[spec]
    embedding, _, version = ref.partition("@")
    if name in ARMS or not NAME_RE.match(name) or not NAME_RE.match(embedding) or (version and not NAME_RE.match(version)):
        raise input_error("--arms", spec, "NAME=EMBEDDING[@VERSION], NAME a name no registered arm has "
                          f"({', '.join(ARMS)})", repr(spec))
    return Arm(name, ref)
