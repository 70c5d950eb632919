"""What several test folders need: starting processes and fresh PostgreSQL databases.

``tests`` is on ``sys.path`` (``pythonpath`` in ``pyproject.toml``), so tests import
``from _support.processes import start`` and ``from _support.postgres import fresh_database``.
"""
