"""Reading an export: the rows the checkpoint lists as a pyarrow table or pandas data frame, and
the CSV views written beside the parquet parts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from medmeter.export.checkpoint import PARTS_DIR, Part, read_checkpoint, verify_part
from medmeter.export.events import INTERACTION_SCHEMA
from medmeter.fileio import write_atomic


def read_parts(
    parts_dir: Path, parts: Sequence[Part], columns: Sequence[str] | None = None, where: pc.Expression | None = None
) -> pa.Table:
    schema = INTERACTION_SCHEMA if columns is None else pa.schema([INTERACTION_SCHEMA.field(c) for c in columns])
    if not parts:
        return schema.empty_table()
    for part in parts:
        verify_part(parts_dir, part)
    tables = [
        pq.read_table(
            parts_dir / p.file,
            schema=INTERACTION_SCHEMA,
            columns=None if columns is None else list(columns),
            filters=where,
        )
        for p in parts
    ]
    return pa.concat_tables(tables).combine_chunks()


def read_export(
    out_dir: str | Path, columns: Sequence[str] | None = None, where: pc.Expression | None = None
) -> pa.Table:
    """The exported rows as a pyarrow Table: exactly those the checkpoint lists (never an orphan part),
    in chain order; optionally only some `columns` and the rows matching a pyarrow expression `where`."""
    folder = Path(out_dir)
    state = read_checkpoint(folder)
    return read_parts(folder / PARTS_DIR, state.parts, columns, where)


def read_export_frame(out_dir: str | Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The exported rows as a pandas DataFrame (the analyst's entry point; see `read_export`)."""
    return read_export(out_dir, columns).to_pandas()


def _csv_ready(table: pa.Table) -> pa.Table:
    """Timestamps as ISO-8601 UTC text (2025-01-31T12:00:00Z); everything else as is."""
    columns = []
    for column, schema_field in zip(table.columns, table.schema, strict=True):
        if pa.types.is_timestamp(schema_field.type):
            # Formatted once per distinct value: every row of a block shares its timestamp.
            encoded = column.combine_chunks().dictionary_encode()
            text = pc.strftime(encoded.dictionary, format="%Y-%m-%dT%H:%M:%SZ")
            column = text.take(encoded.indices)
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


_CSV_OPTIONS = pa_csv.WriteOptions(quoting_style="needed")


def write_csv_atomic(table: pa.Table, path: Path) -> None:
    """A small table as CSV (empty cells for nulls), written atomically."""
    sink = pa.BufferOutputStream()
    pa_csv.write_csv(_csv_ready(table), sink, _CSV_OPTIONS)
    write_atomic(path, sink.getvalue().to_pybytes())


def write_parts_csv(parts_dir: Path, parts: Sequence[Part], path: Path) -> None:
    """All parts as one CSV, streamed part by part (memory stays at one part), then renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    schema = _csv_ready(INTERACTION_SCHEMA.empty_table()).schema
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa_csv.CSVWriter(sink, schema, write_options=_CSV_OPTIONS) as writer:
            for part in parts:
                verify_part(parts_dir, part)
                writer.write_table(_csv_ready(pq.read_table(parts_dir / part.file, schema=INTERACTION_SCHEMA)))
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
