"""A statistical shape model (point distribution model) of the landmark configuration, and where it puts each landmark
given the others.

Fitted once on the training split's landmarks (Cootes et al., "Active shape models", CVIU 1995): the shapes, in mm,
are aligned by generalised Procrustes analysis (translation, rotation, scale), and a PCA keeps the components that
explain ``variance`` of what remains; the discarded variance becomes isotropic noise (probabilistic PCA, Tipping and
Bishop 1999: scikit-learn's ``PCA.get_covariance``). That gives one Gaussian over the aligned shape, and from it, for
each landmark k, the Gaussian of k given the other landmarks: its mean is a linear regression on them. Its 2x2
covariance is measured on the training shapes by the procedure used at decoding time (below). Both are stored as
buffers, so a saved model carries its shape model.

At decoding time the current estimates of an image are brought into the model's frame by a similarity fitted to the
mean shape on every landmark but k (leave-one-out: a wrong landmark k does not move its own frame), and a position of
k is judged by its squared Mahalanobis distance from the conditional mean.

Hand-written, briefly, where libraries do not fit: a 2-D similarity is z -> a z + b over the complex numbers, and
its (weighted) least-squares fit is closed form (three sums), batched over images and left-out landmarks;
``scipy.spatial.procrustes`` aligns only two shapes, standardises both and allows reflections, and scikit-image's
``SimilarityTransform`` is one shape at a time on the CPU. The regressions are two lines of linear algebra (numpy) on
scikit-learn's principal components.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["MIN_SHAPES", "ShapeModel", "apply_similarity", "procrustes_align", "similarity_fit"]

#: complete training shapes needed to fit a shape model (fewer give a covariance of noise)
MIN_SHAPES = 5


def similarity_fit(src: torch.Tensor, dst: torch.Tensor, weight: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The similarity (rotation, isotropic scale, translation; no reflection) taking points ``src`` (..., N, 2) onto
    ``dst`` (..., N, 2) in weighted least squares, ``weight`` (..., N) (default 1).

    Returns ``(a, src_centre, dst_centre)``, (..., 2) each: ``a`` = (re, im) of the complex factor, so that the
    transform is z -> a (z - src_centre) + dst_centre (:func:`apply_similarity`). With complex points s, d centred
    on their weighted means, a = sum(w conj(s) d) / sum(w |s|^2).
    """
    w = torch.ones(src.shape[:-1], dtype=src.dtype, device=src.device) if weight is None else weight.to(src.dtype)
    total = w.sum(-1, keepdim=True)
    src_centre = (w[..., None] * src).sum(-2) / total
    dst_centre = (w[..., None] * dst).sum(-2) / total
    s, d = src - src_centre[..., None, :], dst - dst_centre[..., None, :]
    norm = (w * s.pow(2).sum(-1)).sum(-1)
    re = (w * (s[..., 0] * d[..., 0] + s[..., 1] * d[..., 1])).sum(-1) / norm
    im = (w * (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0])).sum(-1) / norm
    return torch.stack([re, im], -1), src_centre, dst_centre


def apply_similarity(points: torch.Tensor, a: torch.Tensor, src_centre: torch.Tensor, dst_centre: torch.Tensor
                     ) -> torch.Tensor:
    """z -> a (z - src_centre) + dst_centre for points (..., N, 2) and parameters (..., 2) from
    :func:`similarity_fit`."""
    z = points - src_centre[..., None, :]
    re, im = a[..., None, 0], a[..., None, 1]
    out = torch.stack([re * z[..., 0] - im * z[..., 1], im * z[..., 0] + re * z[..., 1]], -1)
    return out + dst_centre[..., None, :]


def procrustes_align(shapes: torch.Tensor, iterations: int = 100, tol: float = 1e-10) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
    """Generalised Procrustes analysis of shapes (N, L, 2): (aligned shapes (N, L, 2), mean shape (L, 2)); the mean
    is centred at 0 with unit norm (centroid size 1), every shape is similarity-aligned to it."""
    mean = shapes[0] - shapes[0].mean(0)
    mean = mean / mean.norm()
    for _ in range(iterations):
        aligned = apply_similarity(shapes, *similarity_fit(shapes, mean.expand_as(shapes)))
        new = aligned.mean(0)
        new = new - new.mean(0)
        new = new / new.norm()
        done = (new - mean).norm() < tol
        mean = new
        if done:
            break
    return apply_similarity(shapes, *similarity_fit(shapes, mean.expand_as(shapes))), mean


class ShapeModel(nn.Module):
    """The shape of L landmarks: its mean, and each landmark's Gaussian given the others (see the module).

    Buffers (in the model's state dict): ``mean`` (L, 2) the Procrustes mean, centroid size 1; ``regress``
    (L, 2, L, 2), landmark k's conditional mean = mean[k] + sum_j regress[k, :, j, :] @ (y_j - mean[j]) (zero for
    j = k); ``precision`` (L, 2, 2), the inverse of k's conditional covariance; ``frame`` (2,) the mm that a
    normalised coordinate 1 spans in x and y (the training images' median field of view), so that shapes are
    isotropic. NaN until :meth:`fit`: a model saved without a fitted shape model loads as not fitted.
    """

    def __init__(self, num_landmarks: int) -> None:
        super().__init__()
        if num_landmarks < 3:
            raise ValueError(f"a shape model needs 3 or more landmarks, got {num_landmarks}")
        n = num_landmarks
        self.register_buffer("mean", torch.full((n, 2), float("nan")))
        self.register_buffer("regress", torch.full((n, 2, n, 2), float("nan")))
        self.register_buffer("precision", torch.full((n, 2, 2), float("nan")))
        self.register_buffer("frame", torch.full((2,), float("nan")))
        self.register_load_state_dict_pre_hook(_keep_unfitted_when_absent)

    @property
    def fitted(self) -> bool:
        return bool(torch.isfinite(self.mean).all())

    def fit(self, shapes_mm: np.ndarray, frame_mm: np.ndarray, variance: float) -> dict[str, Any]:
        """Fit on complete training shapes (N, L, 2) in mm; ``frame_mm`` (2,) as the ``frame`` buffer; ``variance``
        in (0, 1): the share of the aligned shapes' variance the principal components keep. Returns what was fitted
        (for the run's ``task_info``)."""
        n, num, _ = shapes_mm.shape
        if num != self.mean.shape[0]:
            raise ValueError(f"shapes have {num} landmarks, the model {self.mean.shape[0]}")
        if n < MIN_SHAPES:
            raise ValueError(f"{n} complete training shapes; a shape model needs {MIN_SHAPES} or more")
        aligned, mean = procrustes_align(torch.as_tensor(shapes_mm, dtype=torch.float64))
        cov, kept, share = _shape_covariance(aligned.reshape(n, 2 * num).numpy(), variance)
        regress = np.zeros((num, 2, num, 2))
        for k in range(num):
            own = [2 * k, 2 * k + 1]
            rest = [i for i in range(2 * num) if i not in own]
            coef = np.linalg.solve(cov[np.ix_(rest, rest)], cov[np.ix_(rest, own)]).T  # (2, 2L-2)
            regress[k] = np.insert(coef, [2 * k, 2 * k], 0.0, axis=1).reshape(2, num, 2)
        for name, value in (("mean", mean.numpy()), ("regress", regress),
                            ("frame", np.asarray(frame_mm, dtype=np.float64))):
            getattr(self, name).copy_(torch.as_tensor(value, dtype=torch.float32))
        # each landmark's spread about its prediction, measured by the decoding's own procedure (leave-one-out
        # alignment, then the regression) on the training shapes, rather than taken from the model's conditional
        # covariance: the test-time frame is aligned on L - 1 landmarks, not on all L as in the Procrustes fit
        train = torch.as_tensor(shapes_mm / np.asarray(frame_mm), dtype=torch.float32)
        r = self.residuals(train, train[:, :, None])[:, :, 0].double()  # (N, L, 2)
        spread = torch.einsum("nkc,nkd->kcd", r, r) / n  # (L, 2, 2) about 0: a bias counts as spread
        spread += 1e-9 * torch.eye(2, dtype=spread.dtype) * spread.diagonal(dim1=1, dim2=2).sum(-1).mean()
        self.precision.copy_(torch.linalg.inv(spread).float())
        # in mm for the report: the model frame has centroid size 1, the training shapes their own
        centroid_mm = float(np.sqrt(((shapes_mm - shapes_mm.mean(1, keepdims=True)) ** 2).sum((1, 2))).mean())
        return {"shapes": int(n), "components": kept, "variance_kept": share,
                "residual_sd_mm": [round(float(v) * centroid_mm, 3)
                                   for v in spread.diagonal(dim1=1, dim2=2).mean(-1).sqrt()]}

    def residuals(self, points: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Candidate positions of each landmark k minus where the shape puts k given the other landmarks of
        ``points``, in the model's frame (centroid size 1).

        Args:
            points: (B, L, 2) the current estimates, normalised (x, y).
            candidates: (B, L, K, 2) positions of each landmark to judge, normalised.

        Returns:
            (B, L, K, 2).
        """
        if not torch.isfinite(self.mean).all() or not torch.isfinite(self.frame).all():
            raise RuntimeError("the shape model is not fitted (a model trained before it existed, or on too few "
                               "complete shapes)")
        b, n = points.shape[:2]
        p = points.float() * self.frame
        others = 1.0 - torch.eye(n, device=p.device)  # row k: every landmark but k
        src = p[:, None].expand(b, n, n, 2)  # (B, k, j, 2)
        a, src_centre, dst_centre = similarity_fit(src, self.mean.expand(b, n, n, 2), others.expand(b, n, n))
        deviation = (apply_similarity(src, a, src_centre, dst_centre) - self.mean) * others[..., None]
        predicted = self.mean + torch.einsum("kcjd,bkjd->bkc", self.regress, deviation)  # (B, L, 2)
        moved = apply_similarity(candidates.float() * self.frame, a, src_centre, dst_centre)  # (B, L, K, 2)
        return moved - predicted[:, :, None]

    def mahalanobis2(self, points: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """(B, L, K): the squared Mahalanobis distance of each candidate position of landmark k (``candidates``
        (B, L, K, 2), normalised) from where the shape puts k given the other landmarks of ``points`` (B, L, 2).

        With ``candidates = points[:, :, None]``: how far each estimate is from the shape's prediction, in squared
        standard deviations of the training shapes' own (about 2 on average for a training shape).
        """
        if not self.fitted:
            raise RuntimeError("the shape model is not fitted (a model trained before it existed, or on too few "
                               "complete shapes)")
        r = self.residuals(points, candidates)
        return torch.einsum("bkmc,kcd,bkmd->bkm", r, self.precision, r)


def _shape_covariance(flat: np.ndarray, variance: float) -> tuple[np.ndarray, int, float]:
    """The covariance (2L, 2L) of Procrustes-aligned shapes (N, 2L) under probabilistic PCA: the components that keep
    ``variance`` of the shape variance, plus isotropic noise; and how many components, and what share, were kept.

    The noise is the mean variance of the discarded components that hold shape, not of all discarded ones as in
    scikit-learn's ``noise_variance_``: alignment removes four directions (translation, rotation, scale) whose zero
    variance would shrink the noise, and the near-singular covariance would then regress a landmark on the others
    through those directions, which a leave-one-out alignment does not reproduce.
    """
    from sklearn.decomposition import PCA

    n, dim = flat.shape
    pca = PCA(svd_solver="full").fit(flat)
    shape_dims = max(1, min(n - 1, dim - 4))  # directions a set of aligned shapes can vary in
    eig = pca.explained_variance_[:shape_dims]
    share = np.cumsum(eig) / eig.sum()
    kept = min(int(np.searchsorted(share, variance) + 1), shape_dims)
    noise = eig[kept:].mean() if kept < shape_dims else 1e-3 * eig[-1]
    components = pca.components_[:kept]
    cov = components.T @ np.diag(eig[:kept]) @ components + noise * np.eye(dim)
    return cov, kept, float(share[kept - 1])


def _keep_unfitted_when_absent(module: ShapeModel, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """A ``model.pt`` saved before the shape model existed has none of its buffers: load it as not fitted (the rest
    of the model is unchanged) rather than refuse it; a partial set is still an error."""
    names = [prefix + name for name, _ in module.named_buffers(recurse=False)]
    if not any(name in state_dict for name in names):
        for name, buffer in zip(names, module.buffers(recurse=False)):
            state_dict[name] = buffer.detach().clone()
