"""_core: the engine: admission under every limit (pure policies for limits, retry and
the breaker, driven by an injected clock), attempts, options, the output half of a run,
the progress snapshot and the report model. Imports _base only; knows no HTTP, files,
terminal, CLI or cluster."""
