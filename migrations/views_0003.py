"""The views as revision 0003 created them: frozen text, never to be edited.

Migration 0003 creates these views (v_models gained source_uri and license;
v_layers and v_layer_metrics gained source_dtype);
the revision that next changes the views puts
them back on its downgrade. Generated once from the catalogue of
:mod:`filterdb.warehouse.views` as it stood at 0003; column docs stay there, only the column
names are kept here. ``tests/test_migrations.py`` pins a hash of every revision's view SQL,
so an edit here fails the tests.
"""

from __future__ import annotations

from filterdb.warehouse.views import View


def _view(name: str, columns: str, sql: str) -> View:
    """A frozen view: its name, its column names (whitespace-separated) and its SQL."""
    return View(
        name=name,
        doc=f"{name} as revision 0003 created it.",
        columns=dict.fromkeys(columns.split(), ""),
        sql=sql,
    )


V_MODELS = _view(
    "v_models",
    """model_id model_name source architecture family n_parameters training_dataset
    pretraining_dataset training_type robust threat_model eps eps_text extra_data
    clean_acc robust_acc corruptions_acc venue paper_url n_layers n_filters
    n_unreached_convs depth_method checkpoint_sha256 ingested_at source_uri license""",
    """
SELECT m.model_id, m.name AS model_name, m.source, m.architecture, m.family,
    m.n_parameters, t.training_dataset, t.pretraining_dataset, t.training_type,
    (t.training_type = 'adversarial') AS robust, t.threat_model, t.eps, t.eps_text,
    t.extra_data, t.clean_acc, t.robust_acc, t.corruptions_acc, t.venue, t.paper_url,
    CAST(COALESCE(c.n_layers, 0) AS BIGINT) AS n_layers,
    CAST(COALESCE(c.n_filters, 0) AS BIGINT) AS n_filters,
    m.n_unreached_convs, c.depth_method, m.checkpoint_sha256, m.ingested_at,
    m.source_uri, m.license
FROM model m
LEFT JOIN training t ON t.model_id = m.model_id
LEFT JOIN (
    SELECT model_id, COUNT(*) AS n_layers, SUM(n_filters) AS n_filters,
        MIN(depth_method) AS depth_method
    FROM layer GROUP BY model_id
) c ON c.model_id = m.model_id
""",  # noqa: E501  (frozen text: its lines stay as they were)
)

V_LAYERS = _view(
    "v_layers",
    """layer_id model_id model_name layer_name conv_index graph_depth conv_depth
    conv_depth_norm depth_bin depth_bin_index depth_method in_channels out_channels
    groups stride dilation n_filters max_abs source_dtype architecture training_dataset
    training_type robust threat_model eps clean_acc robust_acc""",
    """
SELECT l.layer_id, l.model_id, m.name AS model_name, l.name AS layer_name,
    l.conv_index, l.graph_depth, l.conv_depth, l.conv_depth_norm,
    CASE CASE WHEN l.conv_depth = 0 THEN 0 ELSE CAST(CEIL(10.0 * l.conv_depth / m.max_conv_depth) AS INTEGER) END WHEN 0 THEN 'first' WHEN 1 THEN '(0.0, 0.1]' WHEN 2 THEN '(0.1, 0.2]' WHEN 3 THEN '(0.2, 0.3]' WHEN 4 THEN '(0.3, 0.4]' WHEN 5 THEN '(0.4, 0.5]' WHEN 6 THEN '(0.5, 0.6]' WHEN 7 THEN '(0.6, 0.7]' WHEN 8 THEN '(0.7, 0.8]' WHEN 9 THEN '(0.8, 0.9]' WHEN 10 THEN '(0.9, 1.0]' END AS depth_bin,
    CASE WHEN l.conv_depth = 0 THEN 0 ELSE CAST(CEIL(10.0 * l.conv_depth / m.max_conv_depth) AS INTEGER) END AS depth_bin_index,
    l.depth_method, l.in_channels, l.out_channels, l.groups, l.stride, l.dilation,
    l.n_filters, l.max_abs, l.source_dtype, m.architecture, t.training_dataset, t.training_type,
    (t.training_type = 'adversarial') AS robust, t.threat_model, t.eps, t.clean_acc,
    t.robust_acc
FROM layer l
JOIN model m ON m.model_id = l.model_id
LEFT JOIN training t ON t.model_id = l.model_id
""",  # noqa: E501  (frozen text: its lines stay as they were)
)

V_FILTERS = _view(
    "v_filters",
    """model_id layer_id model_name layer_name conv_depth conv_depth_norm depth_bin
    filter_index out_channel in_channel w0 w1 w2 w3 w4 w5 w6 w7 w8 robust
    training_dataset training_type architecture""",
    """
SELECT f.model_id, f.layer_id, m.name AS model_name, l.name AS layer_name, l.conv_depth,
    l.conv_depth_norm, CASE CASE WHEN l.conv_depth = 0 THEN 0 ELSE CAST(CEIL(10.0 * l.conv_depth / m.max_conv_depth) AS INTEGER) END WHEN 0 THEN 'first' WHEN 1 THEN '(0.0, 0.1]' WHEN 2 THEN '(0.1, 0.2]' WHEN 3 THEN '(0.2, 0.3]' WHEN 4 THEN '(0.3, 0.4]' WHEN 5 THEN '(0.4, 0.5]' WHEN 6 THEN '(0.5, 0.6]' WHEN 7 THEN '(0.6, 0.7]' WHEN 8 THEN '(0.7, 0.8]' WHEN 9 THEN '(0.8, 0.9]' WHEN 10 THEN '(0.9, 1.0]' END AS depth_bin, f.filter_index, f.out_channel,
    f.in_channel, f.w0, f.w1, f.w2, f.w3, f.w4, f.w5, f.w6, f.w7, f.w8,
    (t.training_type = 'adversarial') AS robust, t.training_dataset, t.training_type,
    m.architecture
FROM filter f
JOIN layer l ON l.layer_id = f.layer_id
JOIN model m ON m.model_id = f.model_id
LEFT JOIN training t ON t.model_id = f.model_id
""",  # noqa: E501  (frozen text: its lines stay as they were)
)

V_LAYER_METRICS = _view(
    "v_layer_metrics",
    """layer_id model_id model_name layer_name conv_index graph_depth conv_depth
    conv_depth_norm depth_bin depth_bin_index depth_method in_channels out_channels
    groups stride dilation n_filters max_abs source_dtype architecture training_dataset
    training_type robust threat_model eps clean_acc robust_acc sparsity variance_entropy
    variance_entropy_norm variance_entropy_clean variance_entropy_clean_norm
    variance_entropy_scaled variance_entropy_scaled_norm orthogonality l1 l2""",
    """
SELECT l.layer_id, l.model_id, m.name AS model_name, l.name AS layer_name,
    l.conv_index, l.graph_depth, l.conv_depth, l.conv_depth_norm,
    CASE CASE WHEN l.conv_depth = 0 THEN 0 ELSE CAST(CEIL(10.0 * l.conv_depth / m.max_conv_depth) AS INTEGER) END WHEN 0 THEN 'first' WHEN 1 THEN '(0.0, 0.1]' WHEN 2 THEN '(0.1, 0.2]' WHEN 3 THEN '(0.2, 0.3]' WHEN 4 THEN '(0.3, 0.4]' WHEN 5 THEN '(0.4, 0.5]' WHEN 6 THEN '(0.5, 0.6]' WHEN 7 THEN '(0.6, 0.7]' WHEN 8 THEN '(0.7, 0.8]' WHEN 9 THEN '(0.8, 0.9]' WHEN 10 THEN '(0.9, 1.0]' END AS depth_bin,
    CASE WHEN l.conv_depth = 0 THEN 0 ELSE CAST(CEIL(10.0 * l.conv_depth / m.max_conv_depth) AS INTEGER) END AS depth_bin_index,
    l.depth_method, l.in_channels, l.out_channels, l.groups, l.stride, l.dilation,
    l.n_filters, l.max_abs, l.source_dtype, m.architecture, t.training_dataset, t.training_type,
    (t.training_type = 'adversarial') AS robust, t.threat_model, t.eps, t.clean_acc,
    t.robust_acc,
    c.sparsity, c.variance_entropy, c.variance_entropy_norm, c.variance_entropy_clean, c.variance_entropy_clean_norm, c.variance_entropy_scaled, c.variance_entropy_scaled_norm, c.orthogonality, c.l1, c.l2
FROM layer l
JOIN model m ON m.model_id = l.model_id
LEFT JOIN training t ON t.model_id = l.model_id
LEFT JOIN (SELECT layer_id, MAX(value) FILTER (WHERE metric = 'sparsity') AS sparsity,
    MAX(value) FILTER (WHERE metric = 'variance_entropy') AS variance_entropy,
    MAX(value) FILTER (WHERE metric = 'variance_entropy_norm') AS variance_entropy_norm,
    MAX(value) FILTER (WHERE metric = 'variance_entropy_clean') AS variance_entropy_clean,
    MAX(value) FILTER (WHERE metric = 'variance_entropy_clean_norm') AS variance_entropy_clean_norm,
    MAX(value) FILTER (WHERE metric = 'variance_entropy_scaled') AS variance_entropy_scaled,
    MAX(value) FILTER (WHERE metric = 'variance_entropy_scaled_norm') AS variance_entropy_scaled_norm,
    MAX(value) FILTER (WHERE metric = 'orthogonality') AS orthogonality,
    MAX(value) FILTER (WHERE metric = 'l1') AS l1,
    MAX(value) FILTER (WHERE metric = 'l2') AS l2
    FROM metric_cache
    WHERE params IN ('', 'eps=0.01')
    GROUP BY layer_id) c ON c.layer_id = l.layer_id
""",  # noqa: E501  (frozen text: its lines stay as they were)
)

VIEWS: tuple[View, ...] = (V_MODELS, V_LAYERS, V_FILTERS, V_LAYER_METRICS)
