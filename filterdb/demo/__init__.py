"""The offline demo: two small CNNs trained on scikit-learn's digits, one adversarially,
ingested and compared end to end (:func:`filterdb.demo.run.run_demo`).
"""

# How long the demo trains (here, so that `filterdb demo --help` needs no torch).
# 30 epochs: PGD-20 accuracy 83-89% for the PGD model vs 24-46% for the normal one, clean
# accuracy 97-99% for both (seeds 0-3; the whole demo took 40 s on a busy 2-core machine).
DEFAULT_EPOCHS = 30
# Every step runs in seconds (what CI runs); the models stay near chance accuracy.
QUICK_EPOCHS = 2
