"""Throughput benchmark of tap-cordial-activity and target-lytics against stock singer-sdk."""
