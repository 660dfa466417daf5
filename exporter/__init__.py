"""alpaca-exporter: a Prometheus exporter for an Alpaca market-data feed with a Yahoo Finance fallback."""

__version__ = "0.1.0"
