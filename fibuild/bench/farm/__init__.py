"""Benchmark farms: the same (definition, solution, workloads) items as the local runner, run
on the workers of a Dask cluster (:mod:`.driver` plans and records, :mod:`.task` runs on a
worker, :mod:`.dask_engine` talks to Dask, :mod:`.bundle` carries the workspace files).
Importing this package imports no engine."""
