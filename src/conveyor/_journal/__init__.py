"""_journal: the SQLite journal (the run's source of truth), its error translation, and
the sink that writes each key's result to the journal and the output file exactly once.
Imports _base and _core only."""
