"""Alembic migrations of the hub database (run by ``Database.migrate``)."""
