"""Target-domain BatchNorm statistics (ours, not the paper's): before the self-supervised loop,
re-estimate every BatchNorm's running mean and variance on the unlabeled real crops.

The synthetic-trained Φ normalises with statistics of rendered crops; on real crops its activations
are shifted and scaled differently (light, colour, blur, sensor). Re-estimating the statistics on
the target domain (AdaBN; Li et al., 2016) needs no labels and no gradient. The recipes keep BN
frozen during the loop (``init.freeze_bn``), so the adapted statistics are the ones the loop and the
final model use.
"""

from __future__ import annotations

import itertools
from typing import Iterable, Tuple

import torch

Batch = Tuple[torch.Tensor, torch.Tensor]


@torch.no_grad()
def adapt_batchnorm(model: torch.nn.Module, batches: Iterable[Batch]) -> int:
    """Replace the running statistics of every BatchNorm of ``model`` by their average over
    ``batches`` of ``(images, object_index)``; returns the number of images seen.

    Each batch's statistics get the same weight (``momentum=None``, PyTorch's cumulative average),
    so with equal batch sizes the mean is the mean over all images. The rest of the model runs in
    eval mode, and ``model``'s train/eval state is restored afterwards.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    it = iter(batches)
    first = next(it, None)
    if first is None:  # checked before the statistics are reset, so the model is left as it was
        raise ValueError("adapt_batchnorm: no batches (the unlabeled target split is empty)")
    was_training = model.training
    momenta = [m.momentum for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    seen = 0
    try:
        for images, object_index in itertools.chain([first], it):
            model(images, object_index)
            seen += int(images.shape[0])
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)
    return seen
