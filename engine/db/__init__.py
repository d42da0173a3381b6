"""The database stage: the pool (and DatabaseUnavailable), the listener's own connection, the SQL
files and migrations, the delivery queue, endpoint writes and the delivery-log reads. Nothing here
knows about HTTP, the admin server or the CLI."""
