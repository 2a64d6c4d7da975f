"""Does a pair's augmentation help a classifier of your classes? The evaluation protocol behind
``progaug evaluate`` and ``benchmarks/downstream.py``.

- :mod:`~progaug.evaluation.protocol`: subsets, budget from the learning curve, tuning on validation.
- :mod:`~progaug.evaluation.arms`: the arms (ways of training the classifier) and their names.
- :mod:`~progaug.evaluation.training`: one classifier's training (epochs over the real tiles, replacement).
- :mod:`~progaug.evaluation.classifiers`: the small CNN and the small ViT, both from scratch.
- :mod:`~progaug.evaluation.stats`: 95 % t-intervals and paired differences.
- :mod:`~progaug.evaluation.stain`: HED stain jitter, the colour baseline.
- :mod:`~progaug.evaluation.generated`: the pair's generated sets, optionally kept on disk.
- :mod:`~progaug.evaluation.pipeline`: pair + splits -> result; :mod:`~progaug.evaluation.report`: JSON, Markdown, PNG.
"""
