"""Database layer of lenscat (installed as ``lenscat.db``).

- :mod:`lenscat.db.server`  the embedded PostgreSQL server and URL resolution;
- :mod:`lenscat.db.session` the engine and sessions (the one module that owns them);
- :mod:`lenscat.db.models`  the SQLAlchemy table definitions (the schema itself is made by alembic);
- :mod:`lenscat.db.migrate` running alembic from Python and the CLI.
"""
