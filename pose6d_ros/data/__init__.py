"""Data: BOP I/O, crops, augmentation, the synthetic source domain, the simulated real domain
(``lm-lite``, ``tless-lite``), bag import and the target crops of training and evaluation."""
