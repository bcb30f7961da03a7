"""`farebox sim`: a simulated upstream speaking OpenAI (chat, legacy completions,
embeddings), Anthropic Messages and Gemini, for tests, demos and benchmarks.

See docs/simulator.md for how to run it and the behaviour-control reference.
"""

from farebox.sim.server import create_app, run, start

__all__ = ["create_app", "run", "start"]
