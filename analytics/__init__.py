"""Looking at what the factory did: SQL over the archive (DuckDB here, Athena in the cloud) and the report.

The views are defined once in `factory_core.archive_views`; `archive_db` runs them on DuckDB over a
local folder or an S3-compatible archive, `athena` runs SQL through Athena, and `report` draws a
self-contained HTML report from either.
"""
