"""tap-cordial-activity: placeholder replaced by the tap's implementation."""
