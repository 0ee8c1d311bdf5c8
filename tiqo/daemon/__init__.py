"""The daemon: owns all state and heavy work. Only this package imports engines and heavy libraries."""
