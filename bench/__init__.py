"""Detour's benchmark harness: the same client and origin, direct and through each proxy.

Run it with ``make bench`` (or ``make bench-quick``); ``bench/README.md`` says what each number
means. The package is split by idea: ``peers/`` (one module per proxy, its config rendered by a
pure function), ``scenarios.py`` (the rows and which metrics apply to them), ``load.py`` (the
load generators and the parsers of what they print), ``measure.py`` (/proc CPU, RSS and machine
noise), ``lab.py`` (namespaces, origin, processes), ``report.py`` (summary, JSON, Markdown),
``chart.py`` (PNG, run by the benchmark environment's Python) and ``run.py`` (the command).
"""
