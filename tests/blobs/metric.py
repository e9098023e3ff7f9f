"""Detection of centre points: recall, precision and F1 at a radius (higher is better, all three)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class CentreDetection(Metric):
    """Greedy one-to-one matching of predicted to true points within ``radius`` input pixels.

    States are counts summed across processes. ``compute()`` returns ``recall`` (matched / true),
    ``precision`` (matched / predicted) and ``f1``; NaN when undefined (no true or no predicted point).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, radius: float = 3.0, **kwargs):
        super().__init__(**kwargs)
        self.radius = float(radius)
        self.add_state("matched", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("true", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("predicted", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: list[Tensor], targets: list[Tensor]) -> None:
        for pred, target in zip(preds, targets):
            self.true += len(target)
            self.predicted += len(pred)
            if not len(pred) or not len(target):
                continue
            dist = torch.cdist(pred.double().cpu(), target.double().cpu())  # [P, T]
            pairs = sorted((float(dist[i, j]), i, j) for i in range(len(pred)) for j in range(len(target)))
            used_p, used_t = set(), set()
            for d, i, j in pairs:
                if d > self.radius:
                    break
                if i not in used_p and j not in used_t:
                    used_p.add(i)
                    used_t.add(j)
            self.matched += len(used_p)

    def compute(self) -> dict[str, Tensor]:
        matched = self.matched.double()
        recall = matched / self.true.double()
        precision = matched / self.predicted.double()
        return {"recall": recall, "precision": precision, "f1": 2 * matched / (self.true + self.predicted).double()}
