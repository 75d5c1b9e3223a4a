"""A minimal stock singer-sdk target for Lytics: the benchmark's baseline for the target."""
