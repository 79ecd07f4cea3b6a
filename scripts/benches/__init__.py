"""The benchmarks behind ``scripts/bench.py``: one module per subcommand (cloak, protection,
models, library, web) and what they share (the photos they cloak, the compute limit, the machine)."""
