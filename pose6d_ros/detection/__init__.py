"""The 2D detector: a torchvision Faster R-CNN trained on synthetic scenes of the registered objects.

``model`` builds it (no downloads) and saves/loads checkpoints; ``scenes`` renders training scenes
with our rasterizer; ``train`` is the ``train_detector`` command; ``infer`` runs it on images and
measures box recall on a BOP split.
"""
