"""Call records: every call that reached a function leaves one (see
:class:`olactors._records.CallRecord`), kept in ``<worker>/records.db``.

* :class:`RecordStore` (:mod:`._store`): the SQLite database (WAL), its
  retention and its queries; synchronous, run in worker threads.
* :func:`run_recorder` / :class:`RecorderRef` (:mod:`._recorder`): the actor
  that writes records in batches off the request path.
* :class:`RecentIds` (:mod:`._ids`): request ids, unique per function,
  decided in memory.
"""

from ._ids import RecentIds, new_request_id, valid_request_id
from ._recorder import RecorderCounts, RecorderRef, RecorderSettings, run_recorder
from ._store import MAX_LIST, RecordNotFound, RecordStore

__all__ = [
    "MAX_LIST",
    "RecentIds",
    "RecordNotFound",
    "RecordStore",
    "RecorderCounts",
    "RecorderRef",
    "RecorderSettings",
    "new_request_id",
    "run_recorder",
    "valid_request_id",
]
