"""Pure math on the observed score vectors: the paper's reduction (PCA to 10, then t-SNE to 2) and numbers
that say how well the points cluster by label, so that "it clusters" is measured, not only seen."""
from __future__ import annotations

import numpy as np

PCA_DIMS = 10  # the paper: PCA to 10, then t-SNE to 2
NEIGHBOURS = 10


def reduce(points: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(the PCA-10 points, the t-SNE 2-D points) of ``points`` (n, dims); deterministic for a seed."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n, dims = points.shape
    pca = PCA(n_components=min(PCA_DIMS, dims, n), random_state=seed).fit_transform(points)
    perplexity = float(min(30, max(2, (n - 1) // 3)))
    flat = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(pca)
    return pca, flat


def neighbour_agreement(points: np.ndarray, labels: np.ndarray, k: int = NEIGHBOURS) -> float:
    """The mean share of each point's k nearest neighbours (itself left out) that carry its label; a
    label-blind arrangement scores about the labels' chance rate (sum of squared label shares)."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(points) - 1)
    _, index = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points)
    neighbours = index[:, 1:]  # the first is the point itself (or a duplicate of it)
    return float((labels[neighbours] == labels[:, None]).mean())


def silhouette(points: np.ndarray, labels: np.ndarray, seed: int = 0) -> float | None:
    """The silhouette of the labels as clusters (-1..1; 0: no structure), on at most 5,000 points; None with
    fewer than two labels."""
    from sklearn.metrics import silhouette_score

    if len(set(labels.tolist())) < 2:
        return None
    size = min(len(points), 5000)
    return float(silhouette_score(points, labels, sample_size=size, random_state=seed))


def chance_agreement(labels: np.ndarray) -> float:
    """What neighbour agreement a label-blind arrangement expects: the sum of squared label shares."""
    _, counts = np.unique(labels, return_counts=True)
    shares = counts / counts.sum()
    return float((shares**2).sum())


def quality(raw: np.ndarray, flat: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, float | None]:
    """Silhouette and neighbour agreement of the labels in the raw score space and in the 2-D picture."""
    return {
        "silhouette_raw": silhouette(raw, labels, seed),
        "silhouette_2d": silhouette(flat, labels, seed),
        "neighbours_raw": neighbour_agreement(raw, labels),
        "neighbours_2d": neighbour_agreement(flat, labels),
        "neighbours_chance": chance_agreement(labels),
    }
