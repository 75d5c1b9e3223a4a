"""``python -m benchmarks.stock_tap --config FILE``."""

from benchmarks.stock_tap.tap import StockCordialTap

StockCordialTap.cli()
