"""``misar-webhooks``: the command line, the demo and the embedded Postgres it can start."""
