"""Training: one run end to end (``runner``), the step and epoch loop (``trainer``), the
train-once teacher and its feature cache (``teacher_cache``), device and precision
(``runtime``) and the evaluation metrics (``metrics``)."""
