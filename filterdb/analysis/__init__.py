"""Analysis over the warehouse: groups of filters, robust/normal pairing, PCA and drift of
groups, and the statistics of the robust-vs-normal comparison.
"""
