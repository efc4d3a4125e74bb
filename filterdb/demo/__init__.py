"""The offline demo: two small CNNs trained on scikit-learn's digits, one adversarially,
ingested and compared end to end (:func:`filterdb.demo.run.run_demo`).
"""
