"""Metrics over stored filters (SPEC section 5).

- :mod:`filterdb.metrics.registry`: the one list of layer metrics (plain data);
- :mod:`filterdb.metrics.layer`, :mod:`filterdb.metrics.pca`, :mod:`filterdb.metrics.drift`:
  pure kernels on weights and filter arrays, importing no database code;
- :mod:`filterdb.metrics.cache`: compute what is missing over the warehouse, and cache it.
"""
