"""Fresh corpora: the generator run again with other seeds, so that every identity is new.

A model trained on ``data/corpus`` (seed s) is evaluated on corpora made with seeds ``s + 1001``,
``s + 1002``, ... by the same generator with the same actor count and emotion filter: people it has
never seen, voices and faces drawn from the same population. ``avemo compare --fresh-corpora N`` and
the generalisation tables of docs/unseen_people.md use them.
"""

from __future__ import annotations

import json
from pathlib import Path

from avemo.training.synthetic.corpus import generate_corpus

FRESH_SEED_OFFSET = 1001  # fresh corpus i (0-based) of a corpus made with seed s has seed s + FRESH_SEED_OFFSET + i


def corpus_meta(data_root: str | Path) -> dict:
    """``corpus.json`` of a generated corpus; ValueError (saying what is expected) for any other folder."""
    path = Path(data_root) / "corpus.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{data_root} has no readable corpus.json ({e.__class__.__name__}): fresh corpora need a corpus made by "
            "`avemo corpus` (its seed, actor count and emotions are what a fresh corpus repeats with new people)"
        ) from None
    if "seed" not in meta or "n_actors" not in meta:
        raise ValueError(f"{path} lacks seed / n_actors: not written by `avemo corpus`")
    return meta


def fresh_seeds(train_seed: int, n: int) -> list[int]:
    """Seeds of the ``n`` fresh corpora of a corpus made with ``train_seed``."""
    return [int(train_seed) + FRESH_SEED_OFFSET + i for i in range(n)]


def fresh_corpora(data_root: str | Path, n: int, out: str | Path, jobs: int = 2, progress: bool = True) -> list[Path]:
    """Generate (or reuse: existing clips are kept) ``n`` fresh corpora of ``data_root`` under ``out``.

    Returns ``[out / "seed-<s>" for each fresh seed]``. Same actor count, emotion filter and clip plan
    as ``data_root``'s corpus.json; only the seed (hence every voice, face and clip nuisance) differs.
    """
    meta = corpus_meta(data_root)
    filters = meta.get("filters", {})
    roots = []
    for seed in fresh_seeds(meta["seed"], n):
        root = Path(out) / f"seed-{seed}"
        generate_corpus(
            root,
            n_actors=int(meta["n_actors"]),
            seed=seed,
            emotions=filters.get("emotions"),
            statements=tuple(filters.get("statements", (1, 2))),
            repetitions=tuple(filters.get("repetitions", (1, 2))),
            intensities=tuple(filters.get("intensities", (1, 2))),
            jobs=jobs,
            progress=progress,
        )
        roots.append(root)
    return roots
