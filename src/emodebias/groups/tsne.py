"""The IDI paper's Fig. 4: t-SNE of speaker embeddings, colour = cluster, marker = gender.

t-SNE settings are the paper's (PAPERS.md §3.12): 2 components, PCA init, Barnes-Hut,
perplexity 40, learning rate 'auto', n_iter_without_progress 300, random_state 42. Perplexity
must stay below n/3 for t-SNE to be defined, so it is clipped for small n (recorded).
Drawn with matplotlib's Agg canvas directly (no pyplot state, works headless).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emodebias.groups.assignment import GroupAssignment

MARKERS = {"F": "o", "M": "^"}
OTHER_MARKER = "x"


def tsne_coords(embeddings: np.ndarray, perplexity: float = 40.0, seed: int = 42) -> np.ndarray:
    """[N, 2] t-SNE coordinates with the paper's settings (perplexity clipped below n/3)."""
    from sklearn.manifold import TSNE

    x = np.asarray(embeddings, dtype=np.float32)
    if len(x) < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {len(x)}")
    perplexity = min(float(perplexity), (len(x) - 1) / 3.0)
    tsne = TSNE(n_components=2, init="pca", method="barnes_hut", perplexity=perplexity,
                learning_rate="auto", n_iter_without_progress=300, random_state=seed)
    return tsne.fit_transform(x)


def _colours(n: int) -> list:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](i / max(n - 1, 1)) for i in range(n)]


def tsne_figure(embeddings: np.ndarray, assignment: GroupAssignment, out_path: str | Path,
                genders: np.ndarray | list | None = None, perplexity: float = 40.0,
                seed: int = 42, title: str | None = None,
                coords: np.ndarray | None = None) -> Path:
    """Save the PNG; rows of `embeddings`/`genders` follow `assignment.utt_ids`.

    Points with group -1 are grey. Pass precomputed `coords` to redraw without re-running t-SNE.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    xy = tsne_coords(embeddings, perplexity, seed) if coords is None else np.asarray(coords)
    ids = assignment.ids
    genders = np.full(len(ids), None, dtype=object) if genders is None else \
        np.asarray(genders, dtype=object)
    if len(xy) != len(ids) or len(genders) != len(ids):
        raise ValueError(f"{len(xy)} points, {len(genders)} genders, {len(ids)} group ids")
    colours = _colours(assignment.n_groups)
    fig = Figure(figsize=(7, 6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    marker_of = np.array([MARKERS.get(g, OTHER_MARKER) for g in genders], dtype=object)
    for marker in sorted(set(marker_of.tolist())):
        m = marker_of == marker
        colour = [colours[g] if g >= 0 else (0.6, 0.6, 0.6, 1.0) for g in ids[m]]
        ax.scatter(xy[m, 0], xy[m, 1], c=colour, marker=marker, s=18, linewidths=0.6,
                   edgecolors="none" if marker != OTHER_MARKER else None, alpha=0.85)
    handles = [Line2D([], [], ls="", marker=MARKERS[g], color="k", label=g)
               for g in MARKERS if (genders == g).any()]
    if assignment.n_groups <= 16:
        handles += [Line2D([], [], ls="", marker="s", color=colours[g], label=name)
                    for g, name in enumerate(assignment.names)]
    if handles:
        ax.legend(handles=handles, fontsize=7, ncol=2, loc="best", frameon=False)
    ax.set_title(title or f"t-SNE of embeddings ({assignment.source})", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, format="png", bbox_inches="tight")
    return out_path
