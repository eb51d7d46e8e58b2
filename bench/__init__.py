"""Benchmarks: streamkit side by side with raw ASGI, Starlette, sse-starlette and FastAPI.

``python -m bench`` runs every measurement against every implementation on both hypercorn
workers and prints a markdown table (``--json`` writes the figures too). Each server runs in a
process of its own (``python -m bench.server``), so its CPU time and memory are read from
``/proc`` and nothing the client does is charged to it. See ``docs/benchmarks.md``.
"""
