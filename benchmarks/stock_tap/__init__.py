"""A minimal stock singer-sdk tap for Cordial activity: the benchmark's baseline for the tap."""
