"""Kiln's stores: the job store (SQL) and the artifact store (files; S3 later). No FastAPI here."""
