"""Where files and batches live: in memory (the mock) or under a data directory (serve).

On disk (``root``)::

    files/<id>          the bytes of a file          files/<id>.json   its File object
    batches/<id>.json   a Batch object               work/<id>/        a processor's own
                                                                        state (a journal)

Paths are built only from ids this store made (`new_id`), looked up in its own tables;
a string from a request is never joined into a path. Metadata is written to a temporary
name and renamed over the old one, so a kill leaves the old version or the new one.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING, BinaryIO

import orjson

from ._errors import ApiError, not_found
from ._objects import BatchRecord, FileRecord, new_id, valid_id

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

__all__ = ["FileWriter", "Store"]


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(data))
    os.replace(tmp, path)


class FileWriter:
    """A file being written; `commit` makes it a File, `discard` forgets it."""

    def __init__(self, store: Store, record: FileRecord, limit: int | None) -> None:
        self._store = store
        self.record = record
        self._limit = limit
        self._chunks: list[bytes] = []
        self._handle: BinaryIO | None = None
        if store.root is not None:
            self._handle = store.part_path(record.id).open("wb")

    def write(self, data: bytes) -> None:
        """Append; an `ApiError` 413 once more than the store's upload limit came in."""
        self.record.bytes += len(data)
        if self._limit is not None and self.record.bytes > self._limit:
            self.discard()
            raise ApiError(
                413,
                f"The file is larger than the {self._limit:,}-byte limit of this server; "
                "split it into smaller files.",
                param="file",
                code="file_too_large",
            )
        if self._handle is not None:
            self._handle.write(data)
        else:
            self._chunks.append(data)

    def commit(self) -> FileRecord:
        self._store.add(self.record, b"".join(self._chunks), self._handle)
        self._handle = None
        self._chunks = []
        return self.record

    def discard(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            with contextlib.suppress(OSError):
                self._store.part_path(self.record.id).unlink()
        self._chunks = []


class Store:
    """Files and batches by id; ``root=None`` keeps everything in memory."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root
        self.files: dict[str, FileRecord] = {}
        self.batches: dict[str, BatchRecord] = {}
        self._content: dict[str, bytes] = {}
        if root is not None:
            for sub in ("files", "batches", "work"):
                (root / sub).mkdir(parents=True, exist_ok=True)
            self._load(root)

    def _load(self, root: Path) -> None:
        for meta in (root / "files").glob("*.json"):
            record = FileRecord.from_dict(orjson.loads(meta.read_bytes()))
            if valid_id(record.id) and (root / "files" / record.id).is_file():
                self.files[record.id] = record
        for part in (root / "files").glob("*.part"):
            part.unlink()  # an upload a kill cut short
        found = [
            BatchRecord.from_dict(orjson.loads(meta.read_bytes()))
            for meta in (root / "batches").glob("*.json")
        ]
        for batch in sorted(found, key=lambda b: b.created_at):  # the list's order
            if valid_id(batch.id):
                self.batches[batch.id] = batch

    # -- paths (ids only) ---------------------------------------------------

    def _path(self, file_id: str) -> Path:
        assert self.root is not None
        assert valid_id(file_id)
        return self.root / "files" / file_id

    def part_path(self, file_id: str) -> Path:
        return self._path(file_id).with_name(file_id + ".part")

    def work_dir(self, batch_id: str) -> Path | None:
        """A directory a processor may keep its state in, or None in memory."""
        if self.root is None:
            return None
        if batch_id not in self.batches:
            raise not_found("Batch", batch_id)
        path = self.root / "work" / batch_id
        path.mkdir(exist_ok=True)
        return path

    # -- files --------------------------------------------------------------

    def new_file(self, *, filename: str, purpose: str, limit: int | None = None) -> FileWriter:
        record = FileRecord(
            id=new_id("file-"),
            bytes=0,
            created_at=int(time.time()),
            filename=filename,
            purpose=purpose,
        )
        return FileWriter(self, record, limit)

    def add(self, record: FileRecord, content: bytes, handle: BinaryIO | None) -> None:
        if self.root is None:
            self._content[record.id] = content
        else:
            assert handle is not None
            handle.close()
            os.replace(self.part_path(record.id), self._path(record.id))
            _write_json(self._path(record.id).with_name(record.id + ".json"), record.to_dict())
        self.files[record.id] = record

    def file(self, file_id: str) -> FileRecord:
        record = self.files.get(file_id)
        if record is None:
            raise not_found("File", file_id)
        return record

    def content_path(self, file_id: str) -> Path | None:
        """The file's bytes on disk, or None when the store is in memory."""
        self.file(file_id)
        return None if self.root is None else self._path(file_id)

    def content(self, file_id: str) -> bytes:
        path = self.content_path(file_id)
        return self._content[file_id] if path is None else path.read_bytes()

    def iter_lines(self, file_id: str) -> Iterator[bytes]:
        """The file's lines (with their newline), streamed from disk when on disk."""
        path = self.content_path(file_id)
        if path is None:
            yield from self._content[file_id].splitlines(keepends=True)
            return
        with path.open("rb") as handle:
            yield from handle

    def delete_file(self, file_id: str) -> FileRecord:
        record = self.file(file_id)
        del self.files[file_id]
        self._content.pop(file_id, None)
        if self.root is not None:
            for path in (self._path(file_id), self._path(file_id).with_name(file_id + ".json")):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return record

    # -- batches ------------------------------------------------------------

    def batch(self, batch_id: str) -> BatchRecord:
        record = self.batches.get(batch_id)
        if record is None:
            raise not_found("Batch", batch_id)
        return record

    def save_batch(self, batch: BatchRecord) -> None:
        """Keep the batch (and, on disk, write it through)."""
        self.batches[batch.id] = batch
        if self.root is not None:
            _write_json(self.root / "batches" / f"{batch.id}.json", batch.to_dict())
