"""_base: the vocabulary every layer shares: result types (`Result`, `Status`, `Usage`,
`ErrorInfo`), the whole `ConveyorError` tree, clocks and the version. Imports nothing
else of conveyor's (type-only imports under TYPE_CHECKING aside)."""
