"""The request ledger and audit trail, budgets and their alerts, and the event bus."""
