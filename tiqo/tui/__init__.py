"""``tiqo dash``: the terminal dashboard (textual). Imported only when the dashboard runs, never by the CLI."""
