"""What the daemon tells an operator about itself: Prometheus gauges read from its live state."""
