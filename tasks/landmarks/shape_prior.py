"""The shape step of the global stage: a landmark whose heatmap peak lands on the wrong structure is moved to the mode
of its heatmap that agrees with the other landmarks.

On images from another acquisition a landmark's heatmap can have a second mode on a similar-looking structure, and
the arg-max (hence the decoded point, and the refinement crop around it) may pick it: the error is then centimetres,
not millimetres. The other landmarks usually still know where it should be. So, after the global stage decodes every
map at its arg-max and before the refinement crops:

1. each map's modes: the arg-max (the current estimate) and up to ``modes - 1`` other local maxima holding at least
   ``min_mass`` of its softmax (:func:`~tasks.landmarks.decoding.heatmap_modes`);
2. each landmark's distance from where the shape model puts it given the others (leave-one-out,
   :meth:`~tasks.landmarks.shape_model.ShapeModel.mahalanobis2`);
3. the landmark farthest beyond ``threshold`` (a Mahalanobis distance) takes the mode with the best score
   log(mass) - d^2 / 2 (its heatmap's evidence plus the shape's Gaussian log-likelihood), which may be the current one;
   it is then settled, the distances are computed again with its new position, and the next one is judged, until no
   unsettled landmark is beyond ``threshold``. The farthest first: a wrong landmark also pulls the others'
   predictions a little, and it is the one to fix before judging them.

A landmark whose map has one mode cannot move, and a landmark within ``threshold`` is never moved. Confidences are
left as they are (each map's arg-max peak mass: how sharp the map is), so the image flags (``low_confidence``, the
mirror check) mean the same with and without the step.
"""
from __future__ import annotations

import torch
from torch import nn

from tasks.landmarks.decoding import heatmap_modes
from tasks.landmarks.shape_model import ShapeModel
from transfer.config.io import ConfigError

__all__ = ["ShapePrior"]


class ShapePrior(nn.Module):
    """Heatmap logits (B, L, h, w) and their arg-max decoding -> corrected coordinates and which landmarks moved.

    Args:
        num_landmarks: L.
        radius: the decoding window's half-width in heatmap cells (``decode_radius``); modes are more than 2 radius
            apart.
        modes: modes considered per map, the arg-max's included (>= 2).
        threshold: Mahalanobis distance from the shape's prediction beyond which a landmark is judged.
        min_mass: the least softmax mass (in its window) of a mode that may be chosen instead of the arg-max.
    """

    def __init__(self, num_landmarks: int, *, radius: int, modes: int = 3, threshold: float = 3.0,
                 min_mass: float = 0.05) -> None:
        super().__init__()
        if modes < 2:
            raise ValueError(f"task.landmarks.shape_modes must be >= 2 (the arg-max and another), got {modes}")
        self.shape = ShapeModel(num_landmarks)
        self.radius, self.modes, self.threshold, self.min_mass = radius, modes, threshold, min_mass

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, coords: torch.Tensor, confidence: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, h, w) logits, (B, L, 2) normalised coordinates and (B, L) peak masses of the arg-max decoding ->
        the coordinates after the shape step (B, L, 2; those not moved keep their values exactly) and (B, L) bool,
        the landmarks it moved."""
        if not self.shape.fitted:
            raise ConfigError("task.landmarks.shape_prior: this model has no fitted shape model (trained before the "
                              "shape step existed, or with fewer than 3 landmarks or 5 complete training shapes)")
        with torch.autocast(device_type=logits.device.type, enabled=False):  # the shape algebra in float32
            alt_coords, alt_mass, found = heatmap_modes(logits, self.modes - 1, self.radius)
            chosen = self._choose(coords.float(), confidence.float(), alt_coords,
                                  alt_mass.clamp_min(1e-30).log().masked_fill(~found | (alt_mass < self.min_mass),
                                                                              float("-inf")))
        moved = chosen > 0
        b, n = moved.shape
        picked = alt_coords.gather(2, (chosen - 1).clamp_min(0)[..., None, None].expand(b, n, 1, 2))[:, :, 0]
        return torch.where(moved[..., None], picked.to(coords.dtype), coords), moved

    def _choose(self, current: torch.Tensor, current_mass: torch.Tensor, alt_coords: torch.Tensor,
                alt_log_mass: torch.Tensor) -> torch.Tensor:
        """(B, L) the candidate each landmark ends on: 0 its arg-max, j > 0 the j-th other mode (``alt_log_mass`` is
        -inf for a mode that may not be chosen)."""
        b, n = current.shape[:2]
        rows = torch.arange(b, device=current.device)
        # candidate 0 is the current estimate; log(mass) is the heatmap's evidence for each candidate
        log_mass = torch.cat([current_mass.clamp_min(1e-30).log()[..., None], alt_log_mass], dim=-1)
        chosen = torch.zeros(b, n, dtype=torch.long, device=current.device)
        settled = torch.zeros(b, n, dtype=torch.bool, device=current.device)
        points = current.clone()
        for _ in range(n):
            candidates = torch.cat([points[:, :, None], alt_coords], dim=2)  # (B, L, 1 + K, 2)
            d2 = self.shape.mahalanobis2(points, candidates)  # (B, L, 1 + K)
            far = d2[..., 0].masked_fill(settled, float("-inf"))
            worst, k = far.max(dim=1)
            judged = worst > self.threshold ** 2  # (B,): images with an unsettled landmark beyond the threshold
            if not bool(judged.any()):
                break
            score = log_mass[rows, k] - 0.5 * d2[rows, k]  # (B, 1 + K): heatmap evidence + shape log-likelihood
            best = torch.where(judged, score.argmax(-1), 0)  # 0: it stays on its arg-max
            chosen[rows, k] = torch.where(judged, best, chosen[rows, k])
            points[rows, k] = torch.where(judged[:, None], candidates[rows, k, best], points[rows, k])
            settled[rows, k] |= judged
        return chosen
