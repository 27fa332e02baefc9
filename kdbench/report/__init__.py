"""Reporting from the results store: tables (``tables``), figures (``figures``), Table 1's
model sizes (``complexity``) and the text formats they render to (``render``)."""
