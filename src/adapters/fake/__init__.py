"""In-memory adapters of every port, with fault injection, for tests and the demo.

Each one is proven against the same contract suite as the production adapter of its port
(``tests/contract/``), so what the fakes do is what the real world does.
"""
