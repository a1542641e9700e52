"""Store: the prediction log and feedback in one SQL database, through SQLAlchemy Core.

SQLite (a file, WAL mode, ``synchronous=FULL`` so that a commit survives a crash) is the
default; PostgreSQL is used by URL (``postgresql+psycopg://...``). Every write is idempotent
— predictions are inserted once by id, feedback is upserted by prediction id — so that the
journal can replay records after a crash or an outage without duplicating any.

All methods block: callers run them in a thread, never on the event loop.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError
from sqlalchemy import (
    Engine,
    and_,
    case,
    create_engine,
    delete,
    event,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError

from ..errors import StartupError
from .schema import feedback, predictions, routing_changes

log = logging.getLogger("modelhost.feedback")

MIGRATIONS = Path(__file__).parent / "migrations"


class BadDatabaseUrl(StartupError, ValueError):
    """--db names something modelhost cannot store into."""


class SchemaError(StartupError):
    """The database's schema is not one this modelhost can bring up to date (a revision
    written by a newer modelhost, say): serving would write records it cannot read back."""


class StoreUnavailable(Exception):
    """The database cannot be reached or cannot take writes (down, full, locked)."""


class Store:
    """One database holding predictions and feedback."""

    def __init__(self, url: str) -> None:
        self.engine = _engine(url)
        self.url = self.engine.url
        self._insert = postgresql.insert if self.engine.dialect.name == "postgresql" \
            else sqlite.insert

    def describe(self) -> str:
        """The URL without its password, for logs."""
        return self.url.render_as_string(hide_password=True)

    def migrate(self) -> None:
        """Bring the schema to the newest revision (Alembic); safe to run on every start."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        try:
            with _available(), self.engine.begin() as conn:
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
        except CommandError as exc:
            from .. import __version__

            raise SchemaError(f"prediction log {self.describe()}: {exc} (modelhost "
                              f"{__version__} does not know it; was the database written by a "
                              "newer modelhost? Upgrade modelhost or give another --db)") from None

    def write(self, records: Iterable[dict]) -> None:
        """Store journal records (predictions and feedback, in order) in one transaction."""
        with _available(), self.engine.begin() as conn:
            # Runs of one kind go in one executemany: a statement per record cost 10 % of the
            # tiny model's throughput (benchmarks/prediction_log.py). Order between runs is
            # kept, so feedback never precedes its prediction.
            for kind, run in itertools.groupby(records, key=lambda r: r["kind"]):
                if kind == "prediction":
                    conn.execute(self._prediction_insert(), [_prediction_row(r) for r in run])
                else:
                    conn.execute(self._feedback_upsert(), _last_per_prediction(run))

    def record_routing(self, change: dict) -> None:
        """Store one run-time routing change (``routing_changes`` columns)."""
        with _available(), self.engine.begin() as conn:
            conn.execute(routing_changes.insert(), [change])

    def routing_history(self, model: str, limit: int = 100) -> list[dict]:
        """The model's routing changes, newest first."""
        query = (select(routing_changes).where(routing_changes.c.model == model)
                 .order_by(routing_changes.c.id.desc()).limit(limit))
        with _available(), self.engine.connect() as conn:
            rows = [row._asdict() for row in conn.execute(query)]
        for row in rows:
            row["created_at"] = _aware(row["created_at"])
        return rows

    def prediction(self, prediction_id: str) -> dict | None:
        """The stored answered prediction's model, version and labels, or None (a shadow
        prediction was never returned, so no feedback can be about it)."""
        query = select(predictions.c.model, predictions.c.version, predictions.c.labels,
                       predictions.c.top1).where(predictions.c.id == prediction_id,
                                                 predictions.c.shadow_of.is_(None))
        with _available(), self.engine.connect() as conn:
            row = conn.execute(query).first()
        return row._asdict() if row else None

    def feedback_of(self, prediction_id: str) -> dict | None:
        query = select(feedback).where(feedback.c.prediction_id == prediction_id)
        with _available(), self.engine.connect() as conn:
            row = conn.execute(query).first()
        return row._asdict() if row else None

    def count_predictions(self, model: str, since: datetime | None, until: datetime | None,
                          version: str | None, include_bench: bool = False) -> int:
        """Predictions in the window; load-test traffic only when ``include_bench``."""
        query = _window(select(func.count()).select_from(predictions), model, since, until,
                        version)
        if not include_bench:
            query = query.where(predictions.c.bench.is_(False))
        with _available(), self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def judged(self, model: str, since: datetime | None, until: datetime | None,
               version: str | None, include_bench: bool = False) -> list[dict]:
        """Predictions that got feedback, with what the user chose."""
        query = _window(
            select(predictions.c.id, predictions.c.created_at, predictions.c.version,
                   predictions.c.labels, predictions.c.top1, predictions.c.scores,
                   feedback.c.label, feedback.c.correct)
            .join(feedback, feedback.c.prediction_id == predictions.c.id),
            model, since, until, version,
        ).order_by(predictions.c.created_at)
        if not include_bench:
            query = query.where(predictions.c.bench.is_(False))
        with _available(), self.engine.connect() as conn:
            rows = [row._asdict() for row in conn.execute(query)]
        for row in rows:
            row["created_at"] = _aware(row["created_at"])
        return rows

    def shadow_pairs(self, model: str, a: str, b: str, since: datetime | None,
                     until: datetime | None) -> list[tuple[str, str, str]]:
        """(answering version, its top-1, the shadow's top-1) for every input that versions
        ``a`` and ``b`` both ran on, one answering and the other shadowing."""
        shadow = predictions.alias("shadow")
        query = _window(
            select(predictions.c.version, predictions.c.top1, shadow.c.top1)
            .join(shadow, shadow.c.shadow_of == predictions.c.id)
            .where(predictions.c.bench.is_(False),
                   or_(and_(predictions.c.version == a, shadow.c.version == b),
                       and_(predictions.c.version == b, shadow.c.version == a))),
            model, since, until, None)
        with _available(), self.engine.connect() as conn:
            return [(v, answered, shadowed) for v, answered, shadowed in conn.execute(query)]

    def time_span(self, model: str, since: datetime | None, until: datetime | None,
                  version: str | None) -> tuple[datetime, datetime] | None:
        """The first and last prediction time in the window, or None when it is empty."""
        query = _window(select(func.min(predictions.c.created_at),
                               func.max(predictions.c.created_at)), model, since, until, version)
        with _available(), self.engine.connect() as conn:
            first, last = conn.execute(query).one()
        return None if first is None else (_aware(first), _aware(last))

    def latency_ranks(self, model: str, since: datetime | None, until: datetime | None,
                      version: str | None, edges: list[datetime],
                      quantiles: tuple[float, ...]) -> list[tuple[int, int, int, float]]:
        """Per time bucket (``edges`` are the buckets' starts after the first), only the rows
        around each quantile's position: (bucket, rows in it, rank from 0, total ms).

        Ranked in the database (window functions, in SQLite and PostgreSQL alike), so a long
        window never loads its rows into Python; at most 3 rows per quantile and bucket come
        back, enough to interpolate as numpy's percentile does."""
        at = predictions.c.created_at
        bucket = sum((case((at >= edge, 1), else_=0) for edge in edges), literal(0))
        ranked = _window(select(
            bucket.label("bucket"), predictions.c.total_ms.label("ms"),
            (func.row_number().over(partition_by=bucket, order_by=predictions.c.total_ms) - 1)
            .label("rank"),
            func.count().over(partition_by=bucket).label("n"),
        ), model, since, until, version).subquery()
        near = or_(*(func.abs(ranked.c.rank - q * (ranked.c.n - 1)) < 1 for q in quantiles))
        query = select(ranked.c.bucket, ranked.c.n, ranked.c.rank, ranked.c.ms).where(near)
        with _available(), self.engine.connect() as conn:
            return [(int(b), int(n), int(r), float(ms)) for b, n, r, ms in conn.execute(query)]

    def delete_before(self, cutoff: datetime) -> int:
        """Retention: drop predictions (and their feedback) older than ``cutoff``."""
        old = select(predictions.c.id).where(predictions.c.created_at < cutoff)
        with _available(), self.engine.begin() as conn:
            conn.execute(delete(feedback).where(feedback.c.prediction_id.in_(old)))
            return conn.execute(delete(predictions).where(predictions.c.created_at < cutoff)) \
                .rowcount

    def close(self) -> None:
        self.engine.dispose()

    def _prediction_insert(self):
        return self._insert(predictions).on_conflict_do_nothing(index_elements=["id"])

    def _feedback_upsert(self):
        stmt = self._insert(feedback)
        return stmt.on_conflict_do_update(
            index_elements=["prediction_id"],
            set_={"label": stmt.excluded.label, "correct": stmt.excluded.correct,
                  "updated_at": stmt.excluded.updated_at, "client": stmt.excluded.client},
        )


def _engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except Exception as exc:  # SQLAlchemy's ArgumentError says what is wrong with the text
        raise BadDatabaseUrl(f"--db: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4,
                             pool_timeout=5, connect_args={"connect_timeout": 3})
    raise BadDatabaseUrl(f"--db must be a sqlite:/// or postgresql+psycopg:// URL, not {url!r}")


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # a commit is on disk before the answer
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class _available:
    """Turn 'the database is down/full/locked' into StoreUnavailable; other errors propagate."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, _tb):
        if isinstance(exc, OperationalError | InterfaceError):
            raise StoreUnavailable(str(exc.orig or exc).splitlines()[0]) from exc
        return False


def _window(query, model: str, since, until, version):
    """Answered predictions of ``model`` in the window (shadow predictions never count)."""
    query = query.where(predictions.c.model == model, predictions.c.shadow_of.is_(None))
    if since is not None:
        query = query.where(predictions.c.created_at >= since)
    if until is not None:
        query = query.where(predictions.c.created_at < until)
    if version is not None:
        query = query.where(predictions.c.version == version)
    return query


def _time(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _prediction_row(r: dict) -> dict:
    return {
        "id": r["id"], "created_at": _time(r["time"]), "model": r["model"],
        "version": r["version"], "input_sha256": r["sha256"], "x": r.get("x"), "y": r.get("y"),
        "crop": r.get("crop"), "labels": r["labels"], "scores": r["scores"],
        "top1": r["labels"][0] if r["labels"] else None, "decode_ms": r["decode_ms"],
        "queue_ms": r["queue_ms"], "inference_ms": r["inference_ms"], "total_ms": r["total_ms"],
        "batch_size": r["batch_size"], "client": r.get("client"),
        "request_id": r.get("request_id"), "bench": bool(r.get("bench", False)),
        "shadow_of": r.get("shadow_of"),
    }


def _last_per_prediction(run) -> list[dict]:
    """Feedback rows of one run, the newest per prediction (one upsert may not touch a row
    twice in PostgreSQL)."""
    latest = {r["prediction_id"]: r for r in run}
    return [_feedback_row(r) for r in latest.values()]


def _feedback_row(r: dict) -> dict:
    return {
        "prediction_id": r["prediction_id"], "label": r.get("label"), "correct": r["correct"],
        "created_at": _time(r["time"]), "updated_at": _time(r["time"]),
        "client": r.get("client"),
    }
