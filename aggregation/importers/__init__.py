"""Importers: recordings made by the systems Harvest replaces, and Minari datasets, into Harvest
datasets (`harvest import KIND PATH... --out DIR`). One module per kind:

* `driving_session` (seed 002): session folders of `metadata/expert_data.csv` and screenshots;
* `sequence_json` (seed 003): `sequence_*.json` files, one episode each;
* `minari_dataset`: a Minari dataset by id;
* `offline_rl`: D4RL-style HDF5 or NPZ files;
* `parquet_files`: loose Parquet files Harvest wrote.

Bad input is named and left out, the rest is imported (`result`):

* a file that cannot be read, or holds nothing of the format: one line naming it, the file left out;
* a CSV row or JSON frame with a missing or non-numeric value (an empty cell, `abc`, `null`):
  one line naming the file, the line or frame, the column and what was expected; the row left
  out (its episode goes on from the row before to the row after, as for a missing screenshot);
* the same file named twice, or episodes another file already gave (`import parquet`; the rule
  `harvest edit merge` applies): the repeat is named and left out;
* NaN and ±inf values are numbers a recording can hold: they are kept, and each file and column
  holding them is flagged (`warnings`, and the log) with the count, so nothing is dropped behind
  the user's back and nothing is passed on unsaid.

When nothing importable remains, `ImportFormatError` says why (every problem, one line) and no
dataset is written. Nothing is half-written: the dataset appears only once all of it is written.
"""

from harvest.aggregation.importers.driving_session import import_driving_sessions
from harvest.aggregation.importers.minari_dataset import import_minari
from harvest.aggregation.importers.offline_rl import import_offline_rl
from harvest.aggregation.importers.parquet_files import import_parquet
from harvest.aggregation.importers.result import (
    ImportFormatError,
    ImportLog,
    ImportResult,
    flag_nonfinite,
    unique_files,
)
from harvest.aggregation.importers.sequence_json import import_json_sequences

__all__ = [
    "ImportFormatError",
    "ImportLog",
    "ImportResult",
    "flag_nonfinite",
    "import_driving_sessions",
    "import_json_sequences",
    "import_minari",
    "import_offline_rl",
    "import_parquet",
    "unique_files",
]
