"""``python -m benchmarks.stock_target --config FILE``."""

from benchmarks.stock_target.target import StockLyticsTarget

StockLyticsTarget.cli()
